"""What a model file must mean before normcore builds anything from it.

A bundle's checksum (normcore.bundle) proves the file is whole, and anyone who edits the
file can recompute it. These checks refuse what no fit produces, each as a BundleError
naming the field: JSON of the wrong shape, type or depth; numbers that are not finite;
scales that are not positive; quantiles that decrease; category levels that repeat, are
out of the order a fit saves them in, or disagree with the tables they size; age ranges
out of order or off the reference grid; networks larger than normcore trains, and tensors
whose shapes differ from the network the header describes. Sizes are bounded first, so a
header cannot make the reader allocate more than the file holds.

An edit that stays consistent (a shifted mean, a re-fitted table) passes these checks:
only a signature (normcore.provenance) or comparing fingerprints detects it (README,
"Model files: what the checksum does and does not protect").
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import numpy as np

from normcore.config import SAINT_SIZES, ModelConfig, TrainConfig
from normcore.diffusion.schedule import KINDS
from normcore.errors import BundleError
from normcore.first_stage import MAX_SITE_TERM, FirstStage, NewPersonSpread
from normcore.options import BACKBONES
from normcore.preprocessing import CovariateEncoder
from normcore.reference import BANDWIDTH, MAX_DRAW_OFFSET, ReferenceTable, offset_reach
from normcore.schema import Schema

if TYPE_CHECKING:
    import torch

MAX_JSON_BYTES = 64 * 1024**2
"""A header's JSON; the demo model's is 0.5 MB."""
MAX_JSON_DEPTH = 16
"""Nesting of a header's JSON; a fit writes 5 levels. Python's parser recurses per level."""
MAX_IDPS = 10_000
MAX_LEVELS = 10_000
"""Levels of one categorical covariate (sites)."""
MAX_COMBINATIONS = 1_000_000
"""Level combinations (the product of each covariate's level count, unknown included)."""
MAX_REFERENCE_CELLS = 2**28
"""Cells of the unpacked reference table (combinations x ages x z-levels x IDPs): 2 GB."""
MAX_DIFFUSION_STEPS = 100_000
MAX_CALIBRATION = 4.0
"""Largest deviation-calibration shift (normal-score units) or spread factor a file may
hold: beyond it the 'correction' would overturn the model's own ranking, so the file is
taken as edited or damaged."""
MAX_CALIBRATION_SLOPE = 0.5
"""Largest change per year of age in that shift or log spread, for the same reason."""
PRIOR_TENSOR = "net.prior.cov"
"""The denoiser's Gaussian prior covariances (normcore.denoisers.gaussian_prior)."""
PRIOR_AGES_TENSOR = "net.prior.anchors"
"""The standardised ages at which they hold."""
MAX_PRIOR_VARIANCE = 10.0
"""Largest variance that covariance may hold: the first stage's scores have variance
about 1, and a Gaussian prior ten times wider would pull every draw to a wrong place."""
NETWORK_LIMITS: dict[str, tuple[float, float]] = {
    "width": (1, 4096),
    "depth": (1, 64),
    "heads": (1, 64),
    "ffn": (1, 16),
    "idps_per_token": (1, MAX_IDPS),
    "split_observed": (0, 1),
    "dropout": (0.0, 1.0),
    "intersample_p": (0.0, 1.0),
}
"""The network sizes a header may ask for, checked before any module is built (the
dashboard offers width <= 256 and depth <= 6)."""

_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')


def _fail(where: str, problem: str) -> BundleError:
    return BundleError(f"This model file is damaged or was edited: {where} {problem}.")


# ---------------------------------------------------------------------------- JSON
def parse_json(raw: bytes | str, what: str) -> Any:
    """Parse a header's JSON after bounding its size and nesting (the parser recurses per
    level: a deeply nested header would otherwise end in RecursionError)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    if len(data) > MAX_JSON_BYTES:
        raise _fail(
            what, f"is {len(data) / 1024**2:.0f} MB, over the {MAX_JSON_BYTES // 1024**2} MB limit"
        )
    depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise _fail(what, f"is nested {depth} levels deep (at most {MAX_JSON_DEPTH})")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, bad UTF-8, huge integers
        raise _fail(what, f"is not readable JSON ({type(err).__name__})") from err


def json_depth(data: bytes) -> int:
    """Deepest nesting of brackets and braces outside JSON strings, in one linear pass."""
    code = np.frombuffer(_STRING.sub(b'""', data), dtype=np.uint8)
    step = np.isin(code, (ord("["), ord("{"))).astype(np.int64)
    step -= np.isin(code, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


# --------------------------------------------------------------------- typed fields
def _get(d: Mapping, key: str, where: str) -> Any:
    if key not in d:
        raise _fail(f"'{where}'", f"has no '{key}'")
    return d[key]


def _mapping(value: Any, where: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise _fail(f"'{where}'", f"should be a JSON object, not {_kind(value)}")
    return value


def _list(value: Any, where: str, max_len: int | None = None) -> list:
    if not isinstance(value, list):
        raise _fail(f"'{where}'", f"should be a list, not {_kind(value)}")
    if max_len is not None and len(value) > max_len:
        raise _fail(f"'{where}'", f"has {len(value)} entries (at most {max_len})")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _fail(f"'{where}'", f"should be text, not {_kind(value)}")
    return value


def _number(
    value: Any,
    where: str,
    lo: float = -math.inf,
    hi: float = math.inf,
    integer: bool = False,
    above: float | None = None,
) -> float:
    """A finite JSON number in [lo, hi] (and > above, when given)."""
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        kind = "a whole number" if integer else "a number"
        raise _fail(f"'{where}'", f"should be {kind}, not {_kind(value)}")
    if not math.isfinite(value):
        raise _fail(f"'{where}'", f"is {value}, not a finite number")
    if not lo <= value <= hi or (above is not None and value <= above):
        bound = f"above {above:g}" if above is not None and value <= above else f"{lo:g} to {hi:g}"
        raise _fail(f"'{where}'", f"is {value:g}, outside {bound}")
    return value


def _array(value: Any, where: str, ndim: int) -> np.ndarray:
    """A finite float array of `ndim` dimensions from nested JSON lists."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise _fail(f"'{where}'", "is not a rectangular array of numbers") from err
    if array.ndim != ndim:
        raise _fail(f"'{where}'", f"has {array.ndim} dimensions, not {ndim}")
    _finite(array, where)
    return array


def _finite(array: np.ndarray, where: str) -> None:
    bad = np.size(array) - int(np.isfinite(array).sum())
    if bad:
        raise _fail(
            f"'{where}'", f"holds {bad} values that are not finite numbers (NaN or infinite)"
        )


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false"}.get(
        type(value), "null" if value is None else "a number"
    )


