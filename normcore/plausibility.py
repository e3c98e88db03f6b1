"""Whether a brain measure's value can be real, before a model learns from it or reads a
person by it.

A norm learned from one value x1000 (cm3 typed as mm3) moves every band, and a 0 mm3
thalamus (a structure FreeSurfer 7 renamed, exported as 0) scored against a norm comes
out as an ordinary centile. Both are wrong answers given calmly. The rules here find
such values from the table itself and from what a model kept of its training values, and
name them by column and row; `normcore.schema` turns them into validation findings and the
model into per-cell flags.

Rules, and why these thresholds:

- **Positive by nature.** Volumes, thicknesses and areas cannot be zero or negative; a 0
  is a structure that was not segmented or was renamed, a failed run, or a missing value
  written as 0. `positive_by_nature` recognises such measures by FreeSurfer's naming
  conventions (aseg structures `Left-*`/`Right-*`, ventricles, `*Vol*`, eTIV,
  aparcstats2table's `_thickness`/`_area`/`_volume`), except the structures that are
  legitimately 0 in healthy people (hypointensities, vessels, the 5th ventricle).
- **x100 from the median** (`RATIO_LIMIT`). In the fcon1000 demo tables (1,053 healthy
  people, 8-79 years) no volume or thickness is more than 6x above or 3.5x below its
  median (the lateral ventricles vary most); a unit slip (cm3 for mm3, mm for cm) is a
  factor of 10 to 1000. A factor of 100 catches x1000 and /1000 with a 10-fold margin on
  either side.
- **Robust outliers** (`OUTLIER_Z`): the distance from the median in units of the
  median absolute deviation (MAD x 1.4826, a standard deviation for normal data; Leys et
  al. 2013, J Exp Soc Psychol 49:764), on a log scale for columns without negative values
  (skewed measures such as ventricles are near-normal in logs). The most extreme real
  value of the fcon1000 training half is 11.8 such units (Left-Hippocampus: 1,153 mm3
  beside a right hippocampus of 3,318 mm3, likely a segmentation failure), the next 10.0;
  the test half's is 7.8. 15 units (a normal probability below 1e-50) leaves them all
  alone. It catches x10 on every thickness of the demo (25 to 67 units) and on most
  volumes (15 to 26), not on the accumbens (11 to 14) or the ventricles (5 to 8), whose
  spread is wide; x100 and beyond the ratio rule catches everywhere.
- **Too large to compute with** (`MAX_MAGNITUDE`): a value whose square overflows double
  precision (1e154 and up) breaks every mean and covariance downstream; 1e150 leaves room
  for sums over the largest tables.
- **Constant columns** at scoring (`MIN_CONSTANT_ROWS`): real measurements of three or
  more people never coincide exactly; one value for everyone is an export artefact.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from normcore.errors import DataError, Problem

__all__ = [
    "MAX_MAGNITUDE",
    "MIN_CONSTANT_ROWS",
    "OUTLIER_Z",
    "RATIO_LIMIT",
    "constant_columns",
    "implausible_cells",
    "numeric_failures",
    "outside_site_ages",
    "positive_by_nature",
    "robust_z",
    "site_age_ranges",
    "training_problems",
]

OUTLIER_Z = 15.0
"""Robust z (MAD units) beyond which a training value is refused as an outlier."""
RATIO_LIMIT = 100.0
"""A positive measure this many times above or below the median is a unit or entry error."""
MAX_MAGNITUDE = 1e150
"""Values this large (in absolute value) cannot be computed with: their squares overflow."""
MIN_CONSTANT_ROWS = 3
"""From this many people up, one value shared by all of them in an IDP is an artefact."""
MAD_TO_SD = 1.4826
"""MAD x this estimates the standard deviation of normal data."""
_MAX_QUOTED = 3

_MAY_BE_ZERO = re.compile(r"hypointens|vessel|5th.?ventricle|lesion|wmh", re.IGNORECASE)
_SIGNED = re.compile(r"curv|asym|euler|holes|index|ind$|_z$|zscore|diff|change", re.IGNORECASE)
_POSITIVE = re.compile(
    r"^(left|right)[-_]|vol|thick|area|etiv|intracranial|ventricle|brain.?stem|^cc_|^csf$",
    re.IGNORECASE,
)


def positive_by_nature(name: str) -> bool:
    """True for a measure that cannot be zero or negative in a living brain: a volume,
    thickness or area as FreeSurfer names them (see the module docstring)."""
    if _MAY_BE_ZERO.search(name) or _SIGNED.search(name):
        return False
    return bool(_POSITIVE.search(name))


def robust_z(values: np.ndarray) -> np.ndarray:
    """Distance of each value from the column's median in robust standard deviations
    (MAD x 1.4826), on a log scale when no value is negative (zeros are not judged
    there); NaN where a value is not judged (missing, or the spread is zero)."""
    values = np.asarray(values, dtype=np.float64)
    z = np.full(values.shape, np.nan)
    finite = np.isfinite(values) & (np.abs(values) < MAX_MAGNITUDE)
    log_scale = finite.any() and bool(np.all(values[finite] >= 0))
    judged = finite & (values > 0) if log_scale else finite
    if judged.sum() < 3:
        return z
    x = np.log(values[judged]) if log_scale else values[judged]
    centre = np.median(x)
    spread = MAD_TO_SD * np.median(np.abs(x - centre))
    if spread <= 0:
        # Many ties (integer counts): the mean absolute deviation, a normal SD x 0.798.
        spread = np.mean(np.abs(x - centre)) / 0.7979
    if spread <= 0:
        return z
    z[judged] = (x - centre) / spread
    return z


def _quoted(values: np.ndarray) -> str:
    shown = ", ".join(f"{v:.6g}" for v in values[:_MAX_QUOTED])
    return shown + (f" and {len(values) - _MAX_QUOTED} more" if len(values) > _MAX_QUOTED else "")


def _rows(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.flatnonzero(mask))


def training_problems(name: str, values: np.ndarray, keep_outliers: bool) -> list[Problem]:
    """What cannot be real among one IDP's training `values` (NaN where a cell is
    already reported as missing or not a number), by row.

    Values too large to compute with are always errors. Zero or negative values of a
    measure positive by nature, and outliers (`RATIO_LIMIT`, `OUTLIER_Z`), are errors
    unless `keep_outliers` (then warnings: the user has said they are real).
    """
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    problems: list[Problem] = []
    huge = finite & (np.abs(values) >= MAX_MAGNITUDE)
    if huge.any():
        problems.append(Problem(
            "error", name, _rows(huge),
            f"values too large to compute with ({_quoted(values[huge])}); no measurement is "
            "this large. Correct them, or remove these rows.",
        ))
    usable = finite & ~huge
    severity = "warning" if keep_outliers else "error"
    action = (
        "They are kept, as asked."
        if keep_outliers
        else "Correct them or remove these rows; if they are real, keep them on purpose "
        "(keep outliers: keep_outliers=True, --keep-outliers)."
    )
    impossible = np.zeros_like(finite)
    if positive_by_nature(name):
        impossible = usable & (values <= 0)
        if impossible.any():
            problems.append(Problem(
                severity, name, _rows(impossible),
                f"zero or negative values ({_quoted(values[impossible])}) for a measure that "
                "is positive by nature (a volume, thickness or area): usually a structure "
                "not segmented or renamed, a failed run, or a missing value written as 0. "
                + action,
            ))
    judged = usable & ~impossible
    if judged.sum() < 3:
        return problems
    median = float(np.median(values[judged]))
    z = robust_z(np.where(judged, values, np.nan))
    with np.errstate(invalid="ignore"):
        far = judged & (np.abs(z) > OUTLIER_Z)
        if positive_by_nature(name) and median > 0:
            ratio = values / median
            far |= judged & ((ratio > RATIO_LIMIT) | (ratio < 1.0 / RATIO_LIMIT))
    if far.any():
        problems.append(Problem(
            severity, name, _rows(far),
            f"values far from everyone else's ({_quoted(values[far])}, against a median of "
            f"{median:.6g}; more than {OUTLIER_Z:g} robust standard deviations away, or "
            f"{RATIO_LIMIT:g} times above or below the median): a unit or entry error? "
            + action,
        ))
    return problems


def constant_columns(values: np.ndarray) -> np.ndarray:
    """(D,) bool: IDPs holding one value for every one of at least MIN_CONSTANT_ROWS
    people of an (n, D) table."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < MIN_CONSTANT_ROWS:
        return np.zeros(values.shape[1], dtype=bool)
    return np.all(values == values[:1], axis=0)


