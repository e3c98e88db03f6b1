"""FreeSurfer outputs as clinics have them, read into one wide table and matched to a model.

A clinic rarely holds a tidy CSV: it holds a SUBJECTS_DIR (one folder per person with
`stats/aseg.stats`, `stats/lh.aparc.stats`, ...), often zipped, or the tables FreeSurfer's
`asegstats2table` and `aparcstats2table` write from them. This module turns any of those into
one row per subject, with columns named as those two tools name them (the names normcore's
models are trained on: `Left-Hippocampus`, `eTIV`, `lh_precentral_thickness`,
`lh_G&S_frontomargin_thickness`), and then says honestly how those columns relate to a
model's IDPs:

- the same region under another FreeSurfer version's name is the same IDP
  (`Left-Thalamus-Proper` of FreeSurfer <= 6 is `Left-Thalamus` of FreeSurfer 7: both are
  segmentation id 10 of the colour table; `EstimatedTotalIntraCranialVol` is what
  asegstats2table calls the `eTIV` measure);
- a region of another atlas is never the same IDP, however alike the names: Destrieux's
  `G_precentral` (aparc.a2009s, Destrieux et al. 2010) is the precentral gyrus crown, the
  Desikan-Killiany `precentral` (aparc, Desikan et al. 2006) a larger gyral region;
- quality-control columns (Euler number, surface holes) are never brain measures.

File formats, as FreeSurfer writes them (and as its own readers parse them):
- `aseg.stats` (mri_segstats): `# Measure <name>, <short name>, <description>, <value>,
  <unit>` lines for global measures, a `# ColHeaders Index SegId NVoxels Volume_mm3
  StructName ...` line, then one whitespace-separated row per structure
  (https://surfer.nmr.mgh.harvard.edu/fswiki/MorphometryStats; FreeSurfer's
  matlab/load_segstats.m).
- `?h.<parc>.stats` (mris_anatomical_stats): `# Measure Cortex, MeanThickness, ...` lines,
  `# ColHeaders StructName NumVert SurfArea GrayVol ThickAvg ThickStd MeanCurv GausCurv
  FoldInd CurvInd`, one row per region. FreeSurfer 6.0 to 7.1 write one global line without
  its second comma (`# Measure Cortex, CortexVol Total cortical gray matter volume, <value>,
  mm^3`); FreeSurfer 7.2+ writes no whole-brain lines there (`-noglobal`).
- asegstats2table / aparcstats2table (FreeSurfer's python/fsutils.py, TableWriter and the
  Aseg/AparcStatsParser classes; https://surfer.nmr.mgh.harvard.edu/fswiki/asegstats2table,
  .../aparcstats2table): first cell `Measure:volume` or `lh.aparc.a2009s.thickness`, one row
  per subject, tab (default), space, comma or semicolon separated; aparc columns are
  `<hemi>_<region>_<measure>` except `eTIV` and `BrainSegVolNotVent`, and a region missing
  for a subject is written as 0.0.

Everything is read in memory: uploads may hold clinical data, so nothing is written to disk,
and a zip is bounded (entry count, declared and actual uncompressed sizes) before anything is
decompressed. Every problem is a `DataError` naming the file, line and column.
"""

from __future__ import annotations

import io
import math
import os
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from normcore.data import MAX_BYTES, MAX_COLUMNS, MAX_ROWS
from normcore.errors import DataError

__all__ = [
    "ASEG",
    "DESIKAN_KILLIANY",
    "DESTRIEUX",
    "DKT",
    "GLOBAL",
    "QC",
    "SUBJECT_COLUMN",
    "Column",
    "Matching",
    "QCFilter",
    "apply_matching",
    "atlas_counts",
    "classify_column",
    "filter_by_qc",
    "is_freesurfer",
    "is_qc_column",
    "match_columns",
    "qc_columns",
    "read_freesurfer",
]

#: Name of the subject-id column of every table read here (the first id name Schema looks for).
SUBJECT_COLUMN = "sub_id"

ASEG = "aseg"
GLOBAL = "global"
DESIKAN_KILLIANY = "Desikan-Killiany"
DKT = "DKT"
DESTRIEUX = "Destrieux"
QC = "QC"

#: Most files a zip or folder may hold (a SUBJECTS_DIR has about 20 stats files per person).
MAX_ARCHIVE_ENTRIES = 50_000
#: Cortical measures read from ?h.<parc>.stats by default: those normative models use.
DEFAULT_MEASURES: tuple[str, ...] = ("thickness", "area", "volume")

# aparcstats2table's --meas names and the stats-file column each reads (fsutils.py).
_MEASURE_COLUMN = {
    "area": "SurfArea",
    "volume": "GrayVol",
    "thickness": "ThickAvg",
    "thicknessstd": "ThickStd",
    "meancurv": "MeanCurv",
    "gauscurv": "GausCurv",
    "foldind": "FoldInd",
    "curvind": "CurvInd",
}
# Whole-cortex lines of ?h.<parc>.stats and the aparcstats2table measure they go with.
_CORTEX_SUMMARY = {"MeanThickness": "thickness", "WhiteSurfArea": "area"}
# Parcellations read from a subject's stats folder, and their atlas.
_PARCELLATION_ATLAS = {
    "aparc": DESIKAN_KILLIANY,
    "aparc.a2009s": DESTRIEUX,
    "aparc.DKTatlas": DKT,
    "aparc.DKTatlas40": DKT,
}