# ------------------------------------------------------------------ before building
def check_header(meta: Any) -> None:
    """Types, sizes and value ranges of every header field that sizes or parameterises
    what is built, before anything is built from them."""
    meta = _mapping(meta, "header")
    for key in ("normcore_version", "created"):
        _text(_get(meta, key, "header"), key)
    config = _mapping(_get(meta, "config", "header"), "config")
    check_config(config)
    schema = _check_schema(_mapping(_get(meta, "schema", "header"), "schema"))
    levels = _check_encoder(_mapping(_get(meta, "encoder", "header"), "encoder"), schema)
    _check_adaptations(_list(meta.get("adaptations", []), "adaptations", 100_000), levels)
    _check_levels_order(levels, meta.get("adaptations", []))
    _check_training(_mapping(_get(meta, "training", "header"), "training"), schema, levels)
    for key in ("transform", "location_scale", "shape", "predictive"):
        _mapping(_get(meta, key, "header"), key)
    for k, counts in enumerate(_list(meta["predictive"].get("level_counts", []), "level_counts")):
        for n in _list(counts, f"predictive.level_counts[{k}]", 1_000_000):
            _number(n, f"predictive.level_counts[{k}]", integer=True)
    for key in ("train_seconds", "fit_seconds"):
        _number(_get(meta, key, "header"), key, lo=0.0)
    _number(_get(meta, "reference_bandwidth", "header"), "reference_bandwidth", above=0.0)
    calibration = _list(_get(meta, "deviation_calibration", "header"), "deviation_calibration")
    if len(calibration) not in (2, 6):
        raise _fail(
            "'deviation_calibration'",
            "should hold a shift and a spread, and then their age slopes and age range",
        )
    _number(calibration[0], "deviation_calibration shift", lo=-MAX_CALIBRATION, hi=MAX_CALIBRATION)
    _number(calibration[1], "deviation_calibration spread", above=0.0, hi=MAX_CALIBRATION)
    if len(calibration) == 6:
        for i, name in ((2, "shift slope"), (3, "log spread slope")):
            bound = MAX_CALIBRATION_SLOPE
            _number(calibration[i], f"deviation_calibration {name}", lo=-bound, hi=bound)
        lo = _number(calibration[4], "deviation_calibration youngest age")
        _number(calibration[5], "deviation_calibration oldest age", lo=lo)
    if "deviation_site_shifts" in meta:
        _check_site_shifts(meta["deviation_site_shifts"], schema, levels)
    for i, entry in enumerate(_list(_get(meta, "history", "header"), "history", 1_000_000)):
        for name, value in _mapping(entry, f"history[{i}]").items():
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float))
            ):
                raise _fail(f"'history[{i}].{name}'", f"should be a number, not {_kind(value)}")


