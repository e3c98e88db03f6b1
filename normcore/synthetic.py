"""A synthetic normative-modelling benchmark whose truth is known exactly.

Real brain-imaging data never tells us the true centile of a person, so a model's centiles
can only be judged against a simulation. This one is built to be hard in the ways real IDPs
are hard -- non-linear age curves, spread that changes with age, a second mode that appears
with age (a sub-group, e.g. atrophy), sex and site offsets, correlated noise, and IDPs on
very different scales (cortical thickness around 2.5 mm next to volumes in the thousands)
-- while every conditional marginal CDF stays available in closed form.

Generative model, for IDP j and a person with age a, sex and site:

    t      = (a - mid) / half_width                (age rescaled to [-1, 1] on age_range)
    y_j    = loc_j + scale_j * (mu_j(t) + sex_j [M] + site_jk + sigma_j(t) * e_j)
    mu_j   = c1 t + c2 t^2 + c3 tanh((t - c0) / 0.25) + c4 sin(pi (f t + phase))
    sigma_j= exp(heteroscedasticity * b_j * t)
    e_j    = s_j * E,  E ~ (1 - w) N(0, 1) + w N(d, 1) standardised to mean 0, variance 1,
             w = w_j(t) = wmax * m_j * expit(3 (t - t0_j))  (the second mode grows with age)
             wmax = 0.5 m / (1 + m), d = 3 + 1.5 min(m, 2) for m = multimodality

The noise is coupled across IDPs with a Gaussian copula: g ~ N(0, R) and
e_j = F_j^{-1}(Phi(g_j)), where R = correlation * (global factor + regional-block factor)
with a unit diagonal. Hence P(y_j <= v | covariates) = F_j((v - location) / spread) exactly.

Curve parameters come from `spec.seed` alone (one random stream per IDP, so IDP j is the
same whatever `n_idps` is); the people drawn by `simulate` come from its own `seed`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.special import expit, ndtr, ndtri

#: IDPs are grouped into consecutive "regions" of this size that share a noise factor.
_REGION_SIZE = 6
#: Elements (rows x IDPs) handled per chunk: small enough for temporaries to stay in cache.
_BLOCK = 1 << 14
#: Start table of the quantile solver: probit levels z and number of mode weights w.
_TABLE_Z = np.linspace(-9.0, 9.0, 721)
_TABLE_W = 65
_SQRT_2PI = math.sqrt(2.0 * math.pi)

# Kinds of IDP, as (location, scale) in natural units: thickness in mm, a volume in mm^3,
# a large volume in mm^3, a surface area in mm^2. They make scaling mistakes visible.
_KINDS = ((2.5, 0.15), (5000.0, 600.0), (200_000.0, 20_000.0), (1500.0, 200.0))


@dataclass(frozen=True)
class SyntheticSpec:
    """What to simulate; validated on construction so a bad value fails where it is set."""

    n_idps: int = 4
    heteroscedasticity: float = 1.0
    multimodality: float = 0.5
    correlation: float = 0.5
    n_sites: int = 3
    site_effect: float = 0.3
    age_range: tuple[float, float] = (20.0, 80.0)
    seed: int = 0

    def __post_init__(self) -> None:
        def is_int(value: object) -> bool:
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

        if not is_int(self.n_idps) or self.n_idps < 1:
            raise ValueError(f"n_idps must be a whole number >= 1, got {self.n_idps!r}")
        if not is_int(self.n_sites) or self.n_sites < 1:
            raise ValueError(f"n_sites must be a whole number >= 1, got {self.n_sites!r}")
        if not is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a whole number >= 0, got {self.seed!r}")
        for name in ("heteroscedasticity", "multimodality", "site_effect"):
            value = getattr(self, name)
            if not (
                isinstance(value, (int, float, np.number)) and math.isfinite(value) and value >= 0
            ):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        c = self.correlation
        if not (isinstance(c, (int, float, np.number)) and 0.0 <= c < 1.0):
            raise ValueError(f"correlation must be in [0, 1) (0 = independent noise), got {c!r}")
        try:
            lo, hi = (float(v) for v in self.age_range)
        except (TypeError, ValueError):
            raise ValueError(
                f"age_range must be two numbers (youngest, oldest), got {self.age_range!r}"
            ) from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(
                f"age_range must be finite with youngest < oldest, got {self.age_range!r}"
            )
        object.__setattr__(self, "age_range", (lo, hi))


@dataclass(frozen=True)
class _Params:
    """Per-IDP curve parameters (arrays of length D; site offsets are D x n_sites)."""

    loc: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (D, 7): c1, c2, c3, c0, c4, f, phase
    slope: np.ndarray  # b_j of the log-spread
    sex: np.ndarray
    mode_mult: np.ndarray
    mode_centre: np.ndarray
    mode_sign: np.ndarray
    global_loading: np.ndarray
    site: np.ndarray


def idp_names(spec: SyntheticSpec) -> list[str]:
    """Column names idp_000, idp_001, ... zero-padded so that sorting keeps IDP order."""
    width = max(3, len(str(spec.n_idps - 1)))
    return [f"idp_{j:0{width}d}" for j in range(spec.n_idps)]


def _params(spec: SyntheticSpec) -> _Params:
    """Draw each IDP's parameters from its own stream so IDP j never depends on n_idps."""
    rows = []
    for j in range(spec.n_idps):
        rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0, j]))
        loc, scale = _KINDS[int(rng.integers(len(_KINDS)))]
        loc *= float(rng.uniform(0.8, 1.2))
        scale *= float(rng.uniform(0.8, 1.2))
        coef = [
            rng.uniform(-1.2, 0.4),  # linear: mostly decline with age
            rng.normal(0.0, 0.5),  # quadratic
            rng.normal(0.0, 0.4),  # logistic step ...
            rng.uniform(-0.5, 0.5),  # ... at this (rescaled) age
            rng.uniform(0.1, 0.35) * rng.choice([-1.0, 1.0]),  # sinusoid amplitude
            rng.uniform(0.5, 1.5),  # sinusoid frequency
            rng.uniform(0.0, 2.0),  # sinusoid phase
        ]
        slope = rng.uniform(0.3, 0.7) * (1.0 if rng.random() < 0.75 else -1.0)
        rows.append(
            dict(
                loc=loc,
                scale=scale,
                coef=coef,
                slope=slope,
                sex=rng.normal(0.0, 0.6),
                mode_mult=rng.uniform(0.7, 1.0),
                mode_centre=rng.uniform(-0.3, 0.3),
                mode_sign=rng.choice([-1.0, 1.0]),
                global_loading=math.sqrt(rng.uniform(0.2, 0.6)),
                # last, so that adding sites leaves the earlier draws unchanged
                site=rng.normal(0.0, 1.0, size=spec.n_sites) * spec.site_effect,
            )
        )
    return _Params(**{k: np.array([r[k] for r in rows], dtype=float) for k in rows[0]})


