"""The reference table: conditional quantiles of every IDP over an age grid.

Sampling a diffusion model is slow (hundreds of network passes per draw), so centiles are
not computed per person. Once per model we draw samples for every combination of
categorical levels (sex x site x ..., the "unknown" level included) at ages spread evenly
over the training range, and store, at each grid age, Gaussian-kernel-weighted quantiles of
those samples at 31 z-levels evenly spaced from -3.0 to 3.0 (`Z_LEVELS`; their
probabilities are `PROBABILITY_LEVELS`).

The samples are normal scores: the first stage (`normcore.first_stage`) has removed each
IDP's age curves of mean, spread and shape. The model maps tabled normal scores to raw
values, and a person's raw values to normal scores, with that first stage at the
person's own age and levels. So the steep parts
of an age curve are exact at every age rather than interpolated between grid ages, and
what the table must resolve changes slowly with age: a wide kernel pools many samples
and keeps Monte-Carlo error low. Samples are also moved along the local linear age trend
so that pooling does not widen the distribution where it still changes, and their
departures from the first stage's own quantiles are shrunk by their Monte-Carlo noise
(`shrink_towards`). That is for combinations the first stage knows nothing of on its own
(an unknown level, an adapted site); a combination it learned from its own people takes
its margins from the first stage, and the denoiser's draws there serve the deviation
only (`build_reference`). Quantiles at one grid age are sorted values, linear
interpolation between two monotone vectors is monotone, and the first stage is
increasing, so centiles never cross.

Scoring then costs one interpolation in age and one search among 31 values per person and
IDP, whatever the model: a person's z is the z-level at which their normal score falls in
the tabled quantiles. Beyond z = +-3 the tail is extrapolated linearly in z along the
outermost tabled segments (a Gaussian tail) and z is clipped to +-Z_BOUND.

A person whose level of a closed covariate is unknown (sex not recorded) at known other
levels (the site) is one of the known levels, with the probabilities the training people
at those levels had: their law is the mixture sum_s p(s | site) p(y | s, site) of the
known combinations' laws, built per row at lookup (`ReferenceTable.lookup`,
`mixture_quantiles`), not tabled. The site is open: an unknown site is a new one, whose
law the denoiser learned by covariate dropout and the first stage does not know, so it
stays tabled from the draws.

Stored, the table holds the first stage's margins (`prior`) once, the training people per
combination, and only the combinations the denoiser's draws were tabled for
(`ReferenceTable.to_arrays`).

The same pass yields the multivariate deviation: the samples' z give a shrunk correlation
matrix of the IDPs, and the squared Mahalanobis distance of the samples' z vectors gives,
per covariate combination, the reference distribution in which a person's own distance
is ranked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from scipy import special

from normcore.numeric import (
    kish_effective_size,
    rank_normal_scores,
    values_of_z,
    weighted_quantiles,
    z_of_values,
)

if TYPE_CHECKING:
    from normcore.parallel_protocol import Collectives as Parallel

Z_STEP = 0.2
Z_LEVELS = np.round(np.arange(-3.0, 3.0 + Z_STEP / 2, Z_STEP), 10)
"""The z-levels at which quantiles are tabled."""
PROBABILITY_LEVELS = special.ndtr(Z_LEVELS)
"""The probabilities of `Z_LEVELS`."""
Z_BOUND = 6.0
"""The model answers within |z| <= Z_BOUND, in both directions: a person's z is clipped
here, and a centile asked at a probability beyond Phi(-Z_BOUND) (about 1e-9, 1e-7 %) or
above 1 - Phi(-Z_BOUND) is the one at the bound (`scores_at`). Beyond |z| = 3 values are
Gaussian-tail extrapolations of the table; further than |z| = 6 they would say nothing a
clinician could use (one person in a billion), and the bound is what the first stage's
positivity check covers (`first_stage.lowest_score`), so that no centile of a positive
IDP is negative at any probability the model accepts."""
_TAIL_SPAN = 3
"""Tabled segments spanned by the tail slope (z 2.4 .. 3.0), steadier than the last one alone."""

Sampler = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
"""scores = sampler(ages (m,), codes (m, K), seed): normal scores (m, D), one draw per row.

Each combination is drawn with its own seed: with one noise sequence shared by every
combination, the deviation reference's Monte-Carlo error is the same everywhere and does
not average out over people (benchmarks/RESULTS.md, "What did not run, and why")."""

Rescorer = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""rescore(scores (n, Q, D), codes_from (n, K), codes_to (n, K), ages (n,)): the normal
scores under the first stage at codes_to of the raw values whose normal scores at
codes_from are `scores`. Each combination's table is in its own first stage's scores
(the first stage has each level's mean and spread), so laws are mixed in one space."""