# Desikan-Killiany regions of aparc (Desikan et al. 2006), in FreeSurfer's colour-table order.
_DK_REGIONS = (
    "bankssts caudalanteriorcingulate caudalmiddlefrontal cuneus entorhinal fusiform "
    "inferiorparietal inferiortemporal isthmuscingulate lateraloccipital lateralorbitofrontal "
    "lingual medialorbitofrontal middletemporal parahippocampal paracentral parsopercularis "
    "parsorbitalis parstriangularis pericalcarine postcentral posteriorcingulate precentral "
    "precuneus rostralanteriorcingulate rostralmiddlefrontal superiorfrontal superiorparietal "
    "superiortemporal supramarginal frontalpole temporalpole transversetemporal insula"
).split()
# The DKT protocol (Klein & Tourville 2012) drops these three; its other 31 names are DK's.
_DK_ONLY = frozenset({"bankssts", "frontalpole", "temporalpole"})
# Destrieux regions of aparc.a2009s (Destrieux et al. 2010), as ?h.aparc.a2009s.stats names them.
_DESTRIEUX_REGIONS = (
    "G&S_frontomargin G&S_occipital_inf G&S_paracentral G&S_subcentral G&S_transv_frontopol "
    "G&S_cingul-Ant G&S_cingul-Mid-Ant G&S_cingul-Mid-Post G_cingul-Post-dorsal "
    "G_cingul-Post-ventral G_cuneus G_front_inf-Opercular G_front_inf-Orbital "
    "G_front_inf-Triangul G_front_middle G_front_sup G_Ins_lg&S_cent_ins G_insular_short "
    "G_occipital_middle G_occipital_sup G_oc-temp_lat-fusifor G_oc-temp_med-Lingual "
    "G_oc-temp_med-Parahip G_orbital G_pariet_inf-Angular G_pariet_inf-Supramar "
    "G_parietal_sup G_postcentral G_precentral G_precuneus G_rectus G_subcallosal "
    "G_temp_sup-G_T_transv G_temp_sup-Lateral G_temp_sup-Plan_polar G_temp_sup-Plan_tempo "
    "G_temporal_inf G_temporal_middle Lat_Fis-ant-Horizont Lat_Fis-ant-Vertical Lat_Fis-post "
    "Pole_occipital Pole_temporal S_calcarine S_central S_cingul-Marginalis "
    "S_circular_insula_ant S_circular_insula_inf S_circular_insula_sup S_collat_transv_ant "
    "S_collat_transv_post S_front_inf S_front_middle S_front_sup S_interm_prim-Jensen "
    "S_intrapariet&P_trans S_oc_middle&Lunatus S_oc_sup&transversal S_occipital_ant "
    "S_oc-temp_lat S_oc-temp_med&Lingual S_orbital_lateral S_orbital_med-olfact "
    "S_orbital-H_Shaped S_parieto_occipital S_pericallosal S_postcentral "
    "S_precentral-inf-part S_precentral-sup-part S_suborbital S_subparietal S_temporal_inf "
    "S_temporal_sup S_temporal_transverse"
).split()
# aseg structures of FreeSurfer's ASegStatsLUT.txt, FreeSurfer 5 to 7 names.
_ASEG_STRUCTURES = [
    f"{side}-{name}"
    for side in ("Left", "Right")
    for name in (
        "Lateral-Ventricle", "Inf-Lat-Vent", "Cerebellum-White-Matter", "Cerebellum-Cortex",
        "Thalamus-Proper", "Thalamus", "Caudate", "Putamen", "Pallidum", "Hippocampus",
        "Amygdala", "Accumbens-area", "VentralDC", "vessel", "choroid-plexus",
        "WM-hypointensities", "non-WM-hypointensities",
    )
] + [
    "3rd-Ventricle", "4th-Ventricle", "5th-Ventricle", "Brain-Stem", "CSF",
    "WM-hypointensities", "non-WM-hypointensities", "Optic-Chiasm", "CC_Posterior",
    "CC_Mid_Posterior", "CC_Central", "CC_Mid_Anterior", "CC_Anterior",
]
# Whole-brain measures: the short names of aseg.stats '# Measure' lines (what asegstats2table
# names its columns after), plus asegstats2table's own name for eTIV.
_GLOBAL_MEASURES = (
    "BrainSegVol BrainSegVolNotVent BrainSegVolNotVentSurf VentricleChoroidVol lhCortexVol "
    "rhCortexVol CortexVol lhCerebralWhiteMatterVol rhCerebralWhiteMatterVol "
    "CerebralWhiteMatterVol lhCorticalWhiteMatterVol rhCorticalWhiteMatterVol "
    "CorticalWhiteMatterVol SubCortGrayVol TotalGrayVol SupraTentorialVol "
    "SupraTentorialVolNotVent SupraTentorialVolNotVentVox MaskVol BrainSegVol-to-eTIV "
    "MaskVol-to-eTIV eTIV EstimatedTotalIntraCranialVol IntraCranialVol"
).split()
# One FreeSurfer name per region or measure where versions or tools spell it differently.
_SAME_AS = {
    "left_thalamus_proper": "left_thalamus",
    "right_thalamus_proper": "right_thalamus",
    "estimatedtotalintracranialvol": "etiv",
}

_CORTICAL = re.compile(
    r"^(lh|rh)[_.\-](.+)[_.\-](" + "|".join(sorted(_MEASURE_COLUMN, key=len, reverse=True))
    + r")$",
    re.IGNORECASE,
)
_QC_EULER = re.compile(r"euler|^avg_en$|^mean_en$", re.IGNORECASE)
_QC_HOLES = re.compile(r"surface_?holes", re.IGNORECASE)
_ASEG_TABLE = re.compile(r"^Measure:(\w+)$")
_APARC_TABLE = re.compile(
    r"^(lh|rh)\.(.+)\.(" + "|".join(_MEASURE_COLUMN) + r")$"
)
_STATS_NAME = re.compile(r"^(aseg|(lh|rh)\.(.+))\.stats$")
_TABLE_SUFFIXES = frozenset({"", ".txt", ".tsv", ".csv", ".dat", ".table"})
_ZIP_MAGIC = b"PK\x03\x04"
_CORTICAL_ATLASES = (DESIKAN_KILLIANY, DESTRIEUX)
_RELATIVE_TOLERANCE = 1e-4


def _key(name: str) -> str:
    """A spelling-free key: case, separators and '&'/'and' ignored.

    Tables pass through tools that respell names (R's check.names turns
    `lh_G&S_frontomargin_thickness` into `lh_G.S_frontomargin_thickness`, other exports write
    `G_and_S_frontomargin`); the key makes those one name without ever joining two regions
    (the uniqueness of every atlas's keys is tested).
    """
    text = name.strip().lower().replace("&", "_and_")
    return "_".join(t for t in re.split(r"[^a-z0-9]+", text) if t and t != "and")