def check_config(config: Mapping) -> None:
    """Every setting of ModelConfig with its type and a bound, the network's sizes first."""
    known = {f.name: f for f in fields(ModelConfig)}
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise _fail("'config'", f"has settings this normcore does not know: {unknown[:5]}")
    if _text(_get(config, "backbone", "config"), "config.backbone") not in BACKBONES:
        raise _fail("'config.backbone'", f"is '{config['backbone']}', not one of {BACKBONES}")
    if _text(config.get("schedule", "cosine"), "config.schedule") not in KINDS:
        raise _fail("'config.schedule'", f"is '{config['schedule']}', not one of {KINDS}")
    network = _mapping(config.get("network", {}), "config.network")
    for name, value in network.items():
        if name not in NETWORK_LIMITS:
            raise _fail("'config.network'", f"has a size this normcore does not know: '{name}'")
        lo, hi = NETWORK_LIMITS[name]
        _number(value, f"config.network.{name}", lo, hi, integer=isinstance(lo, int))
    sizes = {**SAINT_SIZES, **network}
    if config["backbone"] == "saint" and sizes["width"] % sizes["heads"]:
        raise _fail("'config.network'", "has a width that its number of heads does not divide")
    steps = _number(
        config.get("diffusion_steps", 1000), "config.diffusion_steps", 2, MAX_DIFFUSION_STEPS, True
    )
    _number(config.get("sampling_steps", 20), "config.sampling_steps", 1, steps, True)
    _number(config.get("eta", 1.0), "config.eta", 0.0, 1.0)
    _number(config.get("reference_samples", 1), "config.reference_samples", 1, 10**9, True)
    _number(config.get("grid_points", 2), "config.grid_points", 2, 100_000, True)
    _number(config.get("seed", 0), "config.seed", 0, 2**63 - 1, True)
    for name in set(config) - {"backbone", "schedule", "network", "train", "diffusion_steps",
                               "sampling_steps", "eta", "reference_samples", "grid_points",
                               "seed"}:  # fmt: skip
        _same_type(config[name], known[name].default, f"config.{name}")
    train = _mapping(_get(config, "train", "config"), "config.train")
    train_fields = {f.name: f.default for f in fields(TrainConfig)}
    unknown = sorted(set(train) - set(train_fields))
    if unknown:
        raise _fail("'config.train'", f"has settings this normcore does not know: {unknown[:5]}")
    for name, value in train.items():
        if value is not None:
            _number(value, f"config.train.{name}", lo=0.0)


