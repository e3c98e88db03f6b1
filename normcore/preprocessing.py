"""The first stage's steps: fitted, invertible maps from raw values to normal scores.

Everything here is learned from the training table once and saved as plain numbers in
the bundle, so a loaded model maps new people exactly as the fitted one did.
`normcore.first_stage.FirstStage` chains the three IDP steps:

* `IDPTransform`: raw values -> standardised values, per IDP.
* `LocationScale`: standardised values -> residuals, with a smooth mean and spread in age
  plus site and sex effects removed; penalised splines whose smoothness is chosen per
  IDP by generalised cross-validation.
* `AgeShape`: residuals -> normal scores through their quantile function at the person's
  age, so the denoiser sees near-normal margins whatever the shape.
* `CovariateEncoder`: age standardised; each categorical covariate mapped to integer
  codes 1..K with 0 reserved for "unknown" (unseen site, missing sex). The network learns
  the unknown level through covariate dropout during training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import ndtr

from normcore.numeric import kish_effective_size, values_of_z, weighted_quantiles, z_of_values
from normcore.schema import Schema, coerce_categories

UNKNOWN = "<unknown>"


def _bsplines(t: np.ndarray, x: np.ndarray, degree: int) -> np.ndarray:
    """Every B-spline of `degree` on the knot vector `t` at `x` (len(x), len(t) - degree - 1),
    by the Cox-de Boor recursion (de Boor, "A Practical Guide to Splines", 2001, ch. IX).

    `x` must lie within [t[degree], t[-degree - 1]]; a point on a knot is evaluated on the
    span to its right, and the last end point on the span to its left, as scipy's
    `BSpline` does."""
    n_basis = len(t) - degree - 1
    span = np.clip(np.searchsorted(t, x, side="right") - 1, degree, n_basis - 1)
    values = np.zeros((len(x), degree + 1))
    values[:, 0] = 1.0
    left = x[:, None] - t[span[:, None] + 1 - np.arange(1, degree + 1)]
    right = t[span[:, None] + np.arange(1, degree + 1)] - x[:, None]
    for j in range(1, degree + 1):
        saved = np.zeros(len(x))
        for r in range(j):
            term = values[:, r] / (right[:, r] + left[:, j - r - 1])
            values[:, r] = saved + right[:, r] * term
            saved = left[:, j - r - 1] * term
        values[:, j] = saved
    basis = np.zeros((len(x), n_basis))
    rows = np.arange(len(x))[:, None]
    basis[rows, span[:, None] - degree + np.arange(degree + 1)] = values
    return basis


def spline_basis(knots: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The cubic B-spline basis over `knots` at `x`: (len(x), len(knots) + 2), continued
    linearly past the end knots.

    As scikit-learn's `SplineTransformer(knots=knots, degree=3, extrapolation="linear")`
    computes it (equal to rounding, tests/unit/test_preprocessing.py): three more knots at
    the end spacings on each side, the cubic B-splines inside, and each end's value plus
    its slope times the distance outside. Written out in numpy because importing
    scikit-learn, or scipy.interpolate, takes longer than scoring a table from a loaded
    model (benchmarks/RESULTS.md, "CLI start-up").
    """
    base = np.asarray(knots, dtype=np.float64).reshape(-1)
    below_step, above_step = base[1] - base[0], base[-1] - base[-2]
    t = np.r_[
        np.linspace(base[0] - 3 * below_step, base[0] - below_step, num=3),
        base,
        np.linspace(base[-1] + above_step, base[-1] + 3 * above_step, num=3),
    ]
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    lo, hi = t[3], t[-4]
    inside = (lo <= x) & (x <= hi)
    basis = np.zeros((len(x), len(base) + 2))
    basis[inside] = _bsplines(t, x[inside], 3)
    ends = np.array([lo, hi])
    value = _bsplines(t, ends, 3)
    # B'_i = 3 (B_i,2 / (t[i+3] - t[i]) - B_i+1,2 / (t[i+4] - t[i+1])), the quadratics on t
    quadratic = _bsplines(t, ends, 2) / (t[3:] - t[:-3])
    slope = 3.0 * (quadratic[:, :-1] - quadratic[:, 1:])
    below, above = x < lo, x > hi
    basis[below] = value[0] + (x[below, None] - lo) * slope[0]
    basis[above] = value[1] + (x[above, None] - hi) * slope[1]
    return basis