_DK_KEYS = {_key(r): r for r in _DK_REGIONS}
_DESTRIEUX_KEYS = {_key(r): r for r in _DESTRIEUX_REGIONS}
_ASEG_KEYS = {_key(s) for s in _ASEG_STRUCTURES}
_GLOBAL_KEYS = {_key(m) for m in _GLOBAL_MEASURES}
_CORTEX_SUMMARY_KEYS = {_key(m): m for m in _CORTEX_SUMMARY}


# ----------------------------------------------------------------------- column naming


@dataclass(frozen=True)
class Column:
    """What one column name means in FreeSurfer's terms.

    `atlas` is ASEG, GLOBAL, DESIKAN_KILLIANY (which covers DKT: the two share region names,
    see `atlas_counts`), DESTRIEUX or QC; `identity` is equal for two names of the same
    measure of the same region, whatever the FreeSurfer version or spelling.
    """

    atlas: str
    identity: tuple[str, ...]
    measure: str | None = None


def classify_column(name: str) -> Column | None:
    """The FreeSurfer meaning of a column name, or None for anything else (age, site, ...)."""
    if is_qc_column(name):
        return Column(QC, (QC, _key(name)))
    key = _key(name)
    if key in _ASEG_KEYS:
        return Column(ASEG, (ASEG, _SAME_AS.get(key, key)), "volume")
    if key in _GLOBAL_KEYS:
        return Column(GLOBAL, (GLOBAL, _SAME_AS.get(key, key)))
    match = _CORTICAL.match(name.strip())
    if match is None:
        return None
    hemi, region, measure = match.group(1).lower(), _key(match.group(2)), match.group(3).lower()
    if region in _CORTEX_SUMMARY_KEYS:
        return Column(GLOBAL, (GLOBAL, hemi, region, measure), measure)
    if region in _DK_KEYS:
        return Column(DESIKAN_KILLIANY, (DESIKAN_KILLIANY, hemi, region, measure), measure)
    if region in _DESTRIEUX_KEYS:
        return Column(DESTRIEUX, (DESTRIEUX, hemi, region, measure), measure)
    return None


def is_qc_column(name: str) -> bool:
    """True for FreeSurfer quality-control columns: Euler numbers and surface-hole counts.

    They describe the reconstruction, not the brain (Rosen et al. 2018, NeuroImage 169:407,
    use the Euler number to exclude scans), so they are never offered as IDPs.
    """
    return bool(_QC_EULER.search(name) or _QC_HOLES.search(name))


def qc_columns(columns: Iterable[str]) -> list[str]:
    """The quality-control columns among `columns`, in their order."""
    return [str(c) for c in columns if is_qc_column(str(c))]


def atlas_counts(
    columns: Iterable[str], atlases: Mapping[str, str] | None = None
) -> dict[str, dict[str, int]]:
    """How many columns of each atlas, by measure: {'Destrieux': {'thickness': 148}, ...}.

    Desikan-Killiany and DKT share their region names, so a column is DKT only when
    `atlases` (the `attrs["freesurfer_atlases"]` of a table read here, which knows the
    parcellation each column came from) says so. Global measures count under 'global',
    aseg volumes under 'aseg', QC columns under 'QC'; other columns are not counted.
    """
    atlases = atlases or {}
    counts: dict[str, dict[str, int]] = {}
    for name in columns:
        column = classify_column(str(name))
        if column is None:
            continue
        atlas = atlases.get(str(name), column.atlas) if column.atlas == DESIKAN_KILLIANY else (
            column.atlas
        )
        by_measure = counts.setdefault(atlas, {})
        measure = column.measure or "volume"
        by_measure[measure] = by_measure.get(measure, 0) + 1
    return counts


# ----------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class Matching:
    """How a table's columns provide a model's IDPs.

    `sources[idp]` lists the table columns holding that IDP, preferred first: the column of
    the same name, then the same region under another FreeSurfer version's name (a table
    merged across versions can hold both, each filled for some subjects and 0 for the
    others); `renames` maps each such other-named column to its IDP. `other_atlas` lists the
    model IDPs of a cortical atlas the table does not have. `message` says all of it in one
    paragraph for a person.
    """

    sources: dict[str, tuple[str, ...]]
    renames: dict[str, str]
    missing: tuple[str, ...]
    other_atlas: tuple[str, ...]
    table_atlases: dict[str, dict[str, int]]
    model_atlases: dict[str, dict[str, int]]
    qc_columns: tuple[str, ...]
    message: str

    @property
    def found(self) -> tuple[str, ...]:
        """The model IDPs the table provides, in the model's order."""
        return tuple(self.sources)


def match_columns(
    table: pd.DataFrame | Sequence[str],
    model_idps: Sequence[str],
    table_atlases: Mapping[str, str] | None = None,
) -> Matching:
    """Match a table's columns to a model's IDPs, by region, never by resemblance.

    A column provides an IDP when it has the IDP's name, or names the same region and
    measure under another FreeSurfer version's or tool's spelling (`Left-Thalamus` for
    `Left-Thalamus-Proper`, `EstimatedTotalIntraCranialVol` for `eTIV`,
    `lh.G_and_S_frontomargin.thickness` for `lh_G&S_frontomargin_thickness`). A region of
    another atlas never does. QC columns never provide an IDP. With a DataFrame, its
    `attrs["freesurfer_atlases"]` (set by `read_freesurfer`) tells DKT from Desikan-Killiany
    columns; `table_atlases` overrides it.
    """
    if isinstance(table, pd.DataFrame):
        columns = [str(c) for c in table.columns]
        known = dict(table.attrs.get("freesurfer_atlases", {}))
    else:
        columns = [str(c) for c in table]
        known = {}
    known.update(table_atlases or {})
    idps = [str(i) for i in model_idps]
    table_flavour = _dk_flavour(columns, known)
    model_flavour = _dk_flavour(idps, {})
    dk_compatible = table_flavour is None or model_flavour is None or (
        table_flavour == model_flavour
    )

    by_identity: dict[tuple[str, ...], list[str]] = {}
    for name in columns:
        column = classify_column(name)
        if column is not None and column.atlas != QC:
            by_identity.setdefault(column.identity, []).append(name)

    sources: dict[str, tuple[str, ...]] = {}
    renames: dict[str, str] = {}
    missing: list[str] = []
    for idp in idps:
        column = classify_column(idp)
        same = [idp] if idp in columns else []
        variants: list[str] = []
        if column is not None and column.atlas != QC and (
            column.atlas != DESIKAN_KILLIANY or dk_compatible
        ):
            variants = [c for c in by_identity.get(column.identity, []) if c != idp]
        if column is not None and column.atlas == DESIKAN_KILLIANY and not dk_compatible:
            same = []
        if same or variants:
            sources[idp] = tuple(same + variants)
            for name in variants:
                renames.setdefault(name, idp)
        else:
            missing.append(idp)

    table_counts = atlas_counts(columns, known)
    model_counts = atlas_counts(idps)
    cortical_table = {a for a in table_counts if a in (DESIKAN_KILLIANY, DKT, DESTRIEUX)}
    other_atlas = tuple(
        idp for idp in missing
        if (c := classify_column(idp)) is not None
        and c.atlas in (DESIKAN_KILLIANY, DESTRIEUX)
        and _atlas_label(c.atlas, model_flavour) not in cortical_table
    )
    matching_qc = tuple(qc_columns(columns))
    message = _describe_matching(
        idps, sources, renames, missing, other_atlas, table_counts, model_counts, model_flavour,
        matching_qc,
    )
    return Matching(
        sources=sources,
        renames=renames,
        missing=tuple(missing),
        other_atlas=other_atlas,
        table_atlases=table_counts,
        model_atlases=model_counts,
        qc_columns=matching_qc,
        message=message,
    )