def _same_type(value: Any, default: Any, where: str) -> None:
    """A setting added after these checks were written: the type of its default."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise _fail(f"'{where}'", f"should be true or false, not {_kind(value)}")
    elif isinstance(default, (int, float)):
        _number(value, where, integer=isinstance(default, int))
    elif isinstance(default, str):
        _text(value, where)


def _check_schema(schema: Mapping) -> Schema:
    try:
        parsed = Schema.from_dict(schema)
    except ValueError as err:
        raise _fail("'schema'", f"is malformed ({err})") from err
    if not 1 <= len(parsed.idps) <= MAX_IDPS:
        raise _fail("'schema.idps'", f"names {len(parsed.idps)} IDPs (1 to {MAX_IDPS})")
    names = [parsed.age, *parsed.categorical, *parsed.idps]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise _fail("'schema'", f"names these columns more than once: {repeated[:5]}")
    return parsed


def _check_encoder(encoder: Mapping, schema: Schema) -> dict[str, list[str]]:
    _number(_get(encoder, "age_mean", "encoder"), "encoder.age_mean")
    _number(_get(encoder, "age_sd", "encoder"), "encoder.age_sd", above=0.0)
    levels = _mapping(_get(encoder, "levels", "encoder"), "encoder.levels")
    if list(levels) != list(schema.categorical):
        raise _fail(
            "'encoder.levels'",
            f"are for {list(levels)}, but the model's categorical covariates are "
            f"{list(schema.categorical)}",
        )
    combinations = 1
    for column, names in levels.items():
        names = _list(names, f"encoder.levels.{column}", MAX_LEVELS)
        for name in names:
            _text(name, f"a level of '{column}'")
        if len(set(names)) != len(names):
            repeated = sorted({n for n in names if names.count(n) > 1})
            raise _fail(f"'encoder.levels.{column}'", f"repeat levels {repeated[:5]}")
        combinations *= len(names) + 1
    if combinations > MAX_COMBINATIONS:
        raise _fail(
            "'encoder.levels'",
            f"make {combinations} level combinations (at most {MAX_COMBINATIONS})",
        )
    return {c: list(v) for c, v in levels.items()}


def _check_adaptations(records: list, levels: Mapping[str, list[str]]) -> None:
    for i, record in enumerate(records):
        record = _mapping(record, f"adaptations[{i}]")
        column = _text(_get(record, "column", f"adaptations[{i}]"), f"adaptations[{i}].column")
        if column not in levels:
            raise _fail(f"'adaptations[{i}].column'", f"is '{column}', not a categorical covariate")
        level = _text(_get(record, "level", f"adaptations[{i}]"), f"adaptations[{i}].level")
        if level not in levels[column]:
            raise _fail(f"'adaptations[{i}].level'", f"is '{level}', not a level of '{column}'")
        _number(_get(record, "n_controls", f"adaptations[{i}]"), f"adaptations[{i}].n_controls",
                1, math.inf, integer=True)  # fmt: skip
        if not isinstance(_get(record, "readapted", f"adaptations[{i}]"), bool):
            raise _fail(f"'adaptations[{i}].readapted'", "should be true or false")


def _check_levels_order(levels: Mapping[str, list[str]], records: list) -> None:
    """A fit saves each covariate's levels sorted; adaptation appends new sites in turn.
    Any other order is an edit that moves people to another level's tables."""
    for column, names in levels.items():
        appended = [r["level"] for r in records if r["column"] == column and not r["readapted"]]
        fitted = names[: len(names) - len(appended)]
        if names[len(fitted) :] != appended or fitted != sorted(fitted):
            raise _fail(
                f"'encoder.levels.{column}'",
                "are not in the order a fit saves them (sorted, then adapted sites in turn): "
                "levels were swapped or reordered",
            )


