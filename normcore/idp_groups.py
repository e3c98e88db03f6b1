"""Which kind of brain measure an IDP is, and a short label for it.

A clinician reads a deviation profile region by region ("the subcortical volumes are
fine, the left cortical thickness is low"), so charts group IDPs by region type instead
of listing 200 names in file order. The rules below read FreeSurfer's column names
(aseg volumes, aparc/aparc.a2009s thickness, global volumes); anything they do not
recognise goes to "Other", never to a wrong group.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

__all__ = [
    "GROUP_ORDER",
    "SHORT_NAMES",
    "region_group",
    "group_idps",
    "label",
    "default_idps",
]

SUBCORTICAL = "Subcortical volumes"
GLOBAL = "Global volumes"
VENTRICLES = "Ventricles / CSF"
THICK_LH = "Cortical thickness (left)"
THICK_RH = "Cortical thickness (right)"
OTHER = "Other"

#: The order in which groups are shown, from the measures clinicians read first.
GROUP_ORDER: tuple[str, ...] = (GLOBAL, SUBCORTICAL, VENTRICLES, THICK_LH, THICK_RH, OTHER)

#: Panel titles short enough to sit above a narrow group of bars.
SHORT_NAMES: dict[str, str] = {
    GLOBAL: "Global",
    SUBCORTICAL: "Subcortical",
    VENTRICLES: "Ventricles",
    THICK_LH: "Thickness L",
    THICK_RH: "Thickness R",
    OTHER: "Other",
}

_SUBCORTICAL = re.compile(
    r"thalamus|caudate|putamen|pallidum|hippocampus|amygdala|accumbens|ventraldc|"
    r"brain-stem|brainstem|cerebellum|^cc_|optic-chiasm|choroid|vessel",
    re.IGNORECASE,
)
_VENTRICLES = re.compile(r"vent(ricle)?\b|ventricle|inf-lat-vent|^csf$", re.IGNORECASE)
_GLOBAL = re.compile(
    r"etiv|intracranial|brainseg|cortexvol|whitemattervol|graymattervol|grayvol|"
    r"subcortgray|supratentorial|maskvol",
    re.IGNORECASE,
)
_THICKNESS = re.compile(r"thick", re.IGNORECASE)
_LEFT = re.compile(r"^(lh[_.-]?|left[_.-])", re.IGNORECASE)
_RIGHT = re.compile(r"^(rh[_.-]?|right[_.-])", re.IGNORECASE)

#: IDPs a clinician recognises at once, in the order the fan page offers them first.
_FAVOURITES = (
    "Left-Hippocampus",
    "Right-Hippocampus",
    "lh_MeanThickness_thickness",
    "rh_MeanThickness_thickness",
    "eTIV",
    "TotalGrayVol",
    "CerebralWhiteMatterVol",
    "Left-Lateral-Ventricle",
    "Left-Thalamus-Proper",
    "Left-Amygdala",
)


def region_group(name: str) -> str:
    """The region type of one IDP column name (one of GROUP_ORDER)."""
    if _THICKNESS.search(name):
        if _LEFT.search(name):
            return THICK_LH
        if _RIGHT.search(name):
            return THICK_RH
        return OTHER
    # Ventricles before global volumes: 'BrainSegVolNotVent' must stay global, so the
    # ventricle rule only matches names that *are* a ventricle, not "not-vent" totals.
    if _VENTRICLES.search(name) and "notvent" not in name.lower():
        return VENTRICLES
    if _GLOBAL.search(name):
        return GLOBAL
    if _SUBCORTICAL.search(name):
        return SUBCORTICAL
    return OTHER


def group_idps(names: Iterable[str]) -> dict[str, list[str]]:
    """IDPs per non-empty group, groups in GROUP_ORDER, IDPs in their given order."""
    groups: dict[str, list[str]] = {g: [] for g in GROUP_ORDER}
    for name in names:
        groups[region_group(name)].append(name)
    return {g: v for g, v in groups.items() if v}


def label(name: str) -> str:
    """A shorter, readable label: 'lh_G_front_sup_thickness' -> 'lh G front sup'."""
    text = re.sub(r"_thickness$", "", name)
    text = text.replace("_", " ").strip()
    return text or name


def default_idps(names: Sequence[str], k: int = 4) -> list[str]:
    """The first `k` IDPs to show: recognisable ones if the model has them, else the first."""
    present = [n for n in _FAVOURITES if n in names]
    rest = [n for n in names if n not in present]
    return (present + rest)[: max(k, 0)]
