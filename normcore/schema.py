"""Which column is what, and whether a table is fit to train on or to be scored.

A normative model is only as trustworthy as the table it sees. The checks here run before
any fitting or scoring so that a clinician gets one list of concrete findings ("column
'age', row 3 (spreadsheet line 5): 'abc' is not a number") instead of a stack trace or,
worse, a model silently trained on garbage.

Row numbers are 0-based positions in the data (the same `row` the CLI writes); each
message also gives the spreadsheet line, row + 2, for a file with one header line.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from normcore import plausibility
from normcore.errors import DataError, Problem

__all__ = [
    "Problem",
    "Schema",
    "ValidationReport",
    "validate_training",
    "validate_scoring",
    "coerce_categories",
    "parse_coding",
    "recode",
    "numeric_columns",
    "MIN_TRAINING_ROWS",
    "AGE_LIMITS",
]

#: Fewer people than this cannot support a conditional distribution over age.
MIN_TRAINING_ROWS = 20
#: Ages outside this interval (years) are treated as data-entry errors, not as people.
AGE_LIMITS = (0.0, 120.0)
#: A category level with fewer rows than this gets a warning: its effect is barely learnable.
RARE_LEVEL_ROWS = 5
#: Cell texts that mean "no value" in the exports clinicians send us (compared lower-case).
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "#n/a"})
#: Default subject-id column names, in order of preference.
ID_CANDIDATES = ("sub_id", "subject_id", "participant_id", "id", "ID")
#: How many distinct offending values a message quotes.
_MAX_LISTED_VALUES = 5
_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$")
_INTEGER_TEXT = re.compile(r"^[+-]?\d+\.0*$")


@dataclass(frozen=True)
class Schema:
    """The roles of the columns: one continuous covariate (age), categorical covariates,
    an optional subject id that is carried through to results, and the IDPs to model."""

    age: str = "age"
    categorical: tuple[str, ...] = ("sex", "site")
    idps: tuple[str, ...] = ()
    id: str | None = None

    def __post_init__(self) -> None:
        # Frozen dataclasses must stay hashable and JSON-safe, so lists become tuples.
        object.__setattr__(self, "categorical", tuple(str(c) for c in self.categorical))
        object.__setattr__(self, "idps", tuple(str(c) for c in self.idps))

    @property
    def covariates(self) -> tuple[str, ...]:
        """Every column the model conditions on, age first."""
        return (self.age, *self.categorical)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe description, stored in model bundles."""
        return {
            "age": self.age,
            "categorical": list(self.categorical),
            "idps": list(self.idps),
            "id": self.id,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Schema:
        """Rebuild a schema from `to_dict` output; malformed input raises DataError."""
        try:
            age = d["age"]
            categorical = d.get("categorical", ())
            idps = d.get("idps", ())
            id_ = d.get("id")
        except (KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"The schema description is incomplete ({exc!r}).") from None
        text_lists = (categorical, idps)
        if (
            not isinstance(age, str)
            or not (id_ is None or isinstance(id_, str))
            or any(isinstance(v, str) or not isinstance(v, (list, tuple)) for v in text_lists)
            or any(not isinstance(c, str) for v in text_lists for c in v)
        ):
            raise DataError("The schema description has a field of the wrong type.")
        return cls(age=age, categorical=tuple(categorical), idps=tuple(idps), id=id_)

    @classmethod
    def infer(
        cls,
        df: pd.DataFrame,
        age: str = "age",
        categorical: Iterable[str] | None = None,
        idps: Iterable[str] | None = None,
        id: str | None = None,
    ) -> Schema:
        """Guess the roles of the columns of `df`; explicit arguments always win.

        Defaults: categorical = those of ('sex', 'site') present; id = the first of
        'sub_id', 'subject_id', 'participant_id', 'id', 'ID' present; IDPs = every other
        column that is numeric or mostly numeric (see `numeric_columns`), so that one typo
        in an IDP does not silently drop it: validation then names the bad cell. Columns
        holding a single value in every row are left out of the default IDPs: FreeSurfer
        writes all-zero columns (e.g. 'Left-WM-hypointensities') that carry no information
        and would otherwise block training; naming one explicitly still fails validation.
        `id=None` means detect; `id=""` means the table has no id column.
        Raises DataError when a named column is absent or no IDP remains.
        """
        columns = [str(c) for c in df.columns]
        cat = (
            tuple(c for c in ("sex", "site") if c in columns)
            if categorical is None
            else tuple(categorical)
        )
        if id is None:
            id_col = next((c for c in ID_CANDIDATES if c in columns), None)
        else:
            id_col = id or None
        named = [age, *cat, *([id_col] if id_col is not None else [])]
        if idps is not None:
            idps = tuple(idps)
            named.extend(idps)
        missing = [_missing_column_problem(c, columns, "error") for c in dict.fromkeys(named)
                   if c not in columns]
        if missing:
            raise DataError("Some columns named in the column choice are not in the table.",
                            problems=missing)
        roles = {age, *cat, *([id_col] if id_col is not None else [])}
        if idps is None:
            idps = tuple(
                c for c in numeric_columns(df)
                if c not in roles and (len(df) < 2 or not _is_constant(df[c]))
            )
        overlap = [c for c in idps if c in roles]
        if overlap:
            raise DataError(
                "A column cannot be both a covariate (or the id) and a brain measure: "
                + ", ".join(f"'{c}'" for c in overlap)
                + ". Remove it from one of the two lists."
            )
        if not idps:
            raise DataError(
                "No brain measures (IDPs) found: besides the covariates and the id, the table "
                "has no numeric column. Check the column separator and the column choice."
            )
        return cls(age=age, categorical=cat, idps=tuple(idps), id=id_col)


@dataclass
class ValidationReport:
    """Everything found about one table; `ok` means it may be used (warnings allowed)."""

    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> None:
        """Stop here if the table cannot be used; the exception carries every error."""
        errors = self.errors
        if errors:
            n = len(errors)
            raise DataError(
                f"The table has {n} problem{'s' if n != 1 else ''} to fix before it can be used:",
                problems=errors,
            )

    def to_text(self) -> str:
        """A readable list, errors first, for the CLI and for logs."""
        if not self.problems:
            return "No problems found."
        lines = [f"Error: {p}" for p in self.errors] + [f"Warning: {p}" for p in self.warnings]
        return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


def _is_missing_scalar(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in MISSING_TOKENS


def _missing_mask(series: pd.Series) -> np.ndarray:
    """True where a cell holds no value (NaN/None/NA or a text such as '' or 'NA')."""
    mask = np.array(series.isna(), dtype=bool)
    if not pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        text = series.astype(object).map(
            lambda v: isinstance(v, str) and v.strip().lower() in MISSING_TOKENS
        )
        mask |= text.to_numpy(dtype=bool)
    return mask


def _to_numbers(series: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values as float, missing mask, non-numeric mask) of one column."""
    missing = _missing_mask(series)
    if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        values = series.to_numpy(dtype=float, na_value=np.nan)
        return values, missing, np.zeros(len(series), dtype=bool)
    stripped = series.astype(object).map(lambda v: v.strip() if isinstance(v, str) else v)
    stripped = stripped.where(~missing, None)
    numbers = pd.to_numeric(stripped, errors="coerce")
    values = numbers.to_numpy(dtype=float, na_value=np.nan)
    nonnumeric = np.isnan(values) & ~missing
    return values, missing, nonnumeric


def _is_constant(series: pd.Series) -> bool:
    values = _to_numbers(series)[0]
    return np.unique(values[np.isfinite(values)]).size <= 1


def _rows(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.flatnonzero(mask))


def _quote_values(values: Iterable[Any]) -> str:
    distinct = list(dict.fromkeys(str(v) for v in values))
    shown = ", ".join(f"'{v}'" for v in distinct[:_MAX_LISTED_VALUES])
    rest = len(distinct) - _MAX_LISTED_VALUES
    return f"{shown} and {rest} other value{'s' if rest != 1 else ''}" if rest > 0 else shown


def _close_names(name: str, columns: Sequence[str]) -> list[str]:
    """Likely intended columns: same name in other case, a name containing it ('Age_years'
    for 'age'), then spelling neighbours ('thikness' for 'thickness')."""
    key = name.lower()
    lower = {c.lower(): c for c in reversed(columns)}
    close = [lower[key]] if key in lower else []
    if len(key) >= 3:
        close += sorted((c for c in columns if key in c.lower()), key=len)
    close += [lower[c] for c in difflib.get_close_matches(key, list(lower), n=3, cutoff=0.6)]
    return list(dict.fromkeys(c for c in close if c != name))[:3]


def _missing_column_problem(
    name: str, columns: Sequence[str], severity: Literal["error", "warning"], what: str = ""
) -> Problem:
    """'not in the table', with the closest existing names as a suggestion."""
    close = _close_names(name, columns)
    hint = (
        f" Did you mean {' or '.join(repr(c) for c in close)}?"
        " Rename that column, or change the column choice."
        if close
        else " Add it to the table, or change the column choice."
    )
    return Problem(severity, name, (), f"this column is not in the table{what}.{hint}")


def _cell_problems(
    df: pd.DataFrame, column: str, allow_missing: bool = False
) -> tuple[list[Problem], np.ndarray]:
    """Non-numeric, missing and infinite cells of a numeric column, and its finite values
    (NaN where a cell is unusable) for the checks that follow."""
    values, missing, nonnumeric = _to_numbers(df[column])
    problems: list[Problem] = []
    if nonnumeric.any():
        bad = df[column][nonnumeric]
        message = f"values that are not numbers: {_quote_values(bad)}."
        if any(_DECIMAL_COMMA.match(str(v).strip()) for v in bad):
            message += " A comma seems to be used as the decimal mark; use a dot (3.5, not 3,5)."
        message += " Replace them with numbers, or remove these rows."
        problems.append(Problem("error", column, _rows(nonnumeric), message))
    if missing.any() and not allow_missing:
        problems.append(Problem(
            "error", column, _rows(missing),
            "missing values. Fill them in, or remove these rows.",
        ))
    infinite = np.isinf(values)
    if infinite.any():
        problems.append(Problem(
            "error", column, _rows(infinite),
            "infinite values (inf). These usually come from a division by zero in an "
            "export; replace them with the measured values, or remove these rows.",
        ))
    finite = np.where(np.isfinite(values), values, np.nan)
    return problems, finite


def _age_limit_problems(column: str, ages: np.ndarray) -> list[Problem]:
    low, high = AGE_LIMITS
    with np.errstate(invalid="ignore"):
        absurd = (ages < low) | (ages > high)
    if not absurd.any():
        return []
    return [Problem(
        "error", column, _rows(absurd),
        f"ages outside {low:g} to {high:g} years: {_quote_values(ages[absurd])}. Ages must be in "
        "years (not months or days); correct these values, or remove these rows.",
    )]


def _category_missing_problems(df: pd.DataFrame, column: str) -> list[Problem]:
    missing = _missing_mask(df[column])
    if not missing.any():
        return []
    return [Problem(
        "error", column, _rows(missing),
        "missing values in a category column. Fill them in (for example the site name), "
        "or remove these rows.",
    )]


def _schema_problems(schema: Schema, columns: Sequence[str], idps_required: bool,
                     what: str = "") -> list[Problem]:
    problems = []
    if len(set(columns)) != len(columns):
        dup = sorted({c for c in columns if list(columns).count(c) > 1})
        problems.append(Problem(
            "error", None, (),
            f"these column names appear more than once: {_quote_values(dup)}. "
            "Give every column a unique name.",
        ))
    roles = [schema.age, *schema.categorical, *([schema.id] if schema.id else [])]
    overlap = [c for c in schema.idps if c in roles]
    if overlap:
        problems.append(Problem(
            "error", None, (),
            f"columns chosen both as covariate (or id) and as brain measure: "
            f"{_quote_values(overlap)}. Remove them from one of the two lists.",
        ))
    required = [schema.age, *schema.categorical, *(schema.idps if idps_required else ())]
    if schema.id is not None:
        required.append(schema.id)
    for name in dict.fromkeys(required):
        if name not in columns:
            problems.append(_missing_column_problem(name, columns, "error", what))
    return problems


def _duplicate_id_problems(df: pd.DataFrame, column: str,
                           severity: Literal["error", "warning"]) -> list[Problem]:
    problems: list[Problem] = []
    missing = _missing_mask(df[column])
    ids = coerce_categories(df[column])
    duplicated = ids.duplicated(keep=False).to_numpy(dtype=bool) & ~missing
    if duplicated.any():
        action = (
            "Each person must appear once; remove the repeated rows or fix the ids."
            if severity == "error"
            else "All these rows are scored, but their results share an id."
        )
        problems.append(Problem(
            severity, column, _rows(duplicated),
            f"the same id appears more than once: {_quote_values(ids[duplicated])}. {action}",
        ))
    if missing.any():
        problems.append(Problem(
            "warning", column, _rows(missing),
            "missing ids. These rows are used, but in the results they can only be found "
            "by their row number.",
        ))
    return problems


def _left_out_problems(df: pd.DataFrame, schema: Schema) -> list[Problem]:
    """Warnings naming the columns no role uses that look like measures left out for a
    reason the user may not know: empty, or one value in every row (what `Schema.infer`
    leaves out of the default IDPs). A column is never dropped without being named."""
    used = {schema.age, *schema.categorical, *schema.idps, *([schema.id] if schema.id else [])}
    problems = []
    for name in df.columns:
        if name in used:
            continue
        values = _to_numbers(df[name])[0]
        finite = values[np.isfinite(values)]
        if len(df) and _missing_mask(df[name]).all():
            problems.append(Problem(
                "warning", name, (),
                "this column is empty in every row, so it is not used as a brain measure. "
                "If it should hold values (an eTIV column, say), fill it in.",
            ))
        elif len(df) > 1 and finite.size == len(df) and np.unique(finite).size == 1:
            problems.append(Problem(
                "warning", name, (),
                f"every row holds the same value ({finite[0]:g}), so this column is not "
                "used as a brain measure.",
            ))
    return problems


# ------------------------------------------------------------------------- public API


def validate_training(
    df: pd.DataFrame, schema: Schema, keep_outliers: bool = False
) -> ValidationReport:
    """Check a table before fitting; every finding names the column and rows.

    Errors stop training: a missing column, a non-numeric, missing or infinite cell in age
    or an IDP, an age outside 0-120 years, a constant IDP, a value that cannot be real
    (`plausibility.training_problems`: zero or negative volumes, thicknesses and areas,
    gross outliers, values too large to compute with), a repeated subject id, a missing
    category, or fewer than MIN_TRAINING_ROWS rows. With `keep_outliers` the zero,
    negative and outlying values the user vouches for are warnings instead. Warnings (a
    category level with very few rows, missing ids, a single age, a column left out of
    the model because it is empty or constant) do not stop it.
    """
    columns = [str(c) for c in df.columns]
    df = df.set_axis(columns, axis=1)
    problems = _schema_problems(schema, columns, idps_required=True)
    if len(df) < MIN_TRAINING_ROWS:
        problems.append(Problem(
            "error", None, (),
            f"the table has {len(df)} row{'s' if len(df) != 1 else ''}; training needs at "
            f"least {MIN_TRAINING_ROWS} people, and many more (hundreds) for reliable norms.",
        ))
    if len(set(columns)) != len(columns):
        return ValidationReport(problems)  # cells cannot be addressed by name

    if schema.age in columns:
        cell, ages = _cell_problems(df, schema.age)
        problems += cell + _age_limit_problems(schema.age, ages)
        if len(df) > 1 and np.unique(ages[np.isfinite(ages)]).size == 1:
            problems.append(Problem(
                "warning", schema.age, (),
                "every row has the same age, so the norms cannot depend on age.",
            ))
    for name in schema.idps:
        if name not in columns or name == schema.age:
            continue
        cell, values = _cell_problems(df, name)
        finite = values[np.isfinite(values)]
        if len(df) and _missing_mask(df[name]).all():
            problems.append(Problem(
                "error", name, (),
                "the column is empty: no row holds a value. Fill it in, or remove it from "
                "the brain measures.",
            ))
            continue
        problems += cell
        if len(df) > 1 and finite.size and np.unique(finite).size == 1:
            problems.append(Problem(
                "error", name, (),
                f"every usable value is the same ({finite[0]:g}); a norm cannot be learned "
                "from a constant. Remove this column from the brain measures.",
            ))
        else:
            problems += plausibility.training_problems(name, values, keep_outliers)
    problems += _left_out_problems(df, schema)
    for name in schema.categorical:
        if name not in columns:
            continue
        problems += _category_missing_problems(df, name)
        levels = coerce_categories(df[name])
        counts = levels.value_counts()
        rare = counts[counts < RARE_LEVEL_ROWS]
        for level, count in rare.items():
            rows = _rows((levels == level).to_numpy(dtype=bool, na_value=False))
            problems.append(Problem(
                "warning", name, rows,
                f"the level '{level}' has only {count} row{'s' if count != 1 else ''}; its "
                "effect is estimated from very few people, so its norms lean on the others.",
            ))
    if schema.id is not None and schema.id in columns:
        problems += _duplicate_id_problems(df, schema.id, "error")
    return ValidationReport(problems)


def validate_scoring(
    df: pd.DataFrame,
    schema: Schema,
    age_range: tuple[float, float],
    levels: Mapping[str, Sequence[str]],
    idp_centre: Sequence[float] | None = None,
    site_ages: tuple[str, Mapping[str, Sequence[float]]] | None = None,
    site_factors: tuple[str, Mapping[str, tuple[int, float]]] | None = None,
) -> ValidationReport:
    """Check a table before scoring it with a model trained on `schema`.

    The same cell checks as for training, for the covariates and IDPs. Things the model
    can still answer, but less specifically, are warnings naming the rows: an age outside
    the training `age_range` (scored and flagged, an extrapolation), an age outside the
    training ages of the person's own site (`site_ages`: the site column and each site's
    (youngest, oldest)), and a category level absent from `levels` (scored with the
    model's 'unknown' level). A site learned from few people (`site_factors`: the site
    column and each site's training people and band factor) is named, as information:
    its people's bands are wider. Values no real person has
    (`plausibility.implausible_cells`, with `idp_centre` the IDPs' training means) are
    warnings: the model flags them and gives them no centile. A missing id column is only
    a warning; there is no minimum number of rows beyond one.
    """
    columns = [str(c) for c in df.columns]
    df = df.set_axis(columns, axis=1)
    required = Schema(age=schema.age, categorical=schema.categorical, idps=schema.idps, id=None)
    problems = _schema_problems(required, columns, idps_required=False,
                                what=", but the model needs it")
    absent = [name for name in schema.idps if name not in columns]
    if absent:  # information: a model with conditioning masks gives them imputed bands
        problems.append(Problem(
            "warning", None, (),
            f"{len(absent)} of the model's {len(schema.idps)} brain measures have no column "
            f"({_quote_values(absent)}); they are missing for everyone and get imputed "
            "bands given the measures present.",
        ))
    if schema.id is not None and schema.id not in columns:
        problems.append(Problem(
            "warning", schema.id, (),
            "the id column is not in the table; results will identify people by row number.",
        ))
    if len(df) == 0:
        problems.append(Problem("error", None, (), "the table has no rows to score."))
    if len(set(columns)) != len(columns):
        return ValidationReport(problems)

    if schema.age in columns:
        cell, ages = _cell_problems(df, schema.age)
        problems += cell + _age_limit_problems(schema.age, ages)
        low, high = AGE_LIMITS
        lo, hi = float(age_range[0]), float(age_range[1])
        with np.errstate(invalid="ignore"):
            outside = ((ages < lo) | (ages > hi)) & (ages >= low) & (ages <= high)
        if outside.any():
            problems.append(Problem(
                "warning", schema.age, _rows(outside),
                f"ages outside the training range {lo:g} to {hi:g} years: "
                f"{_quote_values(ages[outside])}. These people are scored, but the model is "
                "extrapolating, so their results are flagged and less reliable.",
            ))
        if site_ages is not None and site_ages[0] in columns:
            inside = ~outside & (ages >= low) & (ages <= high)
            problems += _site_age_problems(df, schema.age, ages, inside, *site_ages)
    if site_factors is not None and site_factors[0] in columns:
        problems += _few_people_problems(df, *site_factors)
    scored = [name for name in schema.idps if name in columns and name != schema.age]
    cells = [_cell_problems(df, name, allow_missing=True) for name in scored]
    for name, (cell, _) in zip(scored, cells, strict=True):
        problems += cell
        blank = _missing_mask(df[name])
        if blank.any():  # information, as for a missing column
            problems.append(Problem(
                "warning", name, _rows(blank),
                "blank cells: this measure is missing for these people; their other "
                "measures are scored and this one gets an imputed band.",
            ))
    if scored and len(df):
        values = np.column_stack([finite for _, finite in cells])
        centre = None
        if idp_centre is not None:
            position = {name: j for j, name in enumerate(schema.idps)}
            centre = np.array([idp_centre[position[name]] for name in scored])
        problems += plausibility.implausible_cells(values, scored, centre)[1]
    for name in schema.categorical:
        if name not in columns:
            continue
        problems += _category_missing_problems(df, name)
        known = set(coerce_categories(pd.Series(list(levels.get(name, [])), dtype=object)))
        values = coerce_categories(df[name])
        unknown = values.notna().to_numpy(bool) & ~values.isin(known).to_numpy(bool)
        if unknown.any():
            problems.append(Problem(
                "warning", name, _rows(unknown),
                f"levels not seen in training: {_quote_values(values[unknown])}. These rows "
                "are scored with the 'unknown' level, so their norms are less specific.",
            ))
    if schema.id is not None and schema.id in columns:
        problems += _duplicate_id_problems(df, schema.id, "warning")
    return ValidationReport(problems)


def _site_age_problems(
    df: pd.DataFrame, age: str, ages: np.ndarray, inside: np.ndarray, column: str,
    ranges: Mapping[str, Sequence[float]],
) -> list[Problem]:
    """Warnings for ages `inside` the training range but outside the training ages of the
    person's own site (the others have their own warning)."""
    sites = coerce_categories(df[column])
    outside = inside & plausibility.outside_site_ages(ages, sites.tolist(), ranges)
    problems = []
    for site in dict.fromkeys(sites[outside]):
        rows = outside & (sites == site).to_numpy(dtype=bool, na_value=False)
        lo, hi = (float(v) for v in ranges[site])
        problems.append(Problem(
            "warning", age, _rows(rows),
            f"ages outside the training ages of {column} '{site}' ({lo:g} to {hi:g} years): "
            f"{_quote_values(ages[rows])}. Their norms come from other sites' people of that "
            "age, so these results are flagged (out_of_site_age_range).",
        ))
    return problems


FEW_PEOPLE_FACTOR = 1.1
"""A site whose new people's bands are at least this much wider than a big site's is
named in the validation report."""


def _few_people_problems(
    df: pd.DataFrame, column: str, factors: Mapping[str, tuple[int, float]]
) -> list[Problem]:
    """Warnings, as information, for the table's sites learned from few training people."""
    sites = coerce_categories(df[column])
    problems = []
    for site in dict.fromkeys(sites.dropna()):
        n, factor = factors.get(site, (0, 1.0))
        if factor < FEW_PEOPLE_FACTOR:
            continue
        problems.append(Problem(
            "warning", column, _rows((sites == site).to_numpy(dtype=bool, na_value=False)),
            f"{column} '{site}' was learned from {n} training "
            f"{'person' if n == 1 else 'people'}, so its people's "
            f"centile bands are {factor:.2f} times as wide as a large site's: the model "
            "knows this site's mean and spread less well.",
        ))  # fmt: skip
    return problems


def _category_text(value: Any) -> Any:
    if _is_missing_scalar(value):
        return np.nan
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    return text.split(".")[0] if _INTEGER_TEXT.match(text) else text


def coerce_categories(series: pd.Series) -> pd.Series:
    """Category labels as stripped text, so that 1, 1.0, '1' and ' 1 ' are one level.

    A site coded 1 in a CSV, 1.0 in Excel and '1' after an edit must not become three
    sites. Missing cells stay missing (NaN); the index is kept.
    """
    if series.dtype == object:  # mixed types: 1 and True are equal keys, but not one label
        texts = [_category_text(v) for v in series]
    else:  # one type: each distinct value's text once (a column has few levels)
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        labels = np.array(
            [*(_category_text(v) for v in uniques.astype(object)), np.nan], dtype=object
        )
        texts = labels[codes]
    return pd.Series(texts, index=series.index, name=series.name, dtype="str")


def parse_coding(text: str) -> dict[str, str]:
    """'1=male,2=female' -> {'1': 'male', '2': 'female'}: each code of a table's category
    column and what it means. Codes are read as `coerce_categories` reads cells (1.0 is
    1). Malformed text, or a code given twice, raises DataError."""
    coding: dict[str, str] = {}
    for pair in (p.strip() for p in str(text).split(",")):
        code, sep, level = (part.strip() for part in pair.partition("="))
        if not sep or not code or not level:
            raise DataError(
                f"The coding '{text}' cannot be read: write CODE=LEVEL pairs separated by "
                "commas, for example 1=male,2=female."
            )
        code = str(_category_text(code))
        if code in coding:
            raise DataError(f"The coding '{text}' gives the code '{code}' twice.")
        coding[code] = level
    return coding


def recode(
    df: pd.DataFrame,
    column: str,
    coding: Mapping[str, str] | None,
    levels: Sequence[str],
    meanings: Mapping[str, str] | None = None,
    how: str = "",
) -> pd.DataFrame:
    """`df` with the codes of category `column` replaced by a model's `levels`, never
    guessed: a wrong guess of which code means male reverses every sex-specific centile.

    `coding` maps each code of the table to a model level, or to what one level means
    (`meanings`: level -> word, such as {'0': 'female', '1': 'male'}). With a coding,
    every code in the column must be in it; without one, every code must be a model level.
    Otherwise DataError lists the codes with their counts and the model's levels; `how`
    ends the message (how to give a coding where the caller is). Missing cells stay
    missing.
    """
    if column not in df.columns:
        return df
    levels = [str(lv) for lv in levels]
    meanings = dict(meanings or {})
    codes = coerce_categories(df[column])
    counts = codes.value_counts()
    known = ", ".join(
        f"'{lv}'" + (f" ({meanings[lv]})" if lv in meanings else "") for lv in levels
    )
    target: dict[str, str] = {}
    for code, said in (coding or {}).items():
        matches = [lv for lv in levels if said == lv] or [
            lv for lv in levels
            if said.lower() in (lv.lower(), meanings.get(lv, "").lower())
        ]
        if len(matches) != 1:
            raise DataError(
                f"Column '{column}': the coding says '{code}' means '{said}', which is not "
                f"one of the model's levels: {known}."
            )
        target[code] = matches[0]
    accepted = set(target) if coding else set(levels)
    unmapped = [(code, int(n)) for code, n in counts.items() if code not in accepted]
    if unmapped:
        what = "not in the coding given" if coding else "that are not levels of the model"
        raise DataError(
            f"Column '{column}' holds codes {what}: {_counted(unmapped)} (all its codes: "
            f"{_counted(counts.items())}). The model's levels are {known}. Nothing is "
            "assumed about what a code means; say it for every code"
            + (f" ({how})." if how else ".")
        )
    if not coding:
        return df
    out = df.copy()
    out[column] = codes.map(target).where(codes.notna(), np.nan)
    return out


def _counted(counts: Iterable[tuple[Any, Any]]) -> str:
    """"'1' (230 people), '2' (1 person)"."""
    return ", ".join(f"'{k}' ({int(n)} {'person' if int(n) == 1 else 'people'})" for k, n in counts)


def numeric_columns(df: pd.DataFrame) -> list[str]:
    """Columns that hold numbers, including those with a few stray non-numeric cells.

    A column counts as numeric when it has a numeric (non-boolean) dtype, or when at
    least one cell is a number and at most max(1, 10%) of its filled cells are not. The
    tolerance exists so that an IDP with one typo ('abc', '3,5') is still offered as an
    IDP and validation can point at the cell, instead of the column vanishing silently.
    """
    result = []
    for column in df.columns:
        series = df[column]
        if pd.api.types.is_bool_dtype(series):
            continue
        if pd.api.types.is_numeric_dtype(series):
            result.append(str(column))
            continue
        values, missing, nonnumeric = _to_numbers(series)
        filled = int((~missing).sum())
        bad = int(nonnumeric.sum())
        if filled > bad and bad <= max(1, filled // 10):
            result.append(str(column))
    return result