def apply_matching(df: pd.DataFrame, matching: Matching) -> pd.DataFrame:
    """`df` with one column per found IDP under the model's name; other columns unchanged.

    Where several columns hold an IDP, each row takes the first that has a value other than
    0 (the placeholder asegstats2table and aparcstats2table write for a region a subject's
    FreeSurfer version did not have); a row where two of them disagree is refused, and a row
    where all are 0 keeps 0, for scoring to flag.
    """
    out = df.copy()
    for idp, names in matching.sources.items():
        values = [pd.to_numeric(df[n], errors="coerce").to_numpy(dtype=float) for n in names]
        if len(values) == 1:
            out[idp] = values[0]
            continue
        stacked = np.vstack(values)
        present = np.isfinite(stacked) & (stacked != 0.0)
        for row in np.flatnonzero(present.sum(axis=0) > 1):
            filled = stacked[present[:, row], row]
            if not np.allclose(filled, filled[0], rtol=_RELATIVE_TOLERANCE, atol=0.0):
                pairs = ", ".join(
                    f"'{n}' = {stacked[i, row]:g}" for i, n in enumerate(names)
                    if present[i, row]
                )
                raise DataError(
                    f"Row {row} (spreadsheet line {row + 2}) gives two different values for "
                    f"'{idp}': {pairs}. Keep one of these columns."
                )
        first = np.where(present.any(axis=0), present.argmax(axis=0), 0)
        out[idp] = stacked[first, np.arange(stacked.shape[1])]
    return out.drop(columns=[n for n in matching.renames if n not in matching.sources])


def _dk_flavour(columns: Sequence[str], atlases: Mapping[str, str]) -> str | None:
    """DESIKAN_KILLIANY or DKT when the columns say which, None when they cannot."""
    flavours = set()
    for name in columns:
        column = classify_column(name)
        if column is None or column.atlas != DESIKAN_KILLIANY:
            continue
        if name in atlases:
            flavours.add(atlases[name])
        elif column.identity[2] in _DK_ONLY:
            flavours.add(DESIKAN_KILLIANY)
    if len(flavours) > 1:
        raise DataError(
            "The table holds both Desikan-Killiany (aparc) and DKT (aparc.DKTatlas) columns "
            "under the same names; read one parcellation at a time."
        )
    return flavours.pop() if flavours else None


def _atlas_label(atlas: str, dk_flavour: str | None) -> str:
    return DKT if atlas == DESIKAN_KILLIANY and dk_flavour == DKT else atlas


def _describe_counts(counts: Mapping[str, Mapping[str, int]], atlases: Iterable[str]) -> str:
    parts = []
    for atlas in atlases:
        measures = ", ".join(f"{n} {m} columns" for m, n in counts[atlas].items())
        parts.append(f"{atlas} ({measures})")
    return " and ".join(parts)