def _separation(spec: SyntheticSpec) -> float:
    """Distance of the second mode, in component sds; past ~2 the mixture is bimodal."""
    return 3.0 + 1.5 * min(spec.multimodality, 2.0)


def _region(spec: SyntheticSpec) -> np.ndarray:
    return np.arange(spec.n_idps) // _REGION_SIZE


def true_correlation(spec: SyntheticSpec) -> np.ndarray:
    """Correlation matrix R of the Gaussian copula (D x D, unit diagonal, positive definite).

    Every IDP loads on one global factor (a) and on its region's factor (sqrt(1 - a^2)), so
    R_ij = correlation * (a_i a_j + b_i b_j [same region]) for i != j; the remaining
    1 - correlation of each IDP's variance is its own noise, which keeps R positive definite.
    """
    truth = _Truth(spec)
    a = truth.params.global_loading
    b = np.sqrt(1.0 - a**2)
    region = _region(spec)
    same = region[:, None] == region[None, :]
    r = spec.correlation * (np.outer(a, a) + np.outer(b, b) * same)
    np.fill_diagonal(r, 1.0)
    return r


def _covariates(spec: SyntheticSpec, df: pd.DataFrame) -> tuple[np.ndarray, ...]:
    """Rescaled age t, male indicator and site index; unknown levels raise ValueError."""
    missing = [c for c in ("age", "sex", "site") if c not in df.columns]
    if missing:
        raise ValueError(f"covariate table lacks column(s) {missing}; need age, sex, site")
    age = pd.to_numeric(df["age"], errors="coerce").to_numpy(dtype=float)
    if not np.all(np.isfinite(age)):
        raise ValueError("column 'age' must hold finite numbers in every row")
    sex = df["sex"].astype(str).str.strip()
    bad_sex = sorted(set(sex) - {"F", "M"})
    if bad_sex:
        raise ValueError(f"column 'sex' must be 'F' or 'M'; found {bad_sex[:5]}")
    levels = {f"S{k}": k for k in range(spec.n_sites)}
    site = df["site"].astype(str).str.strip()
    bad_site = sorted(set(site) - set(levels))
    if bad_site:
        raise ValueError(
            f"column 'site' has level(s) {bad_site[:5]} unknown to this spec "
            f"(S0..S{spec.n_sites - 1})"
        )
    lo, hi = spec.age_range
    t = (age - 0.5 * (lo + hi)) / (0.5 * (hi - lo))
    return t, (sex == "M").to_numpy(), site.map(levels).to_numpy(dtype=int)