@dataclass
class ReferenceTable:
    """Quantiles (C, G, Q, D) over C level combinations and G grid ages, plus deviation data.

    `quantiles` are normal scores at `Z_LEVELS`; `n_eff` (C, G) their effective sample
    sizes, infinite where a combination's margins are the first stage's own (exact).
    Both are NaN for a combination read as a mixture of others (`mixture_components`).
    """

    ages: np.ndarray
    n_levels: list[int]
    quantiles: np.ndarray
    n_eff: np.ndarray
    bandwidth: float
    precision: np.ndarray
    """(G, D, D) inverse of the shrunk correlation of model samples' z at each grid age."""
    mahalanobis: np.ndarray
    """(C, G, Q) quantiles of the squared Mahalanobis distance of model samples under each
    grid age's `precision`, per combination and grid age (`deviation_reference`)."""
    level_counts: np.ndarray | None = None
    """(C,) people the first stage learned each combination from (training rows, an
    adapted site's controls); zero for a combination with an unknown level."""
    closed_columns: np.ndarray | None = None
    """(K,) bool: categorical columns whose levels are a closed set (sex), so that a
    person whose level is unknown holds one of the known ones. The others (the site) are
    open: their unknown level is a new one."""
    draw_offsets: np.ndarray | None = None
    """(C, OFFSET_TERMS, D): per combination, the coefficients over `offset_basis` of the
    mean of the denoiser's draws, in normal scores, where the first stage gives the
    margins (zero elsewhere); `draw_offset` removes it from the model's draws."""

    def __post_init__(self) -> None:
        n_combo = len(self.quantiles)
        counts = np.zeros(n_combo) if self.level_counts is None else self.level_counts
        closed = np.zeros(len(self.n_levels), bool) if self.closed_columns is None else (
            self.closed_columns
        )  # fmt: skip
        offsets = self.draw_offsets
        if offsets is None:
            offsets = np.zeros((n_combo, OFFSET_TERMS, self.quantiles.shape[-1]))
        self.level_counts = np.asarray(counts, dtype=np.float64)
        self.closed_columns = np.asarray(closed, dtype=bool)
        self.draw_offsets = np.asarray(offsets, dtype=np.float64)
        if self.level_counts.shape != (n_combo,) or self.closed_columns.shape != (
            len(self.n_levels),
        ):
            raise ValueError(
                f"the reference table has {n_combo} combinations of {len(self.n_levels)} "
                f"categorical columns but {self.level_counts.shape} people counts and "
                f"{self.closed_columns.shape} closed-column flags"
            )
        if self.draw_offsets.shape != (n_combo, OFFSET_TERMS, self.quantiles.shape[-1]):
            raise ValueError(
                f"the reference table's draw offsets are {self.draw_offsets.shape}, not "
                f"({n_combo}, {OFFSET_TERMS}, {self.quantiles.shape[-1]})"
            )
        self._mixtures = _mixtures(self.n_levels, self.level_counts, self.closed_columns)

    def draw_offset(self, codes: np.ndarray, ages: np.ndarray) -> np.ndarray:
        """(n, D) mean of the denoiser's draws at each row's covariates where the first
        stage gives the margins (`_first_stage_margins`), zero elsewhere: subtracted from
        the model's draws so that their margins are the centiles' (one law, not two)."""
        basis = offset_basis(np.asarray(ages, dtype=np.float64), self.ages)
        return np.einsum("nt,ntd->nd", basis, self.draw_offsets[self.combo_index(codes)])

    def combo_index(self, codes: np.ndarray) -> np.ndarray:
        """Mixed-radix index of each row's level combination (codes (n, K) -> (n,))."""
        idx = np.zeros(len(codes), dtype=np.int64)
        for k, m in enumerate(self.n_levels):
            idx = idx * m + codes[:, k]
        return idx

    def mixture_components(self, combination: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The combinations (S,) whose mixture is `combination`'s law, and their weights
        (S,), or None where the combination has a table of its own.

        A combination is a mixture when every unknown level in it is in a closed column
        and the training people at its known levels hold some known level there: its
        components are those fully known combinations, weighted by their people, i.e.
        p(s | known levels) estimated by the training proportions. A person of unknown
        sex at a site is a man with the site's share of men and a woman otherwise; that
        is their law, and it needs no table (Titterington, Smith & Makov 1985,
        *Statistical Analysis of Finite Mixture Distributions*, ch. 1).
        """
        return self._mixtures[combination]

    def mixed_combinations(self) -> np.ndarray:
        """(C,) bool: combinations read as mixtures (see `mixture_components`)."""
        return np.array([m is not None for m in self._mixtures], dtype=bool)

    def _age_weights(self, ages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = np.clip(np.asarray(ages, dtype=np.float64), self.ages[0], self.ages[-1])
        i = np.clip(np.searchsorted(self.ages, a, side="right") - 1, 0, len(self.ages) - 2)
        w = (a - self.ages[i]) / (self.ages[i + 1] - self.ages[i])
        return i, w

    def _interpolate(self, c: np.ndarray, ages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tabled quantile vectors (n, Q, D) and effective sizes (n,) of combinations c."""
        i, w = self._age_weights(ages)
        q = (
            self.quantiles[c, i] * (1 - w)[:, None, None]
            + self.quantiles[c, i + 1] * w[:, None, None]
        )
        with np.errstate(invalid="ignore"):  # inf * 0 where margins are exact
            n_eff = self.n_eff[c, i] * (1 - w) + self.n_eff[c, i + 1] * w
        return q, np.where(np.isinf(self.n_eff[c, i]), np.inf, n_eff)

    def lookup(
        self, codes: np.ndarray, ages: np.ndarray, rescore: Rescorer | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Quantile vectors (n, Q, D) and effective sample sizes (n,) at each row's covariates,
        in the normal scores of the first stage at the row's own levels.

        A row whose combination is a mixture (`mixture_components`) gets the mixture's
        quantiles at its age: each component's tabled quantiles, moved by `rescore` into
        the row's normal scores, mixed by `mixture_quantiles`. Its effective size is the
        smallest of its components': the variance of a mixture's estimated CDF,
        sum_s w_s^2 F_s(1 - F_s) / n_s, is at most F(1 - F) / min n_s by the concavity
        of F(1 - F). Ages outside the grid are clamped to its ends; callers flag such rows.
        """
        ages = np.asarray(ages, dtype=np.float64)
        c = self.combo_index(codes)
        mixed = self.mixed_combinations()[c]
        if not mixed.any():
            return self._interpolate(c, ages)
        if rescore is None:
            raise ValueError(
                "rows with an unknown level of a closed column are read as a mixture of the "
                "known levels' laws, which needs `rescore` to bring them to the row's scores"
            )
        q = np.empty((len(c), *self.quantiles.shape[2:]))
        n_eff = np.empty(len(c))
        plain = np.flatnonzero(~mixed)
        q[plain], n_eff[plain] = self._interpolate(c[plain], ages[plain])
        every_codes = _all_codes(self.n_levels)
        for combination in np.unique(c[mixed]):
            parts, weights = self._mixtures[combination]
            for block in np.array_split(
                np.flatnonzero(c == combination), -(-int((c == combination).sum()) // _BLOCK)
            ):
                laws, sizes = [], []
                for part in parts:
                    qp, size = self._interpolate(np.full(len(block), part), ages[block])
                    part_codes = np.tile(every_codes[part], (len(block), 1))
                    laws.append(rescore(qp, part_codes, codes[block], ages[block]))
                    sizes.append(size)
                q[block] = mixture_quantiles(np.stack(laws, axis=1), weights)
                n_eff[block] = np.min(sizes, axis=0)
        return q, n_eff

    def _from_prior(self) -> tuple[np.ndarray, np.ndarray]:
        """(C,) bool: combinations whose stored quantiles are the first stage's margins at
        every age and IDP, and those margins (Q,), as float32 (the stored precision)."""
        stored = self.quantiles.astype(np.float32)
        exact = np.flatnonzero(np.isinf(self.n_eff).all(axis=1))
        if len(exact) == 0:
            return np.zeros(len(stored), dtype=bool), np.zeros(0, dtype=np.float32)
        prior = stored[exact[0], 0, :, 0]
        same = np.zeros(len(stored), dtype=bool)
        same[exact] = (stored[exact] == prior[None, None, :, None]).all(axis=(1, 2, 3))
        return same, prior

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Named arrays for the bundle: the first stage's margins once (`reference.prior`)
        and a mask of the combinations that use them, the people per combination and the
        closed columns (which make the mixtures), and quantiles and effective sizes of the
        other (tabled) combinations only.

        Why: most combinations (every sex x site seen in training) take their margins from
        the first stage (`build_reference`), and those with an unknown sex are mixtures of
        them; a (G, Q, D) block for each of them would be most of a model file.
        """
        from_prior, prior = self._from_prior()
        tabled = ~from_prior & ~self.mixed_combinations()
        precision, maha = self.precision, self.mahalanobis
        if (precision == precision[:1]).all():  # one for every age: read back as such
            precision = precision[0]
        if (maha == maha[:, :1]).all():
            maha = maha[:, 0]
        return {
            "reference.ages": self.ages.astype(np.float64),
            "reference.prior": prior,
            "reference.from_prior": from_prior,
            "reference.quantiles": self.quantiles[tabled].astype(np.float32),
            "reference.n_eff": self.n_eff[tabled].astype(np.float32),
            "reference.precision": precision.astype(np.float32),
            "reference.mahalanobis": maha.astype(np.float32),
            "reference.level_counts": self.level_counts.astype(np.float64),
            "reference.closed_columns": self.closed_columns.copy(),
            "reference.draw_offsets": self.draw_offsets.astype(np.float32),
        }

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], n_levels: list[int], bandwidth: float
    ) -> ReferenceTable:
        """The table `to_arrays` stored. Arrays without `reference.prior` are the layout
        that stored every combination's quantiles in full, and arrays without
        `reference.level_counts` the one that tabled every combination with an unknown
        level; both are read as they are (no mixtures). Arrays without
        `reference.draw_offsets` leave the draws as the denoiser makes them."""
        quantiles = np.asarray(arrays["reference.quantiles"], dtype=np.float64)
        n_eff = np.asarray(arrays["reference.n_eff"], dtype=np.float64)
        n_combo = int(np.prod(n_levels)) if n_levels else 1
        counts = np.asarray(arrays.get("reference.level_counts", np.zeros(n_combo)), np.float64)
        closed = np.asarray(
            arrays.get("reference.closed_columns", np.zeros(len(n_levels), bool)), dtype=bool
        )
        if counts.shape != (n_combo,) or closed.shape != (len(n_levels),):
            raise ValueError(
                f"the reference table has {n_combo} combinations of {len(n_levels)} columns "
                f"but {counts.shape} people counts and {closed.shape} closed-column flags"
            )
        if "reference.prior" in arrays:
            from_prior = np.asarray(arrays["reference.from_prior"], dtype=bool)
            prior = np.asarray(arrays["reference.prior"], dtype=np.float64)
            if from_prior.shape != (n_combo,):
                raise ValueError(
                    f"the reference table marks {from_prior.shape} combinations for "
                    f"{n_combo} level combinations"
                )
            mixed = _mixed(n_levels, counts, closed)
            tabled = ~from_prior & ~mixed
            if quantiles.ndim != 4 or len(quantiles) != int(tabled.sum()):
                raise ValueError(
                    f"the reference table stores {len(quantiles)} tabled combinations but "
                    f"marks {int(tabled.sum())} of {len(from_prior)} as tabled"
                )
            full = np.full((len(from_prior), *quantiles.shape[1:]), np.nan)
            full[tabled] = quantiles
            if from_prior.any():
                full[from_prior] = prior[None, :, None]
            full_n_eff = np.full((len(from_prior), quantiles.shape[1]), np.nan)
            full_n_eff[tabled] = n_eff
            full_n_eff[from_prior] = np.inf
            quantiles, n_eff = full, full_n_eff
        return cls(
            ages=np.asarray(arrays["reference.ages"], dtype=np.float64),
            n_levels=list(n_levels),
            quantiles=quantiles,
            n_eff=n_eff,
            bandwidth=float(bandwidth),
            **_deviation_arrays(arrays, len(np.asarray(arrays["reference.ages"]))),
            level_counts=counts,
            closed_columns=closed,
            draw_offsets=arrays.get("reference.draw_offsets"),
        )


_BLOCK = 256
"""Rows mixed at once: the mixture's CDF at every knot is (rows, S, S * Q, D) floats."""


def _all_codes(n_levels: list[int]) -> np.ndarray:
    """(C, K) codes of every combination, in `ReferenceTable.combo_index` order."""
    return np.indices(n_levels).reshape(len(n_levels), -1).T