def _listed(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    rest = len(names) - limit
    return f"{shown} and {rest} more" if rest > 0 else shown


def _describe_matching(
    idps: Sequence[str],
    sources: Mapping[str, tuple[str, ...]],
    renames: Mapping[str, str],
    missing: Sequence[str],
    other_atlas: Sequence[str],
    table_counts: Mapping[str, Mapping[str, int]],
    model_counts: Mapping[str, Mapping[str, int]],
    model_flavour: str | None,
    qc: Sequence[str],
) -> str:
    cortical = (DESIKAN_KILLIANY, DKT, DESTRIEUX)
    table_cortex = [a for a in cortical if a in table_counts]
    model_cortex = [a for a in cortical if a in model_counts]
    found = list(sources)
    sentences = []
    if other_atlas:
        yours = (
            f"Your table is {_describe_counts(table_counts, table_cortex)}"
            if table_cortex else "Your table has no cortical parcellation columns"
        )
        sentences.append(
            f"{yours}; this model uses {' and '.join(model_cortex)}: {len(found)} of its "
            f"{len(idps)} IDPs are in your table"
            + (f" ({_listed(found)})." if found else ".")
        )
        wanted = sorted({_atlas_label(classify_column(i).atlas, model_flavour)  # type: ignore[union-attr]
                         for i in other_atlas})
        sentences.append(
            f"{' and '.join(wanted)} regions are other regions than "
            f"{' and '.join(table_cortex) or 'any in your table'}, so no column of your table "
            "can stand in for them: export the model's parcellation (aparcstats2table --parc "
            + " / ".join(_PARC_OF[a] for a in wanted)
            + ", or the subjects' ?h." + " / ?h.".join(_PARC_OF[a] for a in wanted)
            + ".stats files)."
        )
        rest = [m for m in missing if m not in other_atlas]
        if rest:
            sentences.append(f"Also missing: {_listed(rest)}.")
    elif missing:
        sentences.append(
            f"{len(found)} of the model's {len(idps)} IDPs are in your table; missing: "
            f"{_listed(list(missing))}."
        )
    else:
        sentences.append(f"All {len(idps)} IDPs of this model are in your table.")
    if renames:
        pairs = [f"{name} is read as {idp}" for name, idp in renames.items()]
        sentences.append(
            f"{len(renames)} under another FreeSurfer version's or tool's name: "
            f"{_listed(pairs, 4)}."
        )
    if qc:
        sentences.append(
            f"Quality-control columns ({_listed(list(qc))}) are not brain measures; they can "
            "filter people instead."
        )
    return " ".join(sentences)


_PARC_OF = {DESIKAN_KILLIANY: "aparc", DKT: "aparc.DKTatlas", DESTRIEUX: "aparc.a2009s"}


# ------------------------------------------------------------------- quality control


@dataclass(frozen=True)
class QCFilter:
    """People kept and dropped by a QC threshold; `message` is the warning to show."""

    kept: pd.DataFrame
    dropped_rows: tuple[int, ...]
    dropped_ids: tuple[str, ...]
    message: str


def filter_by_qc(
    df: pd.DataFrame, column: str, threshold: float, id_column: str | None = None
) -> QCFilter:
    """Drop people whose reconstruction fails a QC threshold, saying who and why.

    Euler numbers are 2 for a perfect surface and fall with each topological defect, so
    rows below `threshold` are dropped; surface-hole counts rise with defects, so rows above
    it are. A row without a QC value cannot pass and is dropped too. Rows are 0-based
    positions in `df`; `kept` has a fresh index.
    """
    if column not in df.columns:
        raise DataError(f"There is no QC column '{column}' in the table.")
    if not is_qc_column(column):
        raise DataError(
            f"'{column}' is not a FreeSurfer QC column (an Euler number or a surface-hole "
            "count); choose one of: " + (", ".join(qc_columns(df.columns)) or "none found")
            + "."
        )
    if not math.isfinite(threshold):
        raise DataError(f"The QC threshold must be a number, not {threshold!r}.")
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float)
    holes = bool(_QC_HOLES.search(column))
    with np.errstate(invalid="ignore"):
        fails = values > threshold if holes else values < threshold
    unknown = ~np.isfinite(values)
    dropped = np.flatnonzero(fails | unknown)
    ids = (
        tuple(str(v) for v in df[id_column].to_numpy()[dropped])
        if id_column is not None and id_column in df.columns
        else tuple(f"row {r}" for r in dropped)
    )
    if dropped.size == 0:
        message = f"Nobody was dropped by {column} {'<=' if holes else '>='} {threshold:g}."
    else:
        rule = f"above {threshold:g}" if holes else f"below {threshold:g}"
        reasons = f"{column} {rule}" + (" or missing" if unknown.any() else "")
        message = (
            f"{dropped.size} of {len(df)} people dropped for {reasons}: {_listed(list(ids), 10)}."
        )
    kept = df.drop(index=df.index[dropped]).reset_index(drop=True)
    return QCFilter(kept, tuple(int(r) for r in dropped), ids, message)


# ----------------------------------------------------------------------------- reading


def is_freesurfer(name: str | None, first_bytes: bytes) -> bool:
    """Whether an upload is for `read_freesurfer`: a .stats file, a zip of them, or an
    asegstats2table/aparcstats2table table, told from its name and first bytes.

    A folder on disk is always for `read_freesurfer`; the caller knows it is a folder.
    """
    suffix = PurePosixPath(name).suffix.lower() if name else ""
    if suffix in (".stats", ".zip"):
        return True
    if first_bytes.startswith(_ZIP_MAGIC):
        return False  # an Excel workbook is a zip too; only a .zip name says otherwise
    text = first_bytes[:4096].decode("utf-8", errors="replace").lstrip("\ufeff")
    if text.startswith(("# Title Segmentation Statistics",
                        "# Table of FreeSurfer cortical parcellation")):
        return True
    first_line = text.splitlines()[0] if text else ""
    first_cell = re.split(r"[\t,; ]", first_line.strip(), maxsplit=1)[0]
    return bool(_ASEG_TABLE.match(first_cell) or _APARC_TABLE.match(first_cell))


def read_freesurfer(
    source: str | os.PathLike[str] | bytes,
    name: str | None = None,
    measures: Sequence[str] = DEFAULT_MEASURES,
) -> pd.DataFrame:
    """One row per subject from FreeSurfer outputs: a SUBJECTS_DIR-like folder, a zip of
    one, one subject's .stats file, or asegstats2table/aparcstats2table tables.

    `source` is a path (a folder, a .zip, a .stats file, a table) or the bytes of an upload
    named `name`. In a folder or zip, `<subject>/stats/aseg.stats` and
    `<subject>/stats/?h.{aparc,aparc.a2009s,aparc.DKTatlas}.stats` are read (the subject is
    the folder holding `stats/`, else the file's `# subjectname`), and so are any
    *stats2table tables; other files are skipped and counted in `attrs["notes"]`. DKT files
    are read only when there are no aparc files: both name their columns
    `lh_precentral_thickness`, though DKT's regions are not aparc's.

    Columns: `sub_id`, then aseg volumes and whole-brain measures as asegstats2table names
    them (`eTIV` for the intracranial volume), then `<hemi>_<region>_<measure>` for the
    cortical `measures` as aparcstats2table names them, with `lh_MeanThickness_thickness`
    and `lh_WhiteSurfArea_area`. A value two sources give differently is refused; a 0.0 a
    *stats2table table wrote for a region it did not have yields to a real value.
    `attrs["freesurfer_atlases"]` maps each cortical region column to its atlas.
    """
    unknown = [m for m in measures if m not in _MEASURE_COLUMN]
    if unknown:
        raise ValueError(f"unknown measures {unknown}; choose from {sorted(_MEASURE_COLUMN)}")
    entries, label, single = _entries(source, name)
    return _assemble(entries, label, tuple(measures), single)