def _moments(w: np.ndarray, d: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of the raw mixture (1 - w) N(0, 1) + w N(d, 1)."""
    return w * d, np.sqrt(1.0 + w * (1.0 - w) * d * d)


def _tail(x: np.ndarray, w: np.ndarray, d: float, side: np.ndarray | float) -> np.ndarray:
    """Raw-mixture P(X <= x) where side is +1, P(X > x) where side is -1.

    Taking the small tail directly keeps full relative precision far from the median.
    """
    return (1.0 - w) * ndtr(side * x) + w * ndtr(side * (x - d))


def _start_table(w_max: float, d: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact raw quantiles on a grid of mode weights [0, w_max] x probit levels _TABLE_Z.

    Interpolated, it starts the solver within ~1e-3 of the root, so that one or two Halley
    steps finish the job and 100,000 x 200 draws take seconds.
    """
    grid_w = np.linspace(0.0, w_max, _TABLE_W)
    ww, zz = np.meshgrid(grid_w, _TABLE_Z, indexing="ij")
    mean, sd = _moments(ww, d)
    table = _polish(zz.ravel(), ww.ravel(), d, (mean + sd * zz).ravel())
    return grid_w, table


def _interpolate(grid_w: np.ndarray, table: np.ndarray, z: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Bilinear look-up of raw quantiles tabulated on grid_w x _TABLE_Z."""
    n_z = _TABLE_Z.size
    fz = (np.clip(z, _TABLE_Z[0], _TABLE_Z[-1]) - _TABLE_Z[0]) / (_TABLE_Z[1] - _TABLE_Z[0])
    iz = np.minimum(fz.astype(np.intp), n_z - 2)
    tz = fz - iz
    fw = w / grid_w[1]
    iw = np.minimum(fw.astype(np.intp), grid_w.size - 2)
    tw = fw - iw
    k = iw * n_z + iz
    low = (1.0 - tz) * table[k] + tz * table[k + 1]
    high = (1.0 - tz) * table[k + n_z] + tz * table[k + n_z + 1]
    return (1.0 - tw) * low + tw * high


def _polish(z: np.ndarray, w: np.ndarray, d: float, x: np.ndarray) -> np.ndarray:
    """Raw-mixture quantile at Phi(z) by safeguarded Halley iteration from the guess x.

    The root lies in [z, z + d] because the mixture CDF is between Phi(x - d) and Phi(x);
    the bracket shrinks with every evaluation and a step that leaves it is replaced by
    bisection, so convergence is guaranteed even from a poor start.
    """
    lo, hi = z.copy(), z + d
    x = np.clip(x, lo, hi)
    side = np.where(z < 0, 1.0, -1.0)
    target = ndtr(-np.abs(z))
    active = np.arange(z.size)
    for _ in range(100):
        xa, wa, sa = x[active], w[active], side[active]
        la, ha = lo[active], hi[active]
        resid = sa * (_tail(xa, wa, d, sa) - target[active])  # CDF(x) - p, stably
        p1 = (1.0 - wa) * np.exp(-0.5 * xa * xa)
        p2 = wa * np.exp(-0.5 * (xa - d) ** 2)
        pdf = (p1 + p2) / _SQRT_2PI
        slope = -(xa * p1 + (xa - d) * p2) / _SQRT_2PI  # derivative of the pdf
        too_high = resid > 0
        np.copyto(ha, xa, where=too_high)
        np.copyto(la, xa, where=~too_high)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = resid / pdf
            step = step / (1.0 - 0.5 * step * slope / pdf)
        new = xa - step
        outside = ~((new >= la) & (new <= ha))  # also catches nan from a vanishing pdf
        new = np.where(outside, 0.5 * (la + ha), new)
        x[active], lo[active], hi[active] = new, la, ha
        scale = 1.0 + np.abs(xa)
        done = (np.abs(new - xa) <= 1e-12 * scale) | (ha - la <= 1e-12 * scale)
        active = active[~done]
        if active.size == 0:
            break
    return x


class _Truth:
    """A spec's per-IDP parameters and its solver table, built once per public call."""

    def __init__(self, spec: SyntheticSpec) -> None:
        self.spec = spec
        self.params = _params(spec)
        self.d = _separation(spec)
        m = spec.multimodality
        self.w_max = 0.5 * m / (1.0 + m)  # bounds every weight (mode_mult, expit <= 1)
        self.table = _start_table(self.w_max, self.d) if self.w_max > 0 else None

    def conditionals(
        self, t: np.ndarray, male: np.ndarray, site: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Location, spread and second-mode weight of every IDP (rows x D each)."""
        p, tt = self.params, t[:, None]
        c1, c2, c3, c0, c4, f, phase = p.coef.T
        mu = (
            c1 * tt
            + c2 * tt**2
            + c3 * np.tanh((tt - c0) / 0.25)
            + c4 * np.sin(np.pi * (f * tt + phase))
        )
        mu += male[:, None] * p.sex + p.site.T[site]
        location = p.loc + p.scale * mu
        spread = p.scale * np.exp(self.spec.heteroscedasticity * p.slope * tt)
        weight = self.w_max * p.mode_mult * expit(3.0 * (tt - p.mode_centre))
        return location, spread, weight

    def noise_quantile(self, z: np.ndarray, weight: np.ndarray, sign: np.ndarray) -> np.ndarray:
        """Quantile of e_j = s_j E at probability Phi(z), i.e. s_j Q_E(s_j z) by symmetry."""
        if self.table is None:  # no second mode: E is standard normal
            return np.array(z, dtype=float)
        sz = sign * z
        w = np.broadcast_to(weight, sz.shape).ravel()
        x = _polish(sz.ravel(), w, self.d, _interpolate(*self.table, sz.ravel(), w))
        mean, sd = _moments(w, self.d)
        return sign * ((x - mean) / sd).reshape(sz.shape)

    def cdf(self, e: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """P(e_j <= e) for standardised noise values e (rows x D)."""
        sign = self.params.mode_sign
        mean, sd = _moments(weight, self.d)
        # s_j = -1: P(-E <= e) = P(E > -e), the upper tail, taken directly for precision
        return _tail(mean + sd * sign * e, weight, self.d, sign)


def _row_chunks(n: int, width: int) -> list[slice]:
    """Row slices of about _BLOCK elements, so that temporaries stay in cache."""
    step = max(1, _BLOCK // max(1, width))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def simulate(spec: SyntheticSpec, n: int, seed: int) -> pd.DataFrame:
    """Draw n people: subject_id, age, sex, site and one column per IDP.

    The same (spec, n, seed) always gives the same table; another `seed` gives other people
    from the same population (the curves depend on `spec.seed` only).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a whole number >= 1, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    lo, hi = spec.age_range
    age = rng.uniform(lo, hi, size=n)
    male = rng.random(n) < 0.5
    site = rng.integers(0, spec.n_sites, size=n)
    # Copula draw g ~ N(0, R) through its factor structure (see true_correlation): cheap
    # for any D, where a Cholesky of R would cost D^3 and n x D^2.
    truth = _Truth(spec)
    a = truth.params.global_loading
    b = np.sqrt(1.0 - a**2)
    region = _region(spec)
    c = spec.correlation
    g_global = rng.standard_normal((n, 1))
    g_region = rng.standard_normal((n, int(region[-1]) + 1))
    g = math.sqrt(c) * (a * g_global + b * g_region[:, region])
    g += math.sqrt(1.0 - c) * rng.standard_normal((n, spec.n_idps))

    t = (age - 0.5 * (lo + hi)) / (0.5 * (hi - lo))
    y = g  # g becomes y in place, chunk by chunk (each chunk reads its g before writing)
    for rows in _row_chunks(n, spec.n_idps):
        location, spread, weight = truth.conditionals(t[rows], male[rows], site[rows])
        e = truth.noise_quantile(g[rows], weight, truth.params.mode_sign)
        y[rows] = location + spread * e

    width = len(str(n - 1))
    table = {
        "subject_id": [f"sub-{i:0{width}d}" for i in range(n)],
        "age": age,
        "sex": np.where(male, "M", "F"),
        "site": np.array([f"S{k}" for k in range(spec.n_sites)])[site],
    }
    out = pd.DataFrame(table)
    return pd.concat([out, pd.DataFrame(y, columns=idp_names(spec))], axis=1)


def true_cdf(spec: SyntheticSpec, df: pd.DataFrame) -> np.ndarray:
    """Exact P(Y_j <= y_ij | age_i, sex_i, site_i) for every row i and IDP j, shape (n, D).

    This is the true centile / 100 of each observed value at the person's own covariates.
    """
    names = idp_names(spec)
    missing = [c for c in names if c not in df.columns]
    if missing:
        raise ValueError(f"table lacks IDP column(s) {missing[:5]} of this spec")
    values = df[names].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    if not np.all(np.isfinite(values)):
        raise ValueError("IDP columns must hold finite numbers in every row")
    t, male, site = _covariates(spec, df)
    truth = _Truth(spec)
    out = np.empty_like(values)
    for rows in _row_chunks(len(values), spec.n_idps):
        location, spread, weight = truth.conditionals(t[rows], male[rows], site[rows])
        out[rows] = truth.cdf((values[rows] - location) / spread, weight)
    return out


def true_quantiles(
    spec: SyntheticSpec, covariates: pd.DataFrame, quantiles: ArrayLike
) -> np.ndarray:
    """Exact conditional quantiles, shape (n rows, D IDPs, Q quantiles).

    `quantiles` are probabilities strictly between 0 and 1 (0.5 is the median).
    """
    q = np.atleast_1d(np.asarray(quantiles, dtype=float))
    if q.ndim != 1 or q.size == 0 or not np.all((q > 0) & (q < 1)):
        raise ValueError(f"quantiles must be probabilities strictly in (0, 1), got {quantiles!r}")
    t, male, site = _covariates(spec, covariates)
    truth = _Truth(spec)
    z, sign = ndtri(q), truth.params.mode_sign[:, None]
    out = np.empty((len(t), spec.n_idps, q.size))
    for rows in _row_chunks(len(t), spec.n_idps * q.size):
        location, spread, weight = truth.conditionals(t[rows], male[rows], site[rows])
        zz = np.broadcast_to(z, weight.shape + q.shape)
        e = truth.noise_quantile(zz, weight[..., None], sign)
        out[rows] = location[..., None] + spread[..., None] * e
    return out
