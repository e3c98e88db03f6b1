"""The unit of each brain measure, read from its FreeSurfer name, and how to print values.

FreeSurfer writes volumes in mm³ (aseg.stats `Volume_mm3`, the `# Measure` lines' `mm^3`),
cortical thickness in mm (`ThickAvg`) and surface area in mm² (`SurfArea`); the column names
that asegstats2table and aparcstats2table write say which measure a column holds
(`lh_precentral_thickness`, `lh_precentral_area`, `lh_precentral_volume`, `Left-Hippocampus`,
`eTIV`). A chart axis without its unit invites misreading (a thickness of 2.5 read as a
volume), and plotly's default "1.6M" hides the digits a clinician compares, so every figure
asks this one module for the unit and the number format of an IDP.
"""

from __future__ import annotations

import re

from normcore.idp_groups import GLOBAL, SUBCORTICAL, VENTRICLES, region_group

__all__ = ["MM", "MM2", "MM3", "unit", "axis_title", "tick_format", "format_value"]

MM = "mm"
MM2 = "mm²"
MM3 = "mm³"

_THICKNESS = re.compile(r"thick", re.IGNORECASE)
# aparcstats2table's `<hemi>_<region>_area` (an aseg name such as `Left-Accumbens-area` is a
# structure, a volume) and the whole-hemisphere `WhiteSurfArea`.
_AREA = re.compile(r"_area$|surfarea", re.IGNORECASE)
_VOLUME = re.compile(r"_volume$|vol", re.IGNORECASE)
# Measures whose names hold none of the above and that are not sizes (curvatures, folding
# and curvature indices, their standard deviations in thickness units aside).
_UNITLESS = re.compile(r"curv|foldind|curvind|euler|holes", re.IGNORECASE)


def unit(idp: str) -> str | None:
    """'mm³', 'mm' or 'mm²' for an IDP named as FreeSurfer's tables name it, else None.

    Thickness (including `ThickStd`) is mm, area mm², a volume mm³; an aseg structure,
    a ventricle or a global volume (eTIV, TotalGrayVol, BrainSegVolNotVent) is a volume.
    A name this cannot read gets no unit rather than a wrong one.
    """
    name = str(idp)
    if _UNITLESS.search(name):
        return None
    if _THICKNESS.search(name):
        return MM
    if region_group(name) in (SUBCORTICAL, VENTRICLES):
        return MM3
    if _AREA.search(name):
        return MM2
    if _VOLUME.search(name) or region_group(name) == GLOBAL:
        return MM3
    return None


def axis_title(idp: str, label: str) -> str:
    """An axis title: the IDP's label with its unit, 'Left Hippocampus (mm³)'."""
    found = unit(idp)
    return f"{label} ({found})" if found else label


def tick_format(idp: str) -> str:
    """A d3 format for the IDP's axis: volumes and areas as whole numbers with thousands
    separators (1,612,000 rather than 1.6M), thickness to two decimals."""
    found = unit(idp)
    if found in (MM3, MM2):
        return ",.0f"
    if found == MM:
        return ".2f"
    return ""


def format_value(idp: str, value: float) -> str:
    """A value as a report prints it, with its unit: '1,612,345 mm³', '2.48 mm'."""
    found = unit(idp)
    if found in (MM3, MM2):
        return f"{value:,.0f} {found}"
    if found == MM:
        return f"{value:.2f} {found}"
    return f"{value:.4g}"