def _entries(source: object, name: str | None) -> tuple[list[tuple[str, bytes]], str, bool]:
    """(path inside the source, content) of every file worth reading, bounded; the label
    of the source for messages; whether the source is one file rather than a folder or zip."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        label = f"'{name}'" if name else "The upload"
        if len(data) > MAX_BYTES:
            raise DataError(f"{label} is larger than the limit of {MAX_BYTES // 2**20} MB.")
        if data.startswith(_ZIP_MAGIC):
            return _zip_entries(data, label), label, False
        return [(name or "upload", data)], label, True
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(f"Cannot read FreeSurfer outputs from a {type(source).__name__}.")
    path = Path(source)
    label = f"'{name or path.name}'"
    try:
        if path.is_dir():
            return _folder_entries(path, label), label, False
        if not path.is_file():
            raise DataError(f"There is no file or folder at '{path}'.")
        if path.stat().st_size > MAX_BYTES:
            raise DataError(f"{label} is larger than the limit of {MAX_BYTES // 2**20} MB.")
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"'{path}' could not be read ({exc.strerror or exc}).") from None
    if data.startswith(_ZIP_MAGIC):
        return _zip_entries(data, label), label, False
    return [(path.name, data)], label, True


def _wanted(path: str) -> bool:
    """Whether a file in a folder or zip may be a stats file or a *stats2table table."""
    pure = PurePosixPath(path)
    if "__MACOSX" in pure.parts or pure.name.startswith("."):
        return False
    return pure.suffix.lower() == ".stats" or pure.suffix.lower() in _TABLE_SUFFIXES


def _zip_entries(data: bytes, label: str) -> list[tuple[str, bytes]]:
    """Read a zip in memory, refusing one that would decompress beyond the limits.

    The declared sizes are summed before anything is decompressed; zipfile then stops each
    entry at its declared size and checks its CRC, so a header that lies about a size ends
    in a refusal, never in more bytes than declared."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError) as exc:
        raise DataError(f"{label} is not a readable zip file ({exc}).") from None
    with archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        if len(infos) > MAX_ARCHIVE_ENTRIES:
            raise DataError(
                f"{label} holds {len(infos):,} files; the limit is {MAX_ARCHIVE_ENTRIES:,}. "
                "Zip only the subjects' stats folders."
            )
        infos = [i for i in infos if _wanted(i.filename)]
        if sum(i.file_size for i in infos) > MAX_BYTES:
            raise DataError(
                f"{label} would decompress to more than {MAX_BYTES // 2**20} MB of stats files "
                "and tables; zip only the subjects' stats folders."
            )
        entries = []
        for info in infos:
            if info.flag_bits & 0x1:
                raise DataError(f"{label}: '{info.filename}' is encrypted; zip it without a "
                                "password.")
            try:
                content = archive.read(info)
            except (zipfile.BadZipFile, NotImplementedError, EOFError, OSError) as exc:
                raise DataError(
                    f"{label}: '{info.filename}' could not be decompressed ({exc})."
                ) from None
            except Exception as exc:  # zlib.error and friends: not meant for a person
                raise DataError(
                    f"{label}: '{info.filename}' could not be decompressed "
                    f"({type(exc).__name__})."
                ) from None
            entries.append((info.filename, content))
    return entries


def _folder_entries(root: Path, label: str) -> list[tuple[str, bytes]]:
    paths = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for file in sorted(files):
            relative = (Path(folder) / file).relative_to(root).as_posix()
            if _wanted(relative):
                paths.append((relative, Path(folder) / file))
            if len(paths) > MAX_ARCHIVE_ENTRIES:
                raise DataError(f"{label} holds more than {MAX_ARCHIVE_ENTRIES:,} files to "
                                "read; point to the folder of subjects.")
    if sum(p.stat().st_size for _, p in paths) > MAX_BYTES:
        raise DataError(f"{label} holds more than {MAX_BYTES // 2**20} MB of stats files and "
                        "tables.")
    return [(relative, path.read_bytes()) for relative, path in paths]


# ------------------------------------------------------------------------ stats files


@dataclass
class _StatsFile:
    """One parsed .stats file: its global measures and its table."""

    where: str
    kind: str  # "aseg" or "aparc"
    subject: str | None
    hemi: str | None
    parcellation: str | None
    measures: dict[str, float] = field(default_factory=dict)
    header: list[str] = field(default_factory=list)
    rows: list[tuple[int, list[str]]] = field(default_factory=list)


def _decode(data: bytes, where: str) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    if "\x00" in text:
        raise DataError(f"'{where}' is not a text file.")
    return text


def _parse_stats(text: str, where: str) -> _StatsFile:
    """Parse a FreeSurfer .stats file, naming the file and line of any problem."""
    lines = text.splitlines()
    kind = None
    subject = hemi = annotation = None
    measures: dict[str, float] = {}
    header: list[str] = []
    rows: list[tuple[int, list[str]]] = []
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            body = stripped[1:].strip()
            word, _, rest = body.partition(" ")
            rest = rest.strip()
            if body.startswith("Title Segmentation Statistics") or body == (
                "generating_program mri_segstats"
            ):
                kind = "aseg"
            elif body.startswith("Table of FreeSurfer cortical parcellation") or body == (
                "generating_program mris_anatomical_stats"
            ):
                kind = "aparc"
            elif word == "subjectname" and rest:
                subject = rest
            elif word == "hemi" and rest:
                hemi = rest
            elif word == "AnnotationFile" and rest:
                annotation = rest
            elif word == "Measure":
                short, value = _measure_line(rest, where, number)
                measures[short] = value
            elif word == "ColHeaders":
                header = rest.split()
            continue
        if not header:
            raise DataError(
                f"'{where}', line {number}: a table row comes before the '# ColHeaders' line; "
                "this is not a FreeSurfer stats file, or its header was cut."
            )
        fields = stripped.split()
        if len(fields) != len(header):
            raise DataError(
                f"'{where}', line {number}: {len(fields)} values, but '# ColHeaders' names "
                f"{len(header)} columns ({' '.join(header)})."
            )
        rows.append((number, fields))
    if kind is None:
        kind = "aseg" if "Volume_mm3" in header else "aparc" if "ThickAvg" in header else None
    if kind is None:
        raise DataError(
            f"'{where}' is not a FreeSurfer aseg or aparc stats file (no mri_segstats or "
            "mris_anatomical_stats header, no '# ColHeaders' line naming Volume_mm3 or "
            "ThickAvg)."
        )
    needed = ("StructName", "Volume_mm3") if kind == "aseg" else ("StructName",)
    absent = [c for c in needed if c not in header]
    if absent:
        raise DataError(
            f"'{where}': the '# ColHeaders' line "
            + ("is missing" if not header else f"has no {', '.join(absent)} column")
            + "; FreeSurfer writes one naming StructName and the measures."
        )
    name = PurePosixPath(where).name
    name_match = _STATS_NAME.match(name)
    parcellation = None
    if kind == "aparc":
        if name_match and name_match.group(2):
            hemi = hemi or name_match.group(2)
            parcellation = name_match.group(3)
        elif annotation:
            annot = re.match(r"^(lh|rh)\.(.+)\.annot$", PurePosixPath(annotation).name)
            parcellation = annot.group(2) if annot else None
        if hemi not in ("lh", "rh"):
            raise DataError(f"'{where}': no '# hemi lh' or '# hemi rh' line, and the file "
                            "name does not start with lh. or rh.")
    return _StatsFile(where, kind, subject, hemi, parcellation, measures, header, rows)