def _mixtures(
    n_levels: list[int], counts: np.ndarray, closed: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Per combination, its mixture's components and weights or None (see
    `ReferenceTable.mixture_components`)."""
    if not n_levels:
        return [None]
    every = _all_codes(n_levels)
    out: list[tuple[np.ndarray, np.ndarray] | None] = []
    for codes in every:
        unknown = codes == 0
        if not unknown.any() or not closed[unknown].all():
            out.append(None)
            continue
        same = (every[:, ~unknown] == codes[~unknown]).all(axis=1)
        weights = np.where(same & (every[:, unknown] > 0).all(axis=1), counts, 0.0)
        parts = np.flatnonzero(weights > 0)
        out.append((parts, weights[parts] / weights[parts].sum()) if len(parts) else None)
    return out


def _mixed(n_levels: list[int], counts: np.ndarray, closed: np.ndarray) -> np.ndarray:
    """(C,) bool: the combinations `_mixtures` makes mixtures."""
    return np.array([m is not None for m in _mixtures(n_levels, counts, closed)], dtype=bool)


def people_per_combination(n_levels: list[int], codes: np.ndarray) -> np.ndarray:
    """(C,) rows of `codes` (n, K) in each combination; rows with an unknown level are
    not counted (they are in no fully known combination)."""
    n_combo = int(np.prod(n_levels)) if n_levels else 1
    codes = np.asarray(codes, dtype=np.int64).reshape(len(codes), len(n_levels))
    known = codes[(codes > 0).all(axis=1)]
    index = (
        np.ravel_multi_index(tuple(known.T), n_levels)
        if n_levels
        else np.zeros(len(known), dtype=np.int64)
    )
    return np.bincount(index, minlength=n_combo).astype(np.float64)


_SOLVE_STEPS = 60
"""Safeguarded Newton steps per mixture quantile; each halves the bracket at worst."""


def mixture_quantiles(q: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Quantile vectors (n, Q, D) of the mixture of S laws given by their quantile vectors
    q (n, S, Q, D) at `Z_LEVELS`, with weights (S,) summing to one.

    Each law is read as the tables are read everywhere (`z_of_scores`: z linear in the
    score between quantiles, linear tails), so its CDF is Phi of a piecewise-linear z.
    The mixture's CDF F = sum_s w_s Phi(z_s) is computed at the union of all laws'
    quantiles; between two neighbouring ones every z_s is linear, so F(x) = p is solved
    there exactly, by Newton's method kept inside the bracket (bisection when a step
    would leave it). F at the union's ends is at most PROBABILITY_LEVELS[0] and at least
    PROBABILITY_LEVELS[-1] (each end is one law's outermost quantile), so no level needs
    extrapolation.
    """
    n, s, n_q, d = q.shape
    if s == 1:
        return q[:, 0].copy()
    knots = np.sort(q.reshape(n, s * n_q, d), axis=1)
    z = np.stack(
        [
            np.stack([z_of_scores(q[:, j], knots[:, m]) for m in range(s * n_q)], 1)
            for j in range(s)
        ],
        axis=1,
    )  # (n, S, M, D)
    weights = np.asarray(weights, dtype=np.float64)
    w = weights[None, :, None]
    cdf = np.einsum("s,nsmd->nmd", weights, special.ndtr(z))
    out = np.empty((n, n_q, d))
    for k, p in enumerate(PROBABILITY_LEVELS):
        hi = np.clip((cdf < p).sum(axis=1), 1, s * n_q - 1)[:, None, :]  # (n, 1, D)
        lo = hi - 1
        z_lo = np.take_along_axis(z, lo[:, None], axis=2)[:, :, 0]  # (n, S, D)
        dz = np.take_along_axis(z, hi[:, None], axis=2)[:, :, 0] - z_lo
        # Start where the mixture's own z is linear between the two knots.
        f_lo = special.ndtri(np.take_along_axis(cdf, lo, axis=1)[:, 0])
        f_hi = special.ndtri(np.take_along_axis(cdf, hi, axis=1)[:, 0])
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.clip((Z_LEVELS[k] - f_lo) / (f_hi - f_lo), 0.0, 1.0)
        t, below, above = np.nan_to_num(t, nan=0.5), np.zeros((n, d)), np.ones((n, d))
        for _ in range(_SOLVE_STEPS):
            at = z_lo + dz * t[:, None]
            f = (w * special.ndtr(at)).sum(axis=1) - p
            slope = (w * np.exp(-0.5 * at**2) * dz).sum(axis=1) / np.sqrt(2 * np.pi)
            below, above = np.where(f < 0, t, below), np.where(f > 0, t, above)
            with np.errstate(divide="ignore", invalid="ignore"):
                step = t - f / slope
            inside = (slope > 0) & (step > below) & (step < above)
            t = np.where(f == 0, t, np.where(inside, step, 0.5 * (below + above)))
            if np.all(np.abs(f) < 1e-15):
                break
        x_lo = np.take_along_axis(knots, lo, axis=1)[:, 0]
        out[:, k] = x_lo + t * (np.take_along_axis(knots, hi, axis=1)[:, 0] - x_lo)
    return np.sort(out, axis=1)