def implausible_cells(
    values: np.ndarray, idps: Sequence[str], centre: np.ndarray | None = None
) -> tuple[np.ndarray, list[Problem]]:
    """(n, D) bool of values no real person has, and one finding per IDP naming them
    (severity "warning": the caller decides whether they block).

    Implausible: a zero or negative measure positive by nature, a value too large to
    compute with, an IDP constant over the whole table (`constant_columns`), and, given
    `centre` (D,), each IDP's typical training value (the model keeps its training
    mean), a measure positive by nature RATIO_LIMIT times away from it.
    """
    values = np.asarray(values, dtype=np.float64)
    positive = np.array([positive_by_nature(name) for name in idps], dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        huge = np.abs(values) >= MAX_MAGNITUDE
        nonpositive = positive & (values <= 0)
        unit = np.zeros_like(huge)
        if centre is not None:
            typical = np.asarray(centre, dtype=np.float64)
            ratio = values / np.where(typical > 0, typical, np.nan)
            unit = positive & ((ratio > RATIO_LIMIT) | (ratio < 1.0 / RATIO_LIMIT))
            unit &= ~nonpositive & ~huge
    constant = constant_columns(values)
    problems = []
    for j, name in enumerate(idps):
        reasons = []
        if constant[j]:
            reasons.append(
                f"{values[0, j]:.6g} for all {len(values)} people, which real measurements "
                "never are: an export artefact, a structure not segmented, or a region "
                "another FreeSurfer version names differently"
            )
        if nonpositive[:, j].any() and not constant[j]:
            reasons.append(
                f"zero or negative values ({_quoted(values[nonpositive[:, j], j])}) for a "
                "measure positive by nature (a volume, thickness or area)"
            )
        if unit[:, j].any():
            reasons.append(
                f"values more than {RATIO_LIMIT:g} times above or below the training mean "
                f"of {typical[j]:.6g} ({_quoted(values[unit[:, j], j])}): a unit error?"
            )
        if huge[:, j].any():
            huge_values = _quoted(values[huge[:, j], j])
            reasons.append(f"values too large to be measurements ({huge_values})")
        if reasons:
            mask = nonpositive[:, j] | unit[:, j] | huge[:, j]
            rows = () if constant[j] else _rows(mask)
            problems.append(Problem("warning", name, rows, "; ".join(reasons) + "."))
    cells = huge | nonpositive | unit | constant[None, :]
    return cells, problems


def outside_site_ages(
    ages: np.ndarray, sites: Sequence[str | float], ranges: Mapping[str, Sequence[float]]
) -> np.ndarray:
    """(n,) bool: ages outside the training ages of the person's own site (`ranges`:
    site -> (youngest, oldest)); False where the site has no recorded range (a site the
    model never saw is flagged as such, and by the global age range)."""
    ages = np.asarray(ages, dtype=np.float64)
    out = np.zeros(len(ages), dtype=bool)
    for i, (age, site) in enumerate(zip(ages, sites, strict=True)):
        bounds = ranges.get(str(site)) if isinstance(site, str) else None
        if bounds is not None:
            out[i] = not (float(bounds[0]) <= age <= float(bounds[1]))
    return out


def site_age_ranges(
    training: Mapping, adaptations: Sequence[Mapping], column: str
) -> dict[str, tuple[float, float]]:
    """Youngest and oldest age at which a model saw each level of `column` (its site
    column): its training people (`training["level_age_ranges"]`), widened by the
    controls of every adaptation to that level."""
    ranges = {
        str(site): (float(lo), float(hi))
        for site, (lo, hi) in training.get("level_age_ranges", {}).get(column, {}).items()
    }
    for record in adaptations:
        seen = record.get("age_range")
        if record.get("column") != column or not seen:
            continue
        site, (lo, hi) = str(record["level"]), (float(seen[0]), float(seen[1]))
        old = ranges.get(site, (lo, hi))
        ranges[site] = (min(old[0], lo), max(old[1], hi))
    return ranges


_NUMERIC_SYMPTOMS = ("nan", "infinity", "converge", "singular", "overflow")


@contextlib.contextmanager
def numeric_failures(values: np.ndarray, idps: Sequence[str]) -> Iterator[None]:
    """Turn a numeric failure while learning from (n, D) training `values` (a singular
    matrix, an eigendecomposition that does not converge, NaN reaching scikit-learn) into
    a DataError naming the most extreme values, the likely cause: such failures follow
    from values the plausibility checks were told to keep."""
    try:
        yield
    except DataError:
        raise
    except (np.linalg.LinAlgError, ValueError, FloatingPointError) as err:
        if not any(s in str(err).lower() for s in _NUMERIC_SYMPTOMS) and not isinstance(
            err, np.linalg.LinAlgError
        ):
            raise
        values = np.asarray(values, dtype=np.float64)
        z = np.column_stack([robust_z(values[:, j]) for j in range(values.shape[1])])
        with np.errstate(invalid="ignore"):
            worst = np.where(np.isfinite(z), np.abs(z), -np.inf)
        worst[~np.isfinite(values) | (np.abs(values) >= MAX_MAGNITUDE)] = np.inf
        order = np.argsort(worst, axis=None)[::-1][:5]
        rows, cols = np.unravel_index(order, values.shape)
        problems = [
            Problem("error", idps[c], (int(r),),
                    f"value {values[r, c]:.6g}, {_distance(worst[r, c])} from the column's median.")
            for r, c in zip(rows, cols, strict=True)
        ]
        raise DataError(
            f"Training failed on a numeric problem ({type(err).__name__}: {err}). The most "
            "extreme values of the table, which usually cause it, are below: correct or "
            "remove them.",
            problems=problems,
        ) from None


def _distance(z: float) -> str:
    return "too large to compute with" if not np.isfinite(z) else f"{z:.1f} robust SDs"