def _measure_line(rest: str, where: str, number: int) -> tuple[str, float]:
    """(short name, value) of a '# Measure' line.

    Normally `<name>, <short name>, <description>, <value>, <unit>`; FreeSurfer 6.0-7.1
    ?h.aparc*.stats write `Cortex, CortexVol Total cortical gray matter volume, <value>,
    mm^3` (one comma missing), read as short name CortexVol."""
    parts = [p.strip() for p in rest.split(",")]
    if len(parts) >= 5:
        short, value = parts[1], parts[3]
    elif len(parts) == 4 and " " in parts[1]:
        short, value = parts[1].split()[0], parts[2]
    else:
        raise DataError(
            f"'{where}', line {number}: a '# Measure' line needs 5 comma-separated fields "
            "(name, short name, description, value, unit)."
        )
    try:
        number_value = float(value)
    except ValueError:
        raise DataError(
            f"'{where}', line {number}: the value of measure '{short}' is '{value}', not a "
            "number."
        ) from None
    return short, number_value


def _stats_values(stats: _StatsFile, measures: Sequence[str]) -> dict[str, float]:
    """The columns one stats file gives, named as the *stats2table tools name them."""
    out: dict[str, float] = {}
    position = {c: i for i, c in enumerate(stats.header)}
    if stats.kind == "aseg":
        for number, fields in stats.rows:
            out[fields[position["StructName"]]] = _number(
                fields[position["Volume_mm3"]], stats.where, number, "Volume_mm3"
            )
        for short, value in stats.measures.items():
            out[short] = value
        return out
    for measure in measures:
        column = _MEASURE_COLUMN[measure]
        if column not in position:
            raise DataError(f"'{stats.where}': '# ColHeaders' has no {column} column, needed "
                            f"for {measure}.")
        for number, fields in stats.rows:
            region = fields[position["StructName"]]
            out[f"{stats.hemi}_{region}_{measure}"] = _number(
                fields[position[column]], stats.where, number, column
            )
    for short, measure in _CORTEX_SUMMARY.items():
        if short in stats.measures and measure in measures:
            out[f"{stats.hemi}_{short}_{measure}"] = stats.measures[short]
    return out