def _check_training(training: Mapping, schema: Schema, levels: Mapping[str, list[str]]) -> None:
    _number(_get(training, "n", "training"), "training.n", 1, math.inf, integer=True)
    lo, hi = _age_range(_get(training, "age_range", "training"), "training.age_range")
    idps = _list(_get(training, "idps", "training"), "training.idps", MAX_IDPS)
    if idps != list(schema.idps):
        raise _fail("'training.idps'", "differ from the model's IDPs")
    if "table_sha256" in training:
        _text(training["table_sha256"], "training.table_sha256")
    counts = _mapping(training.get("level_counts", {}), "training.level_counts")
    ranges = _mapping(training.get("level_age_ranges", {}), "training.level_age_ranges")
    for column, per_level in counts.items():
        where = f"training.level_counts.{column}"
        if column not in levels:
            raise _fail(f"'{where}'", "is not a categorical covariate of the model")
        for level, n in _mapping(per_level, where).items():
            if level not in levels[column]:
                raise _fail(f"'{where}'", f"counts a level the model does not have: '{level}'")
            _number(n, f"{where}.{level}", 0, math.inf, integer=True)
    for column, per_level in ranges.items():
        where = f"training.level_age_ranges.{column}"
        if column not in levels:
            raise _fail(f"'{where}'", "is not a categorical covariate of the model")
        for level, age_range in _mapping(per_level, where).items():
            a, b = _age_range(age_range, f"{where}.{level}")
            if a < lo or b > hi:
                raise _fail(
                    f"'{where}.{level}'",
                    f"({a:g}-{b:g}) lies outside the training ages ({lo:g}-{hi:g})",
                )


def _age_range(value: Any, where: str) -> tuple[float, float]:
    pair = _list(value, where)
    if len(pair) != 2:
        raise _fail(f"'{where}'", "should hold the youngest and the oldest age")
    lo, hi = (_number(a, where, -200.0, 1000.0) for a in pair)
    if lo > hi:
        raise _fail(f"'{where}'", f"runs backwards ({lo:g} to {hi:g})")
    return lo, hi


def check_tensors(tensors: Mapping[str, np.ndarray], n_levels: Sequence[int]) -> None:
    """No NaN in any tensor, no infinity but in effective sample sizes (infinite where
    margins are exact), and a reference table that unpacks within MAX_REFERENCE_CELLS."""
    for name, tensor in tensors.items():
        if not np.issubdtype(tensor.dtype, np.floating):
            continue
        if np.isnan(tensor).any():
            raise _fail(f"tensor '{name}'", "holds NaN values")
        if name != "reference.n_eff" and np.isinf(tensor).any():
            raise _fail(f"tensor '{name}'", "holds infinite values")
    quantiles = tensors.get("reference.quantiles")
    if quantiles is None or quantiles.ndim != 4:
        raise _fail("tensor 'reference.quantiles'", "is missing or is not 4-dimensional")
    combinations = int(np.prod(n_levels)) if len(n_levels) else 1
    cells = combinations * math.prod(quantiles.shape[1:])
    if cells > MAX_REFERENCE_CELLS:
        raise _fail(
            "the reference table",
            f"would unpack to {cells:,} cells (at most {MAX_REFERENCE_CELLS:,})",
        )
    from_prior = tensors.get("reference.from_prior")
    if from_prior is not None and from_prior.shape != (combinations,):
        raise _fail(
            "tensor 'reference.from_prior'",
            f"marks {from_prior.size} level combinations, not {combinations}",
        )
    if PRIOR_TENSOR in tensors:
        _check_prior(tensors[PRIOR_TENSOR], tensors.get(PRIOR_AGES_TENSOR))


def _check_prior(cov: np.ndarray, ages: np.ndarray | None) -> None:
    """Covariances of normal scores at increasing anchor ages: square, symmetric, positive
    definite, and no variance above MAX_PRIOR_VARIANCE (the first stage's scores have
    variance near 1)."""
    where = f"tensor '{PRIOR_TENSOR}'"
    if cov.ndim != 3 or cov.shape[1] != cov.shape[2]:
        raise _fail(where, f"is {cov.shape}, not a stack of square matrices")
    if ages is None or ages.shape != (cov.shape[0],):
        raise _fail(f"tensor '{PRIOR_AGES_TENSOR}'", "does not give one age per covariance")
    _increasing(ages, PRIOR_AGES_TENSOR, strict=True)
    a = cov.astype(np.float64)
    if not np.allclose(a, np.swapaxes(a, 1, 2), rtol=1e-5, atol=1e-6):
        raise _fail(where, "is not symmetric")
    if np.linalg.eigvalsh(a).min() <= 0:
        raise _fail(where, "is not positive definite")
    if np.diagonal(a, axis1=1, axis2=2).max() > MAX_PRIOR_VARIANCE:
        raise _fail(where, f"has variances above {MAX_PRIOR_VARIANCE} (scores have about 1)")