def z_of_scores(q: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """z (n, D) of each row's normal scores (n, D) within its quantile vector q (n, Q, D).

    Linear in z between tabled quantiles; outside them, linear extrapolation along the
    outermost `_TAIL_SPAN` segments (`numeric.z_of_values`); clipped to +-Z_BOUND.
    """
    return np.clip(z_of_values(q, scores, Z_LEVELS, _TAIL_SPAN), -Z_BOUND, Z_BOUND)


def scores_at(q: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Normal scores (n, P, D) at probability levels `probs` (P,) from quantile vectors
    q (n, Q, D): the inverse of `z_of_scores`, with the same tails and the same bound
    (z clipped to +-Z_BOUND)."""
    z = np.clip(special.ndtri(np.asarray(probs, dtype=np.float64)), -Z_BOUND, Z_BOUND)
    return values_of_z(q, z[None, :, None], Z_LEVELS, _TAIL_SPAN)


def _detrend(y: np.ndarray, ages: np.ndarray, w: np.ndarray, at: float) -> np.ndarray:
    """Move each sample to age `at` along the window's weighted linear age trend.

    Without this, pooling ages in the kernel widens the distribution wherever the IDP
    changes with age (a slope of b per year adds about (b*h)^2 of variance); removing the
    local linear trend leaves only second-order bias.
    """
    da = ages - np.average(ages, weights=w)
    slope = (w * da) @ (y - np.average(y, axis=0, weights=w)) / max(float((w * da) @ da), 1e-12)
    return y - np.outer(ages - at, slope)


BANDWIDTH = 0.1
"""Kernel bandwidth as a share of the age range (6 years over ages 20-80).

The table holds normal scores, from which the first stage has already removed the age
curves of mean, spread and shape; what is left changes slowly with age, so a wide kernel
costs little bias and pools many samples, and the Monte-Carlo error of a centile, which a
narrow kernel leaves as the largest error after the first stage's, drops (README, "How
it works", 4)."""


def age_grid(age_range: tuple[float, float], n_points: int) -> tuple[np.ndarray, float]:
    """Evenly spaced grid ages and the kernel bandwidth (BANDWIDTH of the range)."""
    lo, hi = float(age_range[0]), float(age_range[1])
    if hi <= lo:
        hi = lo + 1.0
    return np.linspace(lo, hi, n_points), BANDWIDTH * (hi - lo)


DRAWS_PER_AGE = 10
"""The table's draws come in runs of this many at one age: the network then reads a run's
covariates once per sampling step (`joint.shared_runs`), about half of FiLM's work per
draw. The draws at one age are independent, so only the ages are coarser: a
combination's 2,600 or so deviation draws still fall at about 19 ages per kernel
bandwidth (`_kept_count`, `BANDWIDTH`), enough for the kernel estimates to see them as
spread evenly."""


def _spread_ages(lo: float, hi: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """At least n ages spread evenly over [lo, hi] in runs of DRAWS_PER_AGE equal ones,
    one run in each of as many equal slices at a random place in it (stratified: no gaps
    or clumps that a kernel would feel), in increasing order."""
    m = -(-n // DRAWS_PER_AGE)
    return np.repeat(lo + (np.arange(m) + rng.random(m)) / m * (hi - lo), DRAWS_PER_AGE)


def _plan(
    grid: np.ndarray, h: float, per: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ages and the indices of the samples kept for the deviation, for one combination.

    Ages are spread evenly (with a seeded jitter) over the range widened by two bandwidths,
    so that kernel estimates at the ends of the range are not one-sided. The samples kept
    for the deviation are inside the range: the table, which places them, has no
    quantiles beyond it. Drawing these apart from the (slow) sampling lets several
    processes each sample their own combinations while consuming `rng` exactly as one
    process does.
    """
    ages = _spread_ages(grid[0] - 2 * h, grid[-1] + 2 * h, per, rng)
    inside = np.flatnonzero((ages >= grid[0]) & (ages <= grid[-1]))
    return ages, rng.choice(inside, size=min(_KEEP, len(inside)), replace=False)


def shrink_towards(q: np.ndarray, n_eff: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Tabled quantiles (G, Q, D) of one combination, their Monte-Carlo noise shrunk away.

    Why: the first stage already gives every IDP near-standard-normal scores at every age,
    so the model's draws differ from `prior` (Q,), the quantiles they would have if the
    denoiser drew exactly N(0, 1), by little, and most of the tabled difference is
    sampling noise. Empirical Bayes (Efron & Morris 1975, JASA 70:311), per IDP:
    each cell's departure d = q - prior has sampling variance v = p(1 - p) / (n_eff
    f(q)^2), with the density f from the tabled spacing; the spread tau^2 of the true
    departures is the mean of d^2 less the mean of v over ages and levels; each d is
    scaled by tau^2 / (tau^2 + v). A real departure (a shape the first stage missed, the
    wider scores of an unknown site) is large against the noise and kept; the noise goes.
    Sorting each quantile vector again (rearrangement) keeps them increasing.
    """
    from scipy import stats  # building a table only: scoring never loads scipy.stats

    density = stats.norm.pdf(Z_LEVELS)[None, :, None] / np.maximum(
        np.gradient(q, Z_STEP, axis=1), 1e-12
    )
    p = PROBABILITY_LEVELS
    var = (p * (1 - p))[None, :, None] / (n_eff[:, None, None] * density**2)
    departure = q - prior[None, :, None]
    tau2 = np.maximum((departure**2).mean(axis=(0, 1)) - var.mean(axis=(0, 1)), 0.0)
    keep = tau2 / np.maximum(tau2 + var, 1e-300)
    return np.sort(prior[None, :, None] + keep * departure, axis=1)


_KEEP = 2_000
"""Samples per combination kept for the correlation and the Mahalanobis reference, inside
the age range."""


def _kept_count(grid: np.ndarray, h: float) -> int:
    """Draws of a combination with the first stage's margins, kept for the deviation over
    the age range widened by two bandwidths, _KEEP of them inside it.

    Why widened: the deviation reference is kernel-weighted per age
    (`deviation_reference`), and a kernel cut at the oldest age sees only younger samples;
    where the coupling grows with age, their distances are too wide and the oldest
    people's deviation too small. These draws are placed by their own ranks, not by the
    table, so they may lie beyond its ages.
    """
    span = float(grid[-1] - grid[0])
    return int(round(_KEEP * (span + 4 * h) / span)) if span > 0 else _KEEP


OFFSET_TERMS = 3
"""Terms of `offset_basis`: a quadratic in age."""
MAX_DRAW_OFFSET = 2.0
"""Largest mean error of the denoiser's draws, in standard deviations of the normal
scores, that `draw_offset` removes at any age of the grid. A network can be that far off
for a level combination at ages where it has none of its people (SAINT fitted on
fcon1000's small sites: up to 2.8); beyond the cap the curve is scaled down
(`capped_offsets`), so a fit never writes what a file may not hold (bundle_checks
refuses more: an edited file would move every draw to a confident wrong place)."""


def offset_basis(ages: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """(n, OFFSET_TERMS): 1, t and t^2 of each age, t running from -1 to 1 over the grid's
    ages and held at its ends beyond them (as the first stage holds its age curves)."""
    mid, half = (grid[0] + grid[-1]) / 2, max((grid[-1] - grid[0]) / 2, 1e-12)
    t = np.clip((np.asarray(ages, dtype=np.float64) - mid) / half, -1.0, 1.0)
    return np.stack([np.ones_like(t), t, t * t], axis=1)


def offset_reach(offsets: np.ndarray) -> np.ndarray:
    """(..., D) the largest |offset| over the grid's ages of coefficients (..., T, D):
    the quadratic `offset_basis` spans, evaluated at 201 points of t in [-1, 1]."""
    basis = offset_basis(np.linspace(-1.0, 1.0, 201), np.array([-1.0, 1.0]))
    return np.abs(np.einsum("gt,...td->...gd", basis, offsets)).max(axis=-2)


def capped_offsets(offsets: np.ndarray) -> np.ndarray:
    """Coefficients (T, D) with each IDP's curve scaled down to reach MAX_DRAW_OFFSET at
    most: the part of a larger error beyond it stays in the model's draws."""
    reach = offset_reach(offsets)
    return offsets * np.minimum(1.0, MAX_DRAW_OFFSET / np.maximum(reach, 1e-12))


def _shrunk_offsets(basis: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(OFFSET_TERMS, D) least-squares coefficients of draws y (n, D) on `basis` (n, T),
    each IDP's shrunk towards zero by the factor max(0, 1 - T / W), W the Wald statistic
    of its coefficients (chi-square with T degrees of freedom where the draws have no
    offset).

    Why: a few thousand draws estimate the mean to within a few hundredths of a standard
    deviation, more at the ends of the age range; where the denoiser has no offset,
    removing that noise would add an error of its own (a positive-part James-Stein-type
    factor: Efron & Morris 1973, JASA 68:117). A curve within noise (W near T) is dropped
    and a clear one is kept nearly whole."""
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    resid = y - basis @ coef
    dof = max(len(y) - basis.shape[1], 1)
    noise = (resid**2).sum(axis=0) / dof  # (D,)
    # coef's covariance is noise * inv(B'B), so W = coef' (B'B) coef / noise
    wald = np.einsum("td,ts,sd->d", coef, basis.T @ basis, coef) / np.maximum(noise, 1e-12)
    return coef * np.clip(1.0 - basis.shape[1] / np.maximum(wald, 1e-12), 0.0, 1.0)


def _first_stage_margins(
    sampler: Sampler,
    codes: np.ndarray,
    grid: np.ndarray,
    h: float,
    prior: np.ndarray,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Quantiles (G, Q, D), effective sizes (G,), kept normal scores and their ages, and
    the draws' mean over age (OFFSET_TERMS, D), of a combination whose margins are the
    first stage's (see `build_reference`).

    The quantiles are `prior` at every age, exact, so their effective sample size is
    infinite (no Monte-Carlo error). The draws serve the deviation: `_kept_count` at ages
    spread over the grid, scored by their own ranks per IDP, so that the Mahalanobis
    reference measures the denoiser's dependence on the same standard-normal margins that
    real people's scores have under `prior`. They also measure the denoiser's error in
    the mean: the first stage gives this combination's scores mean zero at every age, so
    the draws' mean, smooth in age (a least-squares quadratic), is the denoiser's own
    offset. It is removed before the ranks and stored, so that the model's draws have
    the centiles' margins (`ReferenceTable.draw_offset`), shrunk by its own Monte-Carlo
    noise (`_shrunk_offsets`).
    """
    n = _kept_count(grid, h)
    ages = _spread_ages(grid[0] - 2 * h, grid[-1] + 2 * h, n, np.random.default_rng(seed))
    y = sampler(ages, np.tile(codes, (n, 1)), seed)
    basis = offset_basis(ages, grid)
    inside = (ages >= grid[0]) & (ages <= grid[-1])  # where the basis is a quadratic
    offsets = capped_offsets(_shrunk_offsets(basis[inside], y[inside]))
    q = np.broadcast_to(prior[None, :, None], (len(grid), len(prior), y.shape[1])).copy()
    return q, np.full(len(grid), np.inf), rank_normal_scores(y - basis @ offsets), ages, offsets


def _tabulate(
    sampler: Sampler,
    codes: np.ndarray,
    grid: np.ndarray,
    h: float,
    plan: tuple[np.ndarray, np.ndarray],
    prior: np.ndarray,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Quantiles (G, Q, D), effective sizes (G,), kept normal scores and their ages for one
    combination, and zero draw offsets (its margins are the draws' own)."""
    ages, pick = plan
    y = sampler(ages, np.tile(codes, (len(ages), 1)), seed)
    q = np.empty((len(grid), len(PROBABILITY_LEVELS), y.shape[1]))
    n_eff = np.empty(len(grid))
    for gi, g in enumerate(grid):
        lo, hi = np.searchsorted(ages, [g - 3 * h, g + 3 * h])
        w = np.exp(-0.5 * ((ages[lo:hi] - g) / h) ** 2)
        q[gi] = weighted_quantiles(_detrend(y[lo:hi], ages[lo:hi], w, g), w, PROBABILITY_LEVELS)
        n_eff[gi] = kish_effective_size(w)
    q = shrink_towards(q, n_eff, prior)
    one = ReferenceTable(grid, [1], q[None], n_eff[None], h, np.eye(1), np.zeros((1, 1)))
    qp, _ = one.lookup(np.zeros((len(pick), 1), dtype=np.int64), ages[pick])
    return q, n_eff, z_of_scores(qp, y[pick]), ages[pick], np.zeros((OFFSET_TERMS, y.shape[1]))


def _squared_distance(z: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of each row of normal scores z (n, D). A matrix
    product, not a three-operand einsum, which numpy evaluates without BLAS: a fit ranks
    millions of draws."""
    return ((z @ precision) * z).sum(axis=1)


Draws = dict[int, tuple[np.ndarray, np.ndarray]]
"""Per combination, the z (n, D) of the model's draws within its own margins and their
ages (n,): what its deviation reference ranks (`deviation_reference`)."""


def mixture_people(
    table: ReferenceTable, combination: int, rescore: Rescorer, draws: Draws, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """z (n, D) within its mixture, and ages (n,), of _KEEP people of a mixed combination
    (`ReferenceTable.mixture_components`), made from its components' `draws`.

    Why: the deviation ranks a person's distance among the distances of the model's
    draws with the same law, scored the same way; a person of unknown sex is scored
    within the mixture, so the reference must be too. Each person is a draw of a
    component taken with the component's weight, at the nearest grid age (so that each
    age's mixture is built once), given the component's margins there and moved by
    `rescore` into the mixture's normal scores, exactly as a real person of that sex
    would be; the dependence is the draws' own, as in every other combination's
    reference, so the deviation calibration measured at fit time applies alike.
    """
    rng = np.random.default_rng(seed)
    parts, weights = table.mixture_components(combination)
    which = rng.choice(len(parts), size=_KEEP, p=weights)
    every = _all_codes(table.n_levels)
    grid_codes = np.tile(every[combination], (len(table.ages), 1))
    mixture, _ = table.lookup(grid_codes, table.ages, rescore)
    z_out, at_out = [], []
    for s, part in enumerate(parts):
        z, ages = draws[part]
        inside = np.flatnonzero((ages >= table.ages[0]) & (ages <= table.ages[-1]))
        n = int((which == s).sum())
        pick = rng.choice(inside, size=n, replace=n > len(inside))
        at = np.abs(ages[pick, None] - table.ages[None, :]).argmin(axis=1)
        q, _ = table._interpolate(np.full(n, part), table.ages[at])
        own = values_of_z(q, z[pick][:, None, :], Z_LEVELS, _TAIL_SPAN)
        part_codes = np.tile(every[part], (n, 1))
        scores = rescore(own, part_codes, grid_codes[at], table.ages[at])[:, 0]
        z_out.append(z_of_scores(mixture[at], scores))
        at_out.append(at)
    at = np.concatenate(at_out)
    return np.concatenate(z_out), table.ages[at]


def with_mixture_deviations(
    table: ReferenceTable,
    rescore: Rescorer,
    draws: Draws,
    seed: int,
    combinations: np.ndarray | None = None,
) -> ReferenceTable:
    """The table with the deviation reference of its mixed `combinations` (default: all)
    from `mixture_people`, at the stored precision: per grid age (`deviation_reference`),
    or pooled over ages where the table's reference is one for every age (a file that
    pooled them), as its other combinations are."""
    maha = table.mahalanobis.copy()
    pooled = (maha == maha[:, :1]).all() and (table.precision == table.precision[:1]).all()
    mixed = np.flatnonzero(table.mixed_combinations())
    for c in mixed if combinations is None else np.intersect1d(mixed, combinations):
        z, ages = mixture_people(table, int(c), rescore, draws, _combination_seed(seed, int(c)))
        if pooled:
            d2 = _squared_distance(z, table.precision[0])
            maha[c] = np.quantile(d2, PROBABILITY_LEVELS)[None, :]
        else:
            maha[c] = deviation_reference(z, ages, table.precision, table.ages, table.bandwidth)
    return dataclasses.replace(table, mahalanobis=maha.astype(np.float32).astype(np.float64))


def _combination_seed(seed: int, combination: int) -> int:
    """The sampler's seed for one level combination (see `Sampler`)."""
    return int(np.random.default_rng([seed, combination]).integers(2**31))


def build_reference(
    sampler: Sampler,
    age_range: tuple[float, float],
    n_levels: list[int],
    prior: np.ndarray,
    samples_per_combination: int = 20_000,
    grid_points: int = 41,
    seed: int = 0,
    progress: Callable[[float], None] | None = None,
    parallel: Parallel | None = None,
    first_stage_margins: np.ndarray | None = None,
    people: np.ndarray | None = None,
    closed_columns: np.ndarray | None = None,
    rescore: Rescorer | None = None,
) -> ReferenceTable:
    """Sample the model for every level combination and tabulate its quantiles over age.

    `prior` (Q,): the quantiles at PROBABILITY_LEVELS the samples would have if the
    denoiser drew standard normal scores; see `shrink_towards`.

    `first_stage_margins` (C,) bool: combinations whose tabled margins are `prior`
    itself, not the draws' (see `_first_stage_margins`). Why: where the first stage has
    learned a combination's mean, spread and shape from its own people, the denoiser's
    departures from it are mostly its own error, which shrinkage towards `prior` cannot
    tell from a real departure (README, "How it works", 4, and benchmarks/RESULTS.md,
    training draws). Where the first stage knows nothing of its own (an unknown
    level, an adapted site), the draws' margins are tabled and shrunk.

    `people` (n, K): the codes the first stage learned from, counted per combination;
    with `closed_columns` (K,) bool they make a combination whose unknown levels are all
    in closed columns a mixture of the known ones (`ReferenceTable.mixture_components`),
    whose margins are not tabled; with `rescore` its deviation reference is that of the
    mixture (`with_mixture_deviations`), else its own draws'.

    A mixture with `rescore` is not sampled at all: nothing of its own draws would be
    read (its margins and its deviation reference are its components'), and on a table
    of many sites the mixtures of unknown sex were most of a fit's draws.

    With `parallel` each process samples every world_size-th combination and the parts
    are gathered, so every process returns the table one process would have built.
    """
    rng = np.random.default_rng(seed)
    grid, h = age_grid(age_range, grid_points)
    n_combo = int(np.prod(n_levels)) if n_levels else 1
    if first_stage_margins is None:
        first_stage_margins = np.zeros(n_combo, dtype=bool)
    plans = [_plan(grid, h, samples_per_combination, rng) for _ in range(n_combo)]
    unsampled = _unsampled_mixtures(n_levels, people, closed_columns, rescore is not None)
    sampled = [ci for ci in range(n_combo) if not unsampled[ci]]
    mine = sampled if parallel is None else [sampled[i] for i in parallel.my_items(len(sampled))]
    own = {}
    for done, ci in enumerate(mine):
        codes = (
            np.array(np.unravel_index(ci, n_levels), dtype=np.int64)
            if n_levels
            else np.zeros(0, np.int64)
        )
        draw_seed = _combination_seed(seed, ci)
        own[ci] = (
            _first_stage_margins(sampler, codes, grid, h, prior, draw_seed)
            if first_stage_margins[ci]
            else _tabulate(sampler, codes, grid, h, plans[ci], prior, draw_seed)
        )
        if progress is not None:
            progress((done + 1) / len(mine))
    everything = own if parallel is None else parallel.gather_dicts(own)
    dims = everything[sampled[0]][0].shape[-1]
    parts = [everything.get(ci) or _unsampled(grid, dims) for ci in range(n_combo)]
    precision = age_precisions(
        np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts]), grid, h
    )
    table = ReferenceTable(
        ages=grid,
        n_levels=list(n_levels),
        quantiles=np.stack([p[0] for p in parts]),
        n_eff=np.stack([p[1] for p in parts]),
        bandwidth=h,
        precision=precision,
        mahalanobis=np.stack([
            deviation_reference(p[2], p[3], precision, grid, h) if len(p[3])
            else np.full((len(grid), len(PROBABILITY_LEVELS)), np.nan)
            for p in parts
        ]),  # fmt: skip
        level_counts=None if people is None else people_per_combination(n_levels, people),
        closed_columns=closed_columns,
        draw_offsets=np.stack([p[4] for p in parts]),
    )
    # Round-trip through the stored precision so a fitted and a loaded model agree exactly.
    table = ReferenceTable.from_arrays(table.to_arrays(), table.n_levels, table.bandwidth)
    if rescore is None:
        return table
    draws = {ci: (p[2], p[3]) for ci, p in enumerate(parts)}
    return with_mixture_deviations(table, rescore, draws, seed)


def _unsampled_mixtures(
    n_levels: list[int], people: np.ndarray | None, closed: np.ndarray | None, rescore: bool
) -> np.ndarray:
    """(C,) bool: combinations `build_reference` leaves unsampled, the mixtures whose
    deviation reference is made from their components (`with_mixture_deviations`)."""
    n_combo = int(np.prod(n_levels)) if n_levels else 1
    if not rescore or people is None or closed is None:
        return np.zeros(n_combo, dtype=bool)
    return _mixed(n_levels, people_per_combination(n_levels, people), closed)


def _unsampled(
    grid: np.ndarray, dims: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A mixture's part of the table, in `_tabulate`'s layout: no quantiles (NaN, as a
    stored table holds a mixture's), no draws, no offsets."""
    n_q = len(PROBABILITY_LEVELS)
    return (
        np.full((len(grid), n_q, dims), np.nan),
        np.full(len(grid), np.nan),
        np.zeros((0, dims)),
        np.zeros(0),
        np.zeros((OFFSET_TERMS, dims)),
    )


def with_level(
    table: ReferenceTable,
    sampler: Sampler,
    column: int,
    code: int,
    prior: np.ndarray,
    samples_per_combination: int,
    seed: int = 0,
    people: np.ndarray | None = None,
    rescore: Rescorer | None = None,
) -> ReferenceTable:
    """The table with level `code` of categorical `column` (re)tabulated from `sampler`.

    `code` may be one past the last level: the level is then appended (a new site).
    Other combinations are kept as they are, so adapting to a site costs only that site's
    share of the table; the IDP correlation is kept too. `people` (n, K): codes of the
    people the level was learned from (a site's controls), added to its combinations'
    counts, which weigh its mixtures (`ReferenceTable.mixture_components`); with
    `rescore` their deviation reference is rebuilt (`with_mixture_deviations`).
    """
    levels = list(table.n_levels)
    appended = code == levels[column]
    new_levels = levels.copy()
    new_levels[column] += int(appended)
    rng = np.random.default_rng(seed)
    other = [range(m) if k != column else [code] for k, m in enumerate(new_levels)]
    grid_shape = table.quantiles.shape[1:]
    q = table.quantiles.reshape(*levels, *grid_shape)
    n_eff = table.n_eff.reshape(*levels, grid_shape[0])
    maha = table.mahalanobis.reshape(*levels, *table.mahalanobis.shape[1:])
    counts = table.level_counts.reshape(levels)
    offsets = table.draw_offsets.reshape(*levels, *table.draw_offsets.shape[1:])
    if appended:
        pad = [(0, 0)] * len(levels)
        pad[column] = (0, 1)
        q = np.pad(q, pad + [(0, 0)] * 3)
        n_eff = np.pad(n_eff, pad + [(0, 0)])
        maha = np.pad(maha, pad + [(0, 0)] * 2)
        counts = np.pad(counts, pad)
        offsets = np.pad(offsets, pad + [(0, 0)] * 2)
    if people is not None:
        counts = counts + people_per_combination(new_levels, people).reshape(new_levels)
    c = int(np.prod(new_levels))
    unsampled = np.zeros(c, dtype=bool)
    if rescore is not None:
        unsampled = _mixed(new_levels, counts.reshape(c), table.closed_columns)
    draws: Draws = {}
    for codes in np.array(np.meshgrid(*other, indexing="ij")).reshape(len(levels), -1).T:
        plan = _plan(table.ages, table.bandwidth, samples_per_combination, rng)
        ci = int(np.ravel_multi_index(tuple(codes), new_levels))
        if unsampled[ci]:  # a mixture: no table of its own, its deviation its components'
            continue
        qc, nc, zc, ac, oc = _tabulate(
            sampler, codes, table.ages, table.bandwidth, plan, prior, _combination_seed(seed, ci)
        )
        idx = tuple(codes)
        q[idx], n_eff[idx], offsets[idx] = qc, nc, oc
        maha[idx] = deviation_reference(zc, ac, table.precision, table.ages, table.bandwidth)
        draws[ci] = (zc, ac)
    out = ReferenceTable(
        table.ages,
        new_levels,
        q.reshape(c, *grid_shape),
        n_eff.reshape(c, -1),
        table.bandwidth,
        table.precision,
        maha.reshape(c, *maha.shape[len(levels) :]),
        counts.reshape(c),
        table.closed_columns,
        offsets.reshape(c, *offsets.shape[len(levels) :]),
    )
    out = ReferenceTable.from_arrays(out.to_arrays(), new_levels, out.bandwidth)
    if rescore is None:
        return out
    level = _all_codes(new_levels)[:, column] == code
    return with_mixture_deviations(out, rescore, draws, seed, np.flatnonzero(level))


def _correlation_precision(z: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Inverse of the Ledoit-Wolf-shrunk correlation matrix of normal scores (rows
    weighted by `w`, if given)."""
    from sklearn.covariance import LedoitWolf  # building a table only

    if w is not None:
        z = z - np.average(z, axis=0, weights=w)
        z = z * np.sqrt(w / w.mean())[:, None]
    cov = LedoitWolf(assume_centered=w is not None).fit(z).covariance_
    sd = np.sqrt(np.diag(cov))
    corr = cov / np.outer(sd, sd)
    return np.linalg.inv(corr)


def _kernel(ages: np.ndarray, at: float, h: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows within 3 bandwidths of age `at` and their Gaussian kernel weights, as the
    quantiles are weighted in `_tabulate`."""
    near = np.flatnonzero(np.abs(ages - at) <= 3 * h)
    return near, np.exp(-0.5 * ((ages[near] - at) / h) ** 2)


def age_precisions(z: np.ndarray, ages: np.ndarray, grid: np.ndarray, h: float) -> np.ndarray:
    """(G, D, D) precision of the model samples' normal scores z (n, D) at each grid age.

    Why per age: where the coupling between IDPs changes with age, one correlation pooled
    over ages is too strong for the young and too weak for the old, and a distance under
    it misjudges profiles at both ends (benchmarks/RESULTS.md, "Joint model"). The
    samples of every combination are pooled, weighted by the age kernel of the quantiles.
    """
    out = np.empty((len(grid), z.shape[1], z.shape[1]))
    for gi, g in enumerate(grid):
        near, w = _kernel(ages, g, h)
        out[gi] = _correlation_precision(z[near], w)
    return out


def deviation_reference(
    z: np.ndarray, ages: np.ndarray, precision: np.ndarray, grid: np.ndarray, h: float
) -> np.ndarray:
    """(G, Q) quantiles at PROBABILITY_LEVELS of one combination's samples' squared
    Mahalanobis distances, at each grid age under that age's precision (G, D, D).

    Why per age: a distance ranked among samples of every age is calibrated over everyone
    but not within ages. Where the dependence grows with age, old people's distances are
    ranked among mostly younger, less coupled samples and the deviation never fires for
    them (issue 17, item 5). Ranked among the samples at their own age (kernel-weighted,
    as the margins), it is calibrated at every age.
    """
    out = np.empty((len(grid), len(PROBABILITY_LEVELS)))
    for gi, g in enumerate(grid):
        near, w = _kernel(ages, g, h)
        out[gi] = weighted_quantiles(
            _squared_distance(z[near], precision[gi])[:, None], w, PROBABILITY_LEVELS
        )[:, 0]
    return out


def _deviation_arrays(arrays: dict[str, np.ndarray], n_grid: int) -> dict[str, np.ndarray]:
    """`precision` (G, D, D) and `mahalanobis` (C, G, Q) from stored arrays.

    Files whose deviation reference pooled every age, (D, D) and (C, Q), are read as the
    same reference at every grid age: they rank as they always did.
    """
    precision = np.asarray(arrays["reference.precision"], dtype=np.float64)
    maha = np.asarray(arrays["reference.mahalanobis"], dtype=np.float64)
    if precision.ndim == 2:
        precision = np.repeat(precision[None], n_grid, axis=0)
    if maha.ndim == 2:
        maha = np.repeat(maha[:, None, :], n_grid, axis=1)
    if (
        precision.ndim != 3
        or maha.ndim != 3
        or n_grid != precision.shape[0]
        or (n_grid != maha.shape[1])
    ):
        raise ValueError(
            f"the deviation reference has shapes {precision.shape} and {maha.shape} for "
            f"{n_grid} grid ages"
        )
    return {"precision": precision, "mahalanobis": maha}


def _raw_deviation_scores(
    table: ReferenceTable, codes: np.ndarray, ages: np.ndarray, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Squared distance (n,) under the precision at each row's age, and the normal score
    (n,) of its rank among the model's own samples' distances at that age.

    Between two grid ages both are interpolated linearly, as the margins are (`lookup`):
    the distance under each neighbouring grid age's precision, ranked among that age's
    samples; the precision is linear in the weights, so the distance is the one under the
    interpolated precision.
    """
    i, w = table._age_weights(ages)
    d2 = np.stack([np.einsum("ij,ijk,ik->i", z, table.precision[g], z) for g in (i, i + 1)])
    return d2[0] * (1 - w) + d2[1] * w, _rank_scores(table, codes, i, w, d2)


def _rank_scores(
    table: ReferenceTable, codes: np.ndarray, i: np.ndarray, w: np.ndarray, d2: np.ndarray
) -> np.ndarray:
    """(n,) normal scores of squared distances `d2` ((2, n): under grid ages i and i + 1,
    or (n,): one for both) ranked among the samples of each row's levels at those grid
    ages, interpolated with weights `w`."""
    c = table.combo_index(codes)
    d2 = np.broadcast_to(d2, (2, len(c)))
    r = [
        z_of_scores(table.mahalanobis[c, g][:, :, None], d2[side][:, None])[:, 0]
        for side, g in enumerate((i, i + 1))
    ]
    return r[0] * (1 - w) + r[1] * w


@dataclass(frozen=True)
class DeviationCalibration:
    """The deviation centile's correction for people the model did not train on: its
    normal score r becomes (r - site shift - shift(age)) / spread(age) (see
    `deviation_calibration` and `deviation_site_shifts`).

    shift(age) = shift + shift_slope * (a - centre) and spread(age) = spread *
    exp(log_spread_slope * (a - centre)), slopes per year, with a the age held within
    `ages` (the validation people's youngest and oldest: the trend is not carried beyond
    the people it was measured on) and centre the middle of `ages`. `site_shifts` holds
    one shift per level code 1.. of categorical column `site_column` (a level beyond them,
    the unknown one or one added by adaptation, has none). The default changes nothing;
    a file from before the age trend holds the shift and spread only, one from before the
    site shifts none.
    """

    shift: float = 0.0
    spread: float = 1.0
    shift_slope: float = 0.0
    log_spread_slope: float = 0.0
    ages: tuple[float, float] = (0.0, 0.0)
    site_column: int = 0
    site_shifts: tuple[float, ...] = ()

    def site_shift(self, codes: np.ndarray) -> np.ndarray:
        """(n,) the site shift of each row of category `codes` (n, K)."""
        out = np.zeros(len(codes))
        if self.site_shifts:
            code = np.asarray(codes)[:, self.site_column]
            known = (code >= 1) & (code <= len(self.site_shifts))
            out[known] = np.asarray(self.site_shifts)[code[known] - 1]
        return out

    def apply(self, r: np.ndarray, ages: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """The calibrated normal scores of raw scores `r` of people aged `ages` with
        category `codes`."""
        lo, hi = self.ages
        x = np.clip(np.asarray(ages, dtype=np.float64), lo, hi) - 0.5 * (lo + hi)
        spread = self.spread * np.exp(self.log_spread_slope * x)
        return (r - self.site_shift(codes) - self.shift - self.shift_slope * x) / spread

    def to_list(self) -> list[float]:
        """As stored in a bundle: [shift, spread, shift_slope, log_spread_slope, lo, hi],
        or [shift, spread] when nothing changes with age (as every file before the age
        trend holds, so such a file reads and saves unchanged). The site shifts are
        stored apart (`sites_to_dict`)."""
        if self.shift_slope == 0.0 and self.log_spread_slope == 0.0:
            return [self.shift, self.spread]
        return [self.shift, self.spread, self.shift_slope, self.log_spread_slope, *self.ages]

    def sites_to_dict(self) -> dict | None:
        """The site shifts as stored in a bundle, None when there are none."""
        if not self.site_shifts:
            return None
        return {"column": self.site_column, "shifts": list(self.site_shifts)}

    @classmethod
    def from_list(
        cls, values: list[float] | tuple[float, ...], sites: dict | None = None
    ) -> DeviationCalibration:
        """From `to_list`'s six numbers, or an older file's (shift, spread), and
        `sites_to_dict`'s site shifts, if any."""
        shift, spread, *trend = (float(v) for v in values)
        site = {}
        if sites:
            site = {
                "site_column": int(sites["column"]),
                "site_shifts": tuple(float(v) for v in sites["shifts"]),
            }
        if not trend:
            return cls(shift, spread, **site)
        shift_slope, log_spread_slope, lo, hi = trend
        return cls(shift, spread, shift_slope, log_spread_slope, (lo, hi), **site)


def mahalanobis_centile(
    table: ReferenceTable,
    codes: np.ndarray,
    ages: np.ndarray,
    z: np.ndarray,
    calibration: DeviationCalibration = DeviationCalibration(),
) -> tuple[np.ndarray, np.ndarray]:
    """Squared Mahalanobis distance of normal-score vectors z (n, D) and its centile (0-100).

    The raw centile ranks the distance among model samples with the same categorical
    levels at the person's own age (`deviation_reference`), so it holds whatever the
    shape of the dependence and however it changes with age. `calibration` then maps its
    normal score r to the model's measured correction for people it did not train on
    (see `deviation_calibration`).
    """
    ages = np.asarray(ages, dtype=np.float64)
    d2, r = _raw_deviation_scores(table, codes, ages, z)
    return d2, 100.0 * special.ndtr(calibration.apply(r, ages, codes))


def deviation_over_present(
    table: ReferenceTable,
    codes: np.ndarray,
    ages: np.ndarray,
    z: np.ndarray,
    present: np.ndarray,
    calibration: DeviationCalibration = DeviationCalibration(),
) -> tuple[np.ndarray, np.ndarray]:
    """Squared Mahalanobis distance (n,) over each person's present IDPs (`present`
    (n, D) bool) and its centile (0-100), for people who lack some IDPs.

    A person with every IDP is ranked as `mahalanobis_centile` ranks them: among the
    model's draws at their age, recalibrated. For a person with k < D IDPs, the precision
    of the present sub-vector is the inverse of the correlation submatrix of those IDPs
    (the inverse of the table's precision at each neighbouring grid age, restricted: the
    law of a sub-vector is the marginal, not the conditional, so the full precision cannot
    simply be restricted), and the distance is interpolated between grid ages as the full
    one is. The table stores quantiles of full-vector distances only (a sub-profile's own
    reference would need the draws again for every pattern of missing IDPs), so the
    sub-profile's distance is carried to the full vector's scale where a Gaussian copula
    with that correlation would put it, the full distance at the same chi-square tail
    probability (k degrees of freedom to D; Mardia, Kent & Bibby 1979, *Multivariate
    Analysis*, thm 2.5.2), then ranked among the draws and recalibrated as a full
    vector's. The chi-square centile alone misses both the draws' own law and the
    calibration for new people (benchmarks/RESULTS.md, "Joint model", 5). Nothing is
    read from a missing cell, whatever `z` holds there.
    """
    from scipy import stats

    present = np.asarray(present, dtype=bool)
    ages = np.asarray(ages, dtype=np.float64)
    d2, centile = np.full(len(z), np.nan), np.full(len(z), np.nan)
    whole = present.all(axis=1)
    if whole.any():
        d2[whole], centile[whole] = mahalanobis_centile(
            table, codes[whole], ages[whole], z[whole], calibration
        )
    partial = np.flatnonzero(~whole & present.any(axis=1))
    if len(partial) == 0:
        return d2, centile
    correlation = np.linalg.inv(table.precision)
    i, w = table._age_weights(ages[partial])
    full = np.empty(len(partial))
    patterns, which = np.unique(present[partial], axis=0, return_inverse=True)
    for k, pattern in enumerate(patterns):
        rows = np.flatnonzero(which.reshape(-1) == k)
        zp = z[partial[rows]][:, pattern]
        sides = []
        for g in (i[rows], i[rows] + 1):
            sub = correlation[g][:, pattern][:, :, pattern]
            sides.append(np.einsum("ij,ij->i", zp, np.linalg.solve(sub, zp[..., None])[..., 0]))
        d2[partial[rows]] = sides[0] * (1 - w[rows]) + sides[1] * w[rows]
        tail = stats.chi2.sf(d2[partial[rows]], int(pattern.sum()))
        full[rows] = stats.chi2.isf(np.clip(tail, 1e-300, 1.0), present.shape[1])
    r = _rank_scores(table, codes[partial], i, w, full)
    centile[partial] = 100.0 * special.ndtr(calibration.apply(r, ages[partial], codes[partial]))
    return d2, centile


BEYOND_NOISE = 3.0
"""Standard errors by which a validation estimate of the deviation's shift or spread must
differ from (0, 1) to be applied."""


def deviation_site_shifts(
    table: ReferenceTable, codes: np.ndarray, ages: np.ndarray, z: np.ndarray, column: int
) -> DeviationCalibration:
    """The site shifts (`DeviationCalibration.site_shifts`) of categorical column `column`,
    from people's normal-score vectors z (n, D) as a new person's are read (out of fold),
    the rest of the calibration left as none.

    Why: the denoiser learns the dependence between IDPs mostly from the big sites, and
    a site's scanner and protocol change it, so a small site's new people came out
    atypical and a big site's typical, whatever the pooled calibration did
    (benchmarks/RESULTS.md, "New people by site size"). Each site's mean raw normal
    score, less everyone's, is shrunk towards 0 as a random effect (the between-site
    variance by the method of moments; Searle, Casella & McCulloch, Variance Components,
    1992, ch. 3): a site of a few people keeps little of its own mean, a big one most.
    The people are the model's training people scored by first stages fitted without
    them; the network trained on most of them, which makes them look more typical than
    new people, but alike at every site, and a site's shift is its difference from
    everyone else's. None where sites do not differ beyond noise.
    """
    _, r = _raw_deviation_scores(table, codes, ages, z)
    r = np.clip(r, -4.0, 4.0)
    level = codes[:, column]
    m = int(level.max()) if len(level) else 0
    counts = np.bincount(level, minlength=m + 1)[1:].astype(np.float64)
    sums = np.bincount(level, weights=r - r.mean(), minlength=m + 1)[1:]
    seen = counts > 0
    if seen.sum() < 2:
        return DeviationCalibration()
    means = np.where(seen, sums / np.maximum(counts, 1.0), 0.0)
    within = float(np.sum((r - r.mean() - np.r_[0.0, means][level]) ** 2)) / max(
        len(r) - int(seen.sum()), 1
    )
    between = float(np.var(means[seen], ddof=1) - np.mean(within / counts[seen]))
    if between <= 0.0:
        return DeviationCalibration()
    kept = counts * between / (counts * between + within)
    return DeviationCalibration(site_column=column, site_shifts=tuple((kept * means).tolist()))


def deviation_calibration(
    table: ReferenceTable,
    codes: np.ndarray,
    ages: np.ndarray,
    z: np.ndarray,
    sites: DeviationCalibration = DeviationCalibration(),
    age_range: tuple[float, float] | None = None,
    beyond_noise: float = BEYOND_NOISE,
) -> DeviationCalibration:
    """The correction that makes held-out people's deviation centiles uniform, at every age.

    Why: the distance sums D squared normal scores, so per-IDP errors too small to see in
    any one centile can add up over D IDPs; ranked among the model's own samples, real
    people's distances then come out too spread in both directions, so the correction is
    a shift and a spread of the centiles' normal scores rather than one scale of the
    distance. And how well the model's draws follow real dependence changes with age
    (where coupling grows with age, the young were over-flagged and the old
    under-flagged: benchmarks/RESULTS.md, "Deviation by age"), so shift and log spread may
    each change linearly with age. On people scored as new people are, the normal scores
    of the raw centiles (clipped to +-4, where ranks beyond the samples are extrapolated)
    are regressed on age (least squares), and the log of their absolute residuals on age
    (whose slope is the log spread's). Each of the four numbers is applied only if it is
    `beyond_noise` standard errors from no correction: a few hundred people are
    themselves a sample, and correcting by their noise miscalibrates everyone else
    (README, "How it works", 5). The model measures with 0 and weighs its two
    measurements against each other instead (`corrected_calibration`).

    `sites`: the site shifts (`deviation_site_shifts`), taken off first and kept in the
    result. `age_range`: the ages (years) over which the trend is held and centred (the
    default: these people's youngest and oldest).
    """
    ages = np.asarray(ages, dtype=np.float64)
    _, r = _raw_deviation_scores(table, codes, ages, z)
    r = np.clip(r, -4.0, 4.0) - sites.site_shift(codes)
    n = len(r)
    lo, hi = age_range or (float(ages.min()), float(ages.max()))
    x = np.clip(ages, lo, hi) - 0.5 * (lo + hi)
    sxx = float(((x - x.mean()) ** 2).sum())
    shift_slope = float(((x - x.mean()) * (r - r.mean())).sum() / sxx) if sxx > 0 else 0.0
    residual = r - r.mean() - shift_slope * (x - x.mean())
    sd = max(float(residual.std()), 1e-12)
    if sxx <= 0 or abs(shift_slope) * np.sqrt(sxx) / sd < beyond_noise:
        shift_slope = 0.0
    shift = float((r - shift_slope * x).mean())
    residual = r - shift - shift_slope * x
    log_abs = np.log(np.abs(residual) + 1e-12)
    log_spread_slope = (
        float(((x - x.mean()) * (log_abs - log_abs.mean())).sum() / sxx) if sxx > 0 else 0.0
    )
    # var(log|e|) = pi^2 / 8 for normal e, whatever its spread
    if sxx <= 0 or abs(log_spread_slope) * np.sqrt(sxx / (np.pi**2 / 8)) < beyond_noise:
        log_spread_slope = 0.0
    spread = max(float((residual * np.exp(-log_spread_slope * x)).std()), 1e-12)
    if abs(shift) * np.sqrt(n) / spread < beyond_noise:
        shift = 0.0
    if abs(np.log(spread)) * np.sqrt(2.0 * (n - 1)) < beyond_noise:
        spread = 1.0
    return dataclasses.replace(
        sites, shift=shift, spread=spread, shift_slope=shift_slope,
        log_spread_slope=log_spread_slope, ages=(float(lo), float(hi)),
    )  # fmt: skip


NOISE_SE = 2.0
"""Differences between the deviation calibration's two measurements within this many of
the validation people's standard errors are taken as their noise (`corrected_calibration`)."""


def corrected_calibration(
    start: DeviationCalibration, measured: DeviationCalibration, ages: np.ndarray
) -> DeviationCalibration:
    """`start` moved towards `measured`, number by number, by the share
    max(0, 1 - (NOISE_SE se)^2 / d^2) of their difference d, se being the standard error
    of `measured`'s number over people aged `ages`: a difference within NOISE_SE standard
    errors is taken as the validation people's noise and moves nothing, and beyond it the
    share grows to the whole (Breiman's non-negative garrote, Technometrics 37:373, 1995,
    with its threshold at NOISE_SE standard errors). Both must share their site shifts
    and age range.

    Why: the model measures the calibration twice (`_calibrate_deviation` in
    normcore.model). Its out-of-fold training people (`start`) are many but can look more
    typical than new people, as the network trained on most of them; its validation
    people (`measured`) are new to the network but few. Each alone failed somewhere: the
    validation people alone over-corrected fcon1000's oldest fifth (78 of them), and a
    start kept unless the validation people differed by 3 standard errors left a
    synthetic truth's optimism at 100 IDPs uncorrected. The composite estimator's share
    d^2 / (d^2 + se^2) (Rao & Molina 2015, *Small Area Estimation*, 2nd ed., sec. 3.3),
    used before, took most of a difference of two standard errors, which at 2 IDPs was
    the validation people's chance and put four of five fits beyond noise
    (benchmarks/RESULTS.md, "How the deviation's calibration is measured", over five
    seeds of every truth).
    """
    return moved_calibration(start, measured, ages, garrote_share)


def garrote_share(d: float, se: float) -> float:
    """The share of a difference d (of standard error se) that `corrected_calibration`
    takes: none within NOISE_SE standard errors, then growing to the whole."""
    return max(0.0, 1.0 - (NOISE_SE * se) ** 2 / (d * d))


def moved_calibration(
    start: DeviationCalibration, measured: DeviationCalibration, ages: np.ndarray,
    share: Callable[[float, float], float],
) -> DeviationCalibration:  # fmt: skip
    """`start` with each of its four numbers moved towards `measured`'s by share(d, se) of
    their difference d (the spread's on the log scale), se being the standard error of
    `measured`'s number over people aged `ages`: the one way the model, and the
    benchmark's other rules, combine the calibration's two measurements."""
    se = calibration_standard_errors(measured, ages)

    def toward(a: float, b: float, se: float) -> float:
        d = b - a
        return a + d * share(d, se) if d else a

    log_spread = toward(np.log(start.spread), np.log(measured.spread), se.log_spread)
    return dataclasses.replace(
        start,
        shift=toward(start.shift, measured.shift, se.shift),
        spread=float(np.exp(log_spread)),
        shift_slope=toward(start.shift_slope, measured.shift_slope, se.shift_slope),
        log_spread_slope=toward(
            start.log_spread_slope, measured.log_spread_slope, se.log_spread_slope
        ),
    )


class CalibrationErrors(NamedTuple):
    """Standard errors of a `DeviationCalibration`'s four numbers (the spread's on the
    log scale)."""

    shift: float
    log_spread: float
    shift_slope: float
    log_spread_slope: float


def calibration_standard_errors(
    measured: DeviationCalibration, ages: np.ndarray
) -> CalibrationErrors:
    """The standard errors of `measured`'s numbers, measured on people aged `ages`, as
    `deviation_calibration` tests them (var(log|e|) = pi^2 / 8 for normal e)."""
    lo, hi = measured.ages
    x = np.clip(np.asarray(ages, dtype=np.float64), lo, hi) - 0.5 * (lo + hi)
    n, sxx = len(x), max(float(((x - x.mean()) ** 2).sum()), 1e-12)
    return CalibrationErrors(
        shift=measured.spread / np.sqrt(n),
        log_spread=1.0 / np.sqrt(2.0 * max(n - 1, 1)),
        shift_slope=measured.spread / np.sqrt(sxx),
        log_spread_slope=float(np.sqrt(np.pi**2 / 8 / sxx)),
    )