def _number(text: str, where: str, line: int, column: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise DataError(
            f"'{where}', line {line}, column {column}: '{text}' is not a number."
        ) from None


# ------------------------------------------------------------------- *stats2table tables


def _parse_table(text: str, where: str) -> tuple[list[str], list[str], list[list[float]], str
                                                 | None]:
    """(subjects, column names, values, parcellation) of an asegstats2table or
    aparcstats2table output, transposed (--transpose) or not."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    first = lines[0][1]
    delimiter = next((d for d in ("\t", ",", ";") if d in first), None)

    def split(line: str) -> list[str]:
        return [c.strip() for c in (line.split(delimiter) if delimiter else line.split())]

    cells = [(n, split(line)) for n, line in lines]
    corner = cells[0][1][0]
    aseg, aparc = _ASEG_TABLE.match(corner), _APARC_TABLE.match(corner)
    if aseg is None and aparc is None:
        raise DataError(
            f"'{where}', line 1: the first cell is '{corner}', not 'Measure:volume' "
            "(asegstats2table) or like 'lh.aparc.thickness' (aparcstats2table)."
        )
    if aseg is not None and aseg.group(1) != "volume":
        raise DataError(
            f"'{where}' holds the aseg measure '{aseg.group(1)}', not volumes; normcore's aseg "
            "IDPs are volumes: run asegstats2table with --meas volume (its default)."
        )
    width = len(cells[0][1])
    for number, row in cells:
        if len(row) != width:
            raise DataError(
                f"'{where}', line {number}: {len(row)} values, but the first line has {width}."
            )
    hemi = aparc.group(1) if aparc else None
    measure = aparc.group(3) if aparc else None

    def decorate(name: str) -> str:
        if hemi is None or name in ("eTIV", "BrainSegVolNotVent"):
            return name
        if name.lower().startswith(f"{hemi}_") or name.lower().startswith(f"{hemi}."):
            return name
        return f"{hemi}_{name}_{measure}"  # written with --parcid-only

    header = [decorate(c) for c in cells[0][1][1:]]
    first_column = [decorate(row[0]) for _, row in cells[1:]]
    transposed = not any(classify_column(c) for c in header) and any(
        classify_column(c) for c in first_column
    )
    if transposed:
        subjects = cells[0][1][1:]
        names = first_column
        grid = [
            [_number(row[j + 1], where, number, subjects[j]) for number, row in cells[1:]]
            for j in range(len(subjects))
        ]
    else:
        subjects = [row[0] for _, row in cells[1:]]
        names = header
        grid = [
            [_number(v, where, number, names[j]) for j, v in enumerate(row[1:])]
            for number, row in cells[1:]
        ]
    for label, seen in (("subject", subjects), ("column", names)):
        duplicates = sorted({s for s in seen if seen.count(s) > 1})
        if duplicates:
            raise DataError(f"'{where}': {label} {', '.join(repr(d) for d in duplicates)} "
                            "appears more than once.")
    return subjects, names, grid, (aparc.group(2) if aparc else None)


# ---------------------------------------------------------------------------- assembly


class _Table:
    """Values by subject and column, each remembering the file it came from and whether
    that file was a *stats2table table (whose 0.0 means "this subject had no such region")."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.values: dict[str, dict[str, tuple[float, str, bool]]] = {}
        self.columns: dict[str, None] = {}
        self.atlases: dict[str, str] = {}

    def put(self, subject: str, column: str, value: float, where: str,
            from_table: bool = False) -> None:
        row = self.values.setdefault(subject, {})
        self.columns.setdefault(column, None)
        if column not in row:
            row[column] = (value, where, from_table)
            return
        old, old_where, old_from_table = row[column]
        if math.isclose(old, value, rel_tol=_RELATIVE_TOLERANCE) or (
            from_table and value == 0.0
        ):
            return
        if old_from_table and old == 0.0:
            row[column] = (value, where, from_table)
            return
        raise DataError(
            f"{self.label}: subject '{subject}', column '{column}' is {old:g} in "
            f"'{old_where}' but {value:g} in '{where}'; remove one of the two."
        )


def _assemble(entries: list[tuple[str, bytes]], label: str, measures: tuple[str, ...],
              single: bool) -> pd.DataFrame:
    stats_files: list[tuple[str, _StatsFile]] = []
    tables: list[tuple[str, str]] = []
    skipped = 0
    for path, data in entries:
        pure = PurePosixPath(path)
        name_match = _STATS_NAME.match(pure.name)
        if pure.suffix.lower() == ".stats":
            parc = name_match.group(3) if name_match and name_match.group(2) else None
            if not single and (name_match is None or (
                    parc is not None and parc not in _PARCELLATION_ATLAS)):
                skipped += 1  # wmparc, BA_exvivo, aparc.pial, curv ... not IDPs read here
                continue
            stats = _parse_stats(_decode(data, path), path)
            if stats.kind == "aparc" and stats.parcellation not in _PARCELLATION_ATLAS:
                raise DataError(
                    f"'{path}' is the '{stats.parcellation}' parcellation; normcore reads "
                    "aparc (Desikan-Killiany), aparc.a2009s (Destrieux) and aparc.DKTatlas."
                )
            stats_files.append((_subject_of(pure, stats, label), stats))
            continue
        text = _decode(data, path)
        if is_freesurfer(pure.name, text[:4096].encode("utf-8")):
            tables.append((path, text))
        elif single:
            raise DataError(
                f"{label} is neither a FreeSurfer .stats file nor an asegstats2table / "
                "aparcstats2table table."
            )
        else:
            skipped += 1
    if not stats_files and not tables:
        raise DataError(
            f"{label} holds no FreeSurfer stats files (<subject>/stats/aseg.stats, "
            "?h.aparc.stats, ?h.aparc.a2009s.stats) and no asegstats2table / aparcstats2table "
            "tables."
        )
    table = _Table(label)
    notes = []
    has_aparc = any(s.parcellation == "aparc" for _, s in stats_files)
    dkt_skipped = 0
    order = {"aseg": 0, "aparc": 1, "aparc.a2009s": 2, "aparc.DKTatlas": 3, "aparc.DKTatlas40": 3}
    stats_files.sort(key=lambda item: (item[0], order.get(item[1].parcellation or "aseg", 4),
                                       item[1].hemi or ""))
    for subject, stats in stats_files:
        atlas = _PARCELLATION_ATLAS.get(stats.parcellation or "")
        if atlas == DKT and has_aparc:
            dkt_skipped += 1
            continue
        for column, value in _stats_values(stats, measures).items():
            table.put(subject, column, value, stats.where)
            kind = classify_column(column)
            if atlas is not None and kind is not None and kind.atlas in _CORTICAL_ATLASES:
                table.atlases[column] = atlas
    # Whole-brain measures from an aparc file only where a subject has no aseg.stats, as
    # aparcstats2table reads them (eTIV and BrainSegVolNotVent).
    with_aseg = {s for s, f in stats_files if f.kind == "aseg"}
    for subject, stats in stats_files:
        if stats.kind == "aparc" and subject not in with_aseg:
            for short in ("eTIV", "BrainSegVolNotVent"):
                if short in stats.measures:
                    table.put(subject, short, stats.measures[short], stats.where)
    if dkt_skipped:
        notes.append(
            f"{dkt_skipped} aparc.DKTatlas stats files were not read: their columns would have "
            "the aparc (Desikan-Killiany) names of other regions."
        )
    for path, text in tables:
        subjects, names, grid, parc = _parse_table(text, path)
        atlas = _PARCELLATION_ATLAS.get(parc or "")
        for subject, row in zip(subjects, grid):
            for column, value in zip(names, row):
                table.put(subject, column, value, path, from_table=True)
        if atlas is not None:
            for column in names:
                kind = classify_column(column)
                if kind is not None and kind.atlas in _CORTICAL_ATLASES:
                    table.atlases[column] = atlas
    if skipped:
        notes.append(f"{skipped} other files were skipped (not aseg/aparc stats or tables).")
    subjects = list(table.values)
    columns = list(table.columns)
    if len(subjects) > MAX_ROWS:
        raise DataError(f"{label} holds {len(subjects):,} subjects; the limit is {MAX_ROWS:,}.")
    if len(columns) + 1 > MAX_COLUMNS:
        raise DataError(f"{label} gives {len(columns):,} columns; the limit is {MAX_COLUMNS:,}.")
    frame = pd.DataFrame(
        [[table.values[s].get(c, (np.nan, "", False))[0] for c in columns] for s in subjects],
        columns=columns,
        dtype=float,
    )
    frame.insert(0, SUBJECT_COLUMN, pd.Series(subjects, dtype=object))
    frame.attrs["freesurfer_atlases"] = dict(table.atlases)
    if notes:
        frame.attrs["notes"] = notes
    return frame


def _subject_of(path: PurePosixPath, stats: _StatsFile, label: str) -> str:
    """The subject a stats file belongs to: the folder holding its `stats/` folder (as
    FreeSurfer's SUBJECTS_DIR layout and the *stats2table tools have it), else the file's
    `# subjectname` line."""
    parents = path.parts[:-1]
    if len(parents) >= 2 and parents[-1] == "stats":
        return parents[-2]
    if len(parents) == 1 and parents[0] != "stats":
        return parents[0]
    if stats.subject:
        return stats.subject
    raise DataError(
        f"{label}: cannot tell whose '{path}' is (no <subject>/stats/ folder and no "
        "'# subjectname' line)."
    )