def check_network_tensors(
    expected: Mapping[str, torch.Tensor], stored: Mapping[str, np.ndarray]
) -> None:
    """The stored weights are exactly the weights of the network the header describes
    (`expected`: that network built without memory, on torch's meta device)."""
    missing = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    wrong = [
        k for k in expected if k in stored and tuple(stored[k].shape) != tuple(expected[k].shape)
    ]
    if missing or extra or wrong:
        parts = [f"{len(missing)} missing ({missing[:3]})"] if missing else []
        parts += [f"{len(extra)} unexpected ({extra[:3]})"] if extra else []
        parts += [
            f"'{k}' is {tuple(stored[k].shape)}, its network needs {tuple(expected[k].shape)}"
            for k in wrong[:3]
        ]
        raise _fail("the network's weights", "do not match its settings: " + "; ".join(parts))


def _check_site_shifts(value: Any, schema: Schema, levels: Mapping) -> None:
    """The deviation's site shifts: a categorical column, and a bounded shift for at most
    each of its levels."""
    sites = _mapping(value, "deviation_site_shifts")
    column = _number(
        _get(sites, "column", "deviation_site_shifts"), "deviation_site_shifts.column",
        lo=0, hi=len(schema.categorical) - 1, integer=True,
    )  # fmt: skip
    size = len(levels[schema.categorical[int(column)]])
    where = "deviation_site_shifts.shifts"
    for shift in _list(_get(sites, "shifts", "deviation_site_shifts"), where, size):
        _number(shift, where, lo=-MAX_CALIBRATION, hi=MAX_CALIBRATION)


# ------------------------------------------------------------------- after parsing
def _check_site_term(spread: NewPersonSpread, encoder: CovariateEncoder) -> None:
    """The new-person spread's site term within what a fit measures, and its training
    counts one whole number per level of each categorical column."""
    if spread.site_term == 0.0:
        return
    _number(spread.site_term, "predictive.site_term", above=0.0, hi=MAX_SITE_TERM)
    sizes = [len(v) for v in encoder.levels.values()]
    counted = [len(c) for c in spread.level_counts]
    # levels added by adaptation come after the training ones and have no count
    if len(counted) != len(sizes) or any(c > s for c, s in zip(counted, sizes, strict=True)):
        raise _fail("'predictive.level_counts'", "disagree with the covariates' levels")
    if any(n < 0 for counts in spread.level_counts for n in counts):
        raise _fail("'predictive.level_counts'", "hold a negative count of people")


def check_parts(
    schema: Schema,
    encoder: CovariateEncoder,
    first_stage: FirstStage,
    reference: ReferenceTable,
    spread: NewPersonSpread,
    training: Mapping,
    moment_offset: np.ndarray,
) -> None:
    """The meaning of the numbers the model maps people with: finite, positive scales,
    increasing quantiles and ages, every table sized by the IDPs and levels."""
    d = len(schema.idps)
    transform = first_stage.transform_
    for name, array in (("transform.loc", transform.loc), ("transform.scale", transform.scale)):
        if array.shape != (d,):
            raise _fail(f"'{name}'", f"has {array.size} values for {d} IDPs")
        _finite(array, name)
    if (transform.scale <= 0).any():
        raise _fail("'transform.scale'", "has scales that are not positive")
    ls = first_stage.location_scale_
    if ls.n_levels != [len(v) for v in encoder.levels.values()]:
        raise _fail("'location_scale.n_levels'", "disagree with the covariates' levels")
    _increasing(ls.knots, "location_scale.knots", strict=True)
    rows = 1 + len(ls.knots) + 2 + sum(ls.n_levels)
    for name, coef in (("mean_coef", ls.mean_coef), ("scale_coef", ls.scale_coef)):
        if coef.shape != (rows, d):
            raise _fail(f"'location_scale.{name}'", f"is {coef.shape}, not ({rows}, {d})")
        _finite(coef, f"location_scale.{name}")
    shape = first_stage.shape_
    if shape.ages.ndim != 1 or len(shape.ages) < 2:
        raise _fail("'shape.ages'", "should list at least two ages")
    _increasing(shape.ages, "shape.ages", strict=True)
    if shape.quantiles.shape != (len(shape.ages), len(shape.Z_LEVELS), d):
        raise _fail(
            "'shape.quantiles'",
            f"is {shape.quantiles.shape}, not ({len(shape.ages)}, {len(shape.Z_LEVELS)}, {d})",
        )
    _finite(shape.quantiles, "shape.quantiles")
    _increasing(shape.quantiles, "shape.quantiles", axis=1)
    _number(spread.scale, "predictive.scale", above=0.0)
    if spread.dof is not None:
        _number(spread.dof, "predictive.dof", above=0.0)
    _check_site_term(spread, encoder)
    if moment_offset.shape != (d,):
        raise _fail("'moment_map_offset'", f"has {moment_offset.size} values for {d} IDPs")
    _finite(moment_offset, "moment_map_offset")
    _check_reference(reference, encoder, d, training)