@dataclass
class IDPTransform:
    """Per-IDP standardisation, so IDPs in mm and in mm^3 share one numeric footing; an
    IDP positive in every training row may be standardised on the log scale instead.

    Why the log: volumes, thicknesses and areas are positive by nature, and a
    location-scale model in raw units puts its lower centiles below zero wherever the
    spread is wide against the mean (ventricles in old age, issue 18). Modelled as log
    values, every centile maps back through exp and is positive by construction, and a
    spread proportional to the mean (ventricles that vary more as they grow) becomes a
    constant one. Which IDPs go on the log scale is the first stage's choice, by
    held-out likelihood and a positivity check (`first_stage.choose_log_scale`); an IDP
    with a zero or negative training value (a difference, an asymmetry index) stays in
    raw units. No power transform beyond the log: the IDPs' skew is handled later, by
    age, in `AgeShape`, and a Yeo-Johnson step here bends the location-scale structure
    that `LocationScale` fits best (README, "How it works", 1).
    """

    loc: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scale: np.ndarray = field(default_factory=lambda: np.ones(0))
    log: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    """Per IDP: standardised on the log scale (every training value was > 0)."""

    @classmethod
    def fit(cls, values: np.ndarray, log: np.ndarray | None = None) -> IDPTransform:
        """Learn the transform from an (n, D) array of training values. `log` (D,) says
        which IDPs go on the log scale; None puts every IDP positive in every row there.
        Raises ValueError if `log` asks it of an IDP with a value <= 0."""
        values = np.asarray(values, dtype=np.float64)
        positive = np.all(values > 0, axis=0)
        log = positive if log is None else np.asarray(log, dtype=bool)
        if (log & ~positive).any():
            raise ValueError(
                f"IDP columns {np.flatnonzero(log & ~positive).tolist()} hold values <= 0 "
                "and cannot be standardised on the log scale"
            )
        on_scale = np.where(log, np.log(np.where(log, values, 1.0)), values)
        scale = on_scale.std(axis=0)
        return cls(on_scale.mean(axis=0), np.where(scale > 0, scale, 1.0), log)

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Raw values -> standardised values (float64). A value <= 0 of a log-scale IDP is
        below everything the model knows and maps to -inf (its z is clipped at the
        reference's bound), never to NaN."""
        values = np.asarray(values, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            logged = np.log(np.where(values > 0, values, 0.0))
        return (np.where(self.log, logged, values) - self.loc) / self.scale

    def inverse(self, z: np.ndarray) -> np.ndarray:
        """Standardised values -> raw values (float64); positive for log-scale IDPs."""
        on_scale = np.asarray(z, dtype=np.float64) * self.scale + self.loc
        with np.errstate(over="ignore"):
            return np.where(self.log, np.exp(np.where(self.log, on_scale, 0.0)), on_scale)

    @property
    def centre(self) -> np.ndarray:
        """Each IDP's typical training value in raw units (D,): the mean, or for a log-scale
        IDP the geometric mean (`loc` is on the scale the IDP is standardised on)."""
        return self.inverse(np.zeros_like(self.loc))

    def to_dict(self) -> dict:
        return {"loc": self.loc.tolist(), "scale": self.scale.tolist(), "log": self.log.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> IDPTransform:
        """Files written before the log scale hold no `log` key: every IDP in raw units."""
        loc = np.asarray(d["loc"], dtype=np.float64)
        log = np.asarray(d.get("log", np.zeros(len(loc), dtype=bool)), dtype=bool)
        return cls(loc, np.asarray(d["scale"], dtype=np.float64), log)


@dataclass
class CovariateEncoder:
    """Age standardisation and integer codes for categorical covariates (0 = unknown)."""

    age_mean: float = 0.0
    age_sd: float = 1.0
    levels: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def fit(cls, df: pd.DataFrame, schema: Schema) -> CovariateEncoder:
        age = pd.to_numeric(df[schema.age]).to_numpy(dtype=np.float64)
        sd = float(age.std()) or 1.0
        levels = {c: sorted(coerce_categories(df[c]).unique().tolist()) for c in schema.categorical}
        return cls(float(age.mean()), sd, levels)

    @property
    def n_levels(self) -> list[int]:
        """Number of codes per categorical covariate, the unknown code included."""
        return [len(v) + 1 for v in self.levels.values()]

    def encode_age(self, age: np.ndarray) -> np.ndarray:
        return ((np.asarray(age, dtype=np.float64) - self.age_mean) / self.age_sd).astype(
            np.float32
        )

    def encode_categories(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Codes (n, K) and a boolean (n, K) mask of values the model never saw.

        Unseen values (and missing ones) get code 0, the unknown level, so a model still
        answers for a new site; the mask lets the caller say so on every row.
        """
        n = len(df)
        codes = np.zeros((n, len(self.levels)), dtype=np.int64)
        unseen = np.zeros((n, len(self.levels)), dtype=bool)
        for k, (col, lv) in enumerate(self.levels.items()):
            if col not in df.columns:
                unseen[:, k] = True
                continue
            values = coerce_categories(df[col])
            lookup = {v: i + 1 for i, v in enumerate(lv)}
            mapped = values.map(lookup)
            unseen[:, k] = mapped.isna().to_numpy() & (values != UNKNOWN).to_numpy()
            codes[:, k] = mapped.fillna(0).to_numpy(dtype=np.int64)
        return codes, unseen

    def to_dict(self) -> dict:
        return {"age_mean": self.age_mean, "age_sd": self.age_sd, "levels": self.levels}

    @classmethod
    def from_dict(cls, d: dict) -> CovariateEncoder:
        return cls(
            float(d["age_mean"]), float(d["age_sd"]), {k: list(v) for k, v in d["levels"].items()}
        )


@dataclass
class LocationScale:
    """Per-IDP heteroscedastic regression on covariates: standardised values <-> residuals.

    A smooth curve in age (penalised cubic B-splines, Eilers & Marx 1996) plus additive
    effects of each categorical level gives each IDP a conditional mean m(x) and spread
    s(x); the residual (y - m(x)) / s(x) goes on to `AgeShape`, and the denoiser learns
    what is left: remaining covariate effects and the dependence between IDPs. Why: a
    well-regularised regression finds the big age and site effects from few people far
    more reliably than a denoiser trained by SGD (README, "How it works", 1).
    Unknown levels (code 0, or a site added later by adaptation) get no level effect.
    """

    knots: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_levels: list[int] = field(default_factory=list)
    mean_coef: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    scale_coef: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    KNOT_INTERVALS = 16
    """Equal-width age intervals of the spline; the penalty, not the knots, sets smoothness."""
    SMOOTHING = 10.0 ** np.arange(-3.0, 6.01, 0.5)
    """Candidate weights of the second-difference penalty; GCV picks one per IDP and part."""
    _LEVEL_RIDGE = 1.0
    """Ridge on sex and site effects: a weak random-effect prior, so a small site is
    pulled towards the others rather than fitted to its few people."""
    _SPREAD_ITERATIONS = 5

    def _design(self, age_z: np.ndarray, codes: np.ndarray) -> np.ndarray:
        basis = spline_basis(self.knots, age_z)
        cols = [np.ones((len(basis), 1)), basis]
        for k, m in enumerate(self.n_levels):
            onehot = np.zeros((len(basis), m))
            known = (codes[:, k] >= 1) & (codes[:, k] <= m)
            onehot[np.flatnonzero(known), codes[known, k] - 1] = 1.0
            cols.append(onehot)
        return np.hstack(cols)

    def _penalty(self, smoothing: float) -> np.ndarray:
        """Second differences of the spline coefficients (a P-spline: at high weight the
        curve becomes a straight line; beyond the data it is held, `_held_design`), plus
        the ridge on level effects. The tiny ridge on the spline separates it from the
        intercept (B-splines sum to one)."""
        n_basis = len(self.knots) + 2
        size = 1 + n_basis + sum(self.n_levels)
        penalty = np.zeros((size, size))
        diff = np.diff(np.eye(n_basis), 2, axis=0)
        spline = slice(1, 1 + n_basis)
        penalty[spline, spline] = smoothing * diff.T @ diff + 1e-6 * np.eye(n_basis)
        levels = np.arange(1 + n_basis, size)
        penalty[levels, levels] = self._LEVEL_RIDGE
        return penalty

    def _smooth(
        self, x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Penalised (weighted) least squares of each column of y on x, each column with
        the penalty weight in SMOOTHING that minimises its generalised cross-validation
        score n * RSS / (n - edf)^2. `weights` (n, D) are per row and column. Returns the
        coefficients and each column's chosen penalty weight."""
        n, d = y.shape
        coef = np.zeros((x.shape[1], d))
        best = np.full(d, np.inf)
        chosen = np.full(d, self.SMOOTHING[-1])
        columns = [slice(None)] if weights is None else [slice(j, j + 1) for j in range(d)]
        for cols in columns:
            w = np.ones((n, 1)) if weights is None else weights[:, cols]
            xtwx = (x * w).T @ x
            xtwy = (x * w).T @ y[:, cols]
            for smoothing in self.SMOOTHING:
                a = xtwx + self._penalty(smoothing)
                b = np.linalg.solve(a, xtwy)
                edf = float(np.trace(np.linalg.solve(a, xtwx)))
                if n - edf < 1.0:
                    continue
                score = n * (w * (y[:, cols] - x @ b) ** 2).sum(axis=0) / (n - edf) ** 2
                better = np.flatnonzero(score < best[cols])
                coef[:, np.arange(d)[cols][better]] = b[:, better]
                best[np.arange(d)[cols][better]] = score[better]
                chosen[np.arange(d)[cols][better]] = smoothing
        return coef, chosen

    def _log_spread(self, x: np.ndarray, resid: np.ndarray) -> np.ndarray:
        """Coefficients of log s(x), up to a constant: a gamma GLM with log link on
        absolute residuals, fitted by iteratively reweighted least squares (its weights
        are all one), each step smoothed like the mean, then its age curve shrunk where
        few people carry it (`_shrink_age_curve`). Absolute residuals, not squared
        ones: nearly as efficient for Gaussian residuals and far less driven by a heavy
        tail (ventricles), which can make a squared-residual fit diverge (Davidian &
        Carroll 1987, JASA 82:1079); not log residuals, a noisy and biased spread
        estimate. `fit` sets the constant."""
        size = np.abs(resid)
        eta = np.broadcast_to(np.log(size.mean(axis=0) + 1e-12), size.shape)
        for _ in range(self._SPREAD_ITERATIONS):
            coef, smoothing = self._smooth(x, eta + size / np.exp(eta) - 1.0)
            eta = np.clip(x @ coef, -30.0, 30.0)
        # Pearson dispersion of the gamma GLM: the variance of |r| / s(x) - 1, the noise
        # each person's working response carries (about pi / 2 - 1 for normal residuals,
        # more for heavy tails).
        dispersion = ((size / np.exp(eta) - 1.0) ** 2).mean(axis=0)
        return self._shrink_age_curve(x, coef, smoothing, dispersion)

    def _shrink_age_curve(
        self, x: np.ndarray, coef: np.ndarray, smoothing: np.ndarray, dispersion: np.ndarray
    ) -> np.ndarray:
        """The log-spread's age curve with its departures from the people's mean shrunk
        by their noise, so that the spread does not collapse (or balloon) where data thin.

        Why: near the oldest and youngest training ages a handful of people carry the
        curve, and a P-spline lets its end run along whatever trend they happen to show: a
        few people with a small spread make the bands there collapse, and such bands call
        a typical person extreme (issue 18; benchmarks/RESULTS.md, "Edges of the age
        range").
        Empirical Bayes, as the reference table shrinks its quantiles
        (`reference.shrink_towards`; Efron & Morris 1975, JASA 70:311), per IDP: the
        curve's departure d(a) from its mean over people has variance v(a) = phi
        (c_a - c_mean)' (X'X + P)^-1 (c_a - c_mean) (the penalised fit's Bayesian
        covariance, Wahba 1983, JRSS B 45:133, with the GLM's dispersion phi; c_a is the
        spline basis at age a); the spread tau^2 of true departures is the people's mean
        of d^2 less theirs of v; each d(a) is scaled by tau^2 / (tau^2 + v(a)). Where
        many people carry the curve, v is small and it is kept; where few do it falls
        back towards the IDP's overall spread, as far as its own noise says. The shrunk
        curve, sampled on a fine age grid, is refitted in the same basis.
        """
        spline = slice(1, len(self.knots) + 3)
        basis = x[:, spline]
        centre = basis.mean(axis=0)
        fine = np.linspace(self.knots[0], self.knots[-1], 8 * len(self.knots))
        fine_basis = self._design(fine, np.zeros((len(fine), len(self.n_levels)), int))[:, spline]
        xtx = x.T @ x
        out = coef.copy()
        for j in range(coef.shape[1]):
            cov = dispersion[j] * np.linalg.inv(xtx + self._penalty(smoothing[j]))[spline, spline]
            people = basis @ coef[spline, j]
            mean = people.mean()
            people_var = np.einsum("ij,jk,ik->i", basis - centre, cov, basis - centre)
            tau2 = max(float(((people - mean) ** 2).mean() - people_var.mean()), 0.0)
            fine_var = np.einsum("ij,jk,ik->i", fine_basis - centre, cov, fine_basis - centre)
            keep = tau2 / np.maximum(tau2 + fine_var, 1e-300)
            target = mean + keep * (fine_basis @ coef[spline, j] - mean)
            out[spline, j] = np.linalg.lstsq(fine_basis, target, rcond=None)[0]
        return out

    @classmethod
    def fit(
        cls, y: np.ndarray, age_z: np.ndarray, codes: np.ndarray, n_levels: list[int]
    ) -> LocationScale:
        """Learn m(x) and s(x) from standardised IDPs y (n, D).

        The mean is refitted by weighted least squares once the spread is known (people
        at ages of wide spread say less about the mean), and the spread once more from
        the new residuals. Why splines with a data-chosen penalty: IDPs differ in how
        much their mean and spread bend with age (a straight decline, a sharp change),
        and generalised cross-validation (Craven & Wahba 1979) gives each its own
        effective degrees of freedom, where fixed knots pick one flexibility for all
        (README, "How it works", 1).
        """
        lo, hi = float(np.min(age_z)), float(np.max(age_z))
        if hi - lo < 1e-6:
            lo, hi = lo - 1.0, hi + 1.0
        knots = np.linspace(lo, hi, cls.KNOT_INTERVALS + 1)
        ls = cls(knots, [m - 1 for m in n_levels], np.zeros(0), np.zeros(0))
        x = ls._design(age_z, codes)
        ls.mean_coef, _ = ls._smooth(x, y)
        for _ in range(2):
            ls.scale_coef = ls._log_spread(x, y - x @ ls.mean_coef)
            ls.mean_coef, _ = ls._smooth(x, y, weights=np.exp(-2.0 * x @ ls.scale_coef))
        resid = y - x @ ls.mean_coef
        ls.scale_coef = ls._log_spread(x, resid)
        z = resid / np.exp(x @ ls.scale_coef)
        ls.scale_coef[0] += np.log(z.std(axis=0))
        return ls

    def _level_row(self, k: int, code: int) -> int:
        """Row of the coefficients that holds level `code` (1-based) of categorical `k`."""
        return 1 + len(self.knots) + 2 + sum(self.n_levels[:k]) + code - 1

    def with_level(
        self,
        k: int,
        code: int,
        y: np.ndarray,
        age_z: np.ndarray,
        codes: np.ndarray,
        prior_n: float,
    ) -> LocationScale:
        """A copy whose level `code` of categorical `k` gets mean and log-spread effects
        learned from rows `y` that all hold that level (a new site's controls).

        A code one past the known levels adds the level; a known one is re-estimated from
        its current effects. Each IDP's effect is the controls' mean residual (and log
        residual spread) shrunk towards the starting value by n / (n + prior_n): a
        random-effect prior, so that a few controls move a site only part of the way.
        """
        if code == self.n_levels[k] + 1:
            n_levels = list(self.n_levels)
            n_levels[k] += 1
            row = 1 + len(self.knots) + 2 + sum(self.n_levels[: k + 1])
            grown = LocationScale(
                self.knots,
                n_levels,
                np.insert(self.mean_coef, row, 0.0, axis=0),
                np.insert(self.scale_coef, row, 0.0, axis=0),
            )
        elif 1 <= code <= self.n_levels[k]:
            grown = LocationScale(
                self.knots, list(self.n_levels), self.mean_coef.copy(), self.scale_coef.copy()
            )
        else:
            raise ValueError(f"level code {code} is neither known nor the next new one")
        row = grown._level_row(k, code)
        weight = len(y) / (len(y) + prior_n)
        x = grown._held_design(age_z, codes)
        shift = weight * (y - x @ grown.mean_coef).mean(axis=0)
        grown.mean_coef[row] += shift
        z = (y - x @ grown.mean_coef) / np.exp(x @ grown.scale_coef)
        grown.scale_coef[row] += weight * np.log(np.sqrt(np.mean(z**2, axis=0)))
        return grown

    def _held_design(self, age_z: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """The design at each row's age, with ages beyond the training range held at its
        nearest end: mean and spread are constant beyond the data.

        Why: a P-spline continues along its end slope, which rests on the fewest people,
        and a log-spread (or a log-scale IDP's mean) continued linearly grows or shrinks
        exponentially: bands many times too wide a few years outside the training ages
        (issue 18; benchmarks/RESULTS.md, "Edges of the age range"). Held at the ends,
        charts beyond the data stay as wide as at their edge, and the model flags such
        people as out of its age range rather than inventing a trend for them."""
        ends = np.clip(np.asarray(age_z, dtype=np.float64), self.knots[0], self.knots[-1])
        return self._design(ends, codes)

    def transform(self, y: np.ndarray, age_z: np.ndarray, codes: np.ndarray) -> np.ndarray:
        x = self._held_design(age_z, codes)
        return (y - x @ self.mean_coef) / np.exp(x @ self.scale_coef)

    def inverse(self, z: np.ndarray, age_z: np.ndarray, codes: np.ndarray) -> np.ndarray:
        x = self._held_design(age_z, codes)
        return z * np.exp(x @ self.scale_coef) + x @ self.mean_coef

    def to_dict(self) -> dict:
        return {
            "knots": self.knots.tolist(),
            "n_levels": list(self.n_levels),
            "mean_coef": self.mean_coef.tolist(),
            "scale_coef": self.scale_coef.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> LocationScale:
        return cls(
            np.asarray(d["knots"], dtype=np.float64),
            [int(m) for m in d["n_levels"]],
            np.asarray(d["mean_coef"], dtype=np.float64),
            np.asarray(d["scale_coef"], dtype=np.float64),
        )


@dataclass
class AgeShape:
    """Per-IDP residual shape that changes with age: residuals <-> normal scores.

    `LocationScale` removes a smooth mean and spread; what it leaves can still be skewed
    or bimodal, differently at different ages. Here each IDP's residual quantile function
    is estimated at a grid of ages (Gaussian-kernel-weighted quantiles of the training
    residuals), interpolated linearly in age, and used to map residuals to normal scores.
    The denoiser then models normal scores: nearly standard normal margins at every age,
    so most of what it must learn is their dependence. This is the quantile
    normalisation of normative models' "warped" likelihoods (Fraza et al. 2021,
    NeuroImage 245:118715) made local in age.

    Guards for small or uneven samples (a study whose people are mostly of one age):
    the kernel widens wherever fewer than MIN_EFFECTIVE people would carry a grid age
    (so sparse ages borrow the shape of their neighbours, and a tiny table gets one
    pooled shape); the quantiles stop at 2.5 % and 97.5 %, where a few hundred people
    still place them; and neighbouring quantiles are kept at least MIN_SLOPE of a
    standard normal's spacing apart, so that tied or clumped values cannot stretch the
    map. Beyond the outermost z-levels the map continues linearly (a Gaussian tail with
    the local spread): it is defined and invertible on the whole real line.
    """

    ages: np.ndarray = field(default_factory=lambda: np.zeros(0))
    quantiles: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))
    """(age grid, Z_LEVELS, IDPs) residual quantiles, increasing along axis 1."""

    Z_LEVELS = np.linspace(-1.96, 1.96, 33)
    """The z-levels at which residual quantiles are tabled (probabilities 2.5 % to 97.5 %)."""
    MIN_EFFECTIVE = 200.0
    """Effective number of people (Kish) below which a grid age's kernel is widened."""
    MIN_SLOPE = 0.2
    _GRID = 15
    _BANDWIDTH = 0.3
    """Kernel bandwidth in standardised age; the centile error depends little on it
    between 0.2 and 0.5 once MIN_EFFECTIVE widens it where people are few."""
    _CHUNK = 4096
    TAIL_SPAN = 8
    """Tabled segments spanned by the slope that continues the map past either end (one
    z unit): the outermost segment alone rests on a handful of people and stretches the
    tails of new people's scores."""

    @classmethod
    def fit(cls, resid: np.ndarray, age_z: np.ndarray) -> AgeShape:
        ages = np.unique(np.quantile(age_z, np.linspace(0, 1, cls._GRID)))
        if len(ages) < 2:
            ages = np.array([ages[0] - 1.0, ages[0] + 1.0])
        probs = ndtr(cls.Z_LEVELS)  # the normal CDF
        order = np.argsort(resid, axis=0)
        q = np.empty((len(ages), len(probs), resid.shape[1]))
        for g, a in enumerate(ages):
            q[g] = weighted_quantiles(resid, cls._weights(age_z, a), probs, order=order)
        gap = cls.MIN_SLOPE * np.diff(cls.Z_LEVELS)[None, :, None]
        steps = np.maximum(np.diff(q, axis=1), gap)
        q[:, 1:, :] = q[:, :1, :] + np.cumsum(steps, axis=1)
        return cls(ages, q)

    @classmethod
    def _weights(cls, age_z: np.ndarray, at: float) -> np.ndarray:
        """Gaussian kernel weights around `at`, widened until MIN_EFFECTIVE people carry
        them (or the whole table does)."""
        bandwidth = cls._BANDWIDTH
        target = min(cls.MIN_EFFECTIVE, 0.9 * len(age_z))
        while True:
            w = np.exp(-0.5 * ((age_z - at) / bandwidth) ** 2)
            if kish_effective_size(w) >= target or bandwidth > 100:
                return w
            bandwidth *= 1.25

    def _local(self, age_z: np.ndarray) -> np.ndarray:
        """Quantile functions at each row's age (rows, Z_LEVELS, IDPs)."""
        pos = np.clip(np.interp(age_z, self.ages, np.arange(len(self.ages))), 0, len(self.ages) - 1)
        g = np.minimum(pos.astype(int), len(self.ages) - 2)
        lam = (pos - g)[:, None, None]
        return (1 - lam) * self.quantiles[g] + lam * self.quantiles[g + 1]

    def _apply(self, x: np.ndarray, age_z: np.ndarray, forward: bool) -> np.ndarray:
        out = np.empty_like(x, dtype=np.float64)
        for s in range(0, len(x), self._CHUNK):
            q = self._local(np.asarray(age_z[s : s + self._CHUNK], dtype=np.float64))
            xs = x[s : s + self._CHUNK]
            out[s : s + self._CHUNK] = (
                z_of_values(q, xs, self.Z_LEVELS, self.TAIL_SPAN)
                if forward
                else values_of_z(q, xs[:, None, :], self.Z_LEVELS, self.TAIL_SPAN)[:, 0]
            )
        return out

    def transform(self, resid: np.ndarray, age_z: np.ndarray) -> np.ndarray:
        """Residuals (n, D) -> normal scores at each row's standardised age."""
        return self._apply(resid, age_z, forward=True)

    def inverse(self, scores: np.ndarray, age_z: np.ndarray) -> np.ndarray:
        """Normal scores (n, D) -> residuals at each row's standardised age."""
        return self._apply(scores, age_z, forward=False)

    def to_dict(self) -> dict:
        return {"ages": self.ages.tolist(), "quantiles": self.quantiles.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> AgeShape:
        return cls(
            np.asarray(d["ages"], dtype=np.float64), np.asarray(d["quantiles"], dtype=np.float64)
        )