def _check_reference(
    ref: ReferenceTable, encoder: CovariateEncoder, d: int, training: Mapping
) -> None:
    combinations = int(np.prod(encoder.n_levels)) if encoder.n_levels else 1
    if (
        ref.quantiles.ndim != 4
        or ref.quantiles.shape[0] != combinations
        or ref.quantiles.shape[3] != d
    ):
        raise _fail(
            "the reference table",
            f"has shape {ref.quantiles.shape}, but the model has {combinations} level "
            f"combinations and {d} IDPs",
        )
    tabled = ~ref.mixed_combinations()  # a mixture has no table of its own (NaN)
    _finite(ref.quantiles[tabled], "reference.quantiles")
    _increasing(ref.quantiles[tabled], "reference.quantiles", axis=2)
    _finite(ref.ages, "reference.ages")
    _increasing(ref.ages, "reference.ages", strict=True)
    if (
        ref.n_eff.shape != ref.quantiles.shape[:2]
        or np.isnan(ref.n_eff[tabled]).any()
        or (ref.n_eff[tabled] <= 0).any()
    ):
        raise _fail(
            "'reference.n_eff'",
            "are not positive effective sample sizes for each combination and age",
        )
    if ref.precision.shape[-2:] != (d, d):
        raise _fail("'reference.precision'", f"is {ref.precision.shape}, not ({d}, {d}) per age")
    _finite(ref.precision, "reference.precision")
    if len(ref.mahalanobis) != combinations:
        raise _fail(
            "'reference.mahalanobis'",
            f"does not hold one entry per level combination ({combinations})",
        )
    _finite(ref.mahalanobis, "reference.mahalanobis")
    if (ref.mahalanobis < 0).any():
        raise _fail("'reference.mahalanobis'", "holds negative squared distances")
    _increasing(ref.mahalanobis, "reference.mahalanobis", axis=-1)
    if (offset_reach(ref.draw_offsets) > MAX_DRAW_OFFSET + 1e-6).any():
        raise _fail(
            "'reference.draw_offsets'",
            f"move the model's draws by more than {MAX_DRAW_OFFSET:g} standard deviations",
        )
    lo, hi = (float(a) for a in training["age_range"])
    grid = [ref.ages[0], ref.ages[-1], ref.bandwidth]
    if hi > lo and not np.allclose(grid, [lo, hi, BANDWIDTH * (hi - lo)], rtol=1e-9, atol=1e-9):
        raise _fail(
            "'training.age_range'",
            f"({lo:g}-{hi:g}) differs from the ages the reference table was built over "
            f"({ref.ages[0]:g}-{ref.ages[-1]:g})",
        )


def _increasing(array: np.ndarray, where: str, axis: int = 0, strict: bool = False) -> None:
    steps = np.diff(array, axis=axis)
    if (steps <= 0).any() if strict else (steps < 0).any():
        order = "strictly increasing" if strict else "increasing"
        raise _fail(f"'{where}'", f"should be {order} but are not")
