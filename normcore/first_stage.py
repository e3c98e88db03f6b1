"""The first stage: per-IDP location, spread and shape in age, as one estimator.

`FirstStage` chains the three steps of `normcore.preprocessing` (standardise each IDP,
a location-scale model in age and the categorical covariates, a monotone shape in age)
and maps the people it was fitted on to near-standard-normal **normal scores**, the
quantity the denoiser models. Its shape follows scikit-learn's estimators and
PCNtoolkit's regression models: `fit`, `transform` (forward, values to normal scores),
`inverse` (backward, scores to values), `with_level` (transfer to a new site).

A new person's score also carries the error of the first stage's estimates: a site's
mean learned from a few people, a local quantile of the shape. `new_person_spread`
measures that by K-fold cross-validation and describes it as a scaled Student-t
(`NewPersonSpread`), which the model applies to its draws so that its bands hold for new
people and not only for the training ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from normcore.preprocessing import AgeShape, IDPTransform, LocationScale
from normcore.reference import PROBABILITY_LEVELS, Z_BOUND, scores_at

FOLDS = 5
MIN_ROWS = 50
"""Below this many people the cross-validation is too noisy to act on."""
MAX_DOF = 100.0
"""Tails this close to normal are treated as normal."""


class FirstStage:
    """Raw IDP values <-> normal scores, given standardised ages and category codes.

    `fit` learns `transform_` (IDPTransform), `location_scale_` (LocationScale) and
    `shape_` (AgeShape), with the steps' own defaults. `log_positive` says which IDPs
    positive in every training row are modelled on the log scale: None (the default)
    chooses per IDP by the data (`choose_log_scale`); True puts them all there, False
    none (the comparisons the choice is measured against, benchmarks/edges.py); a
    per-IDP sequence reuses a choice already made, so that the first stages of one
    model (training split, all rows, cross-validation folds) share one scale per IDP.
    """

    def __init__(self, log_positive: bool | Sequence[bool] | None = None) -> None:
        self.log_positive = log_positive

    def fit(
        self,
        values: np.ndarray,
        age_z: np.ndarray,
        codes: np.ndarray,
        n_levels: list[int],
        rows: np.ndarray | None = None,
    ) -> FirstStage:
        """Fit the three steps on `rows` (default: all) of (n, D) raw `values`; each step
        is fitted on the output of the one before."""
        rows = np.arange(len(values)) if rows is None else rows
        if self.log_positive is None:
            return choose_log_scale(values, age_z, codes, n_levels, rows)
        log = np.all(values[rows] > 0, axis=0) & np.asarray(self.log_positive, dtype=bool)
        return self._fit_steps(values, age_z, codes, n_levels, rows, log)

    def _fit_steps(
        self,
        values: np.ndarray,
        age_z: np.ndarray,
        codes: np.ndarray,
        n_levels: list[int],
        rows: np.ndarray,
        log: np.ndarray,
    ) -> FirstStage:
        self.transform_ = IDPTransform.fit(values[rows], log)
        resid = self.transform_.transform(values)
        self.location_scale_ = LocationScale.fit(resid[rows], age_z[rows], codes[rows], n_levels)
        resid = self.location_scale_.transform(resid, age_z, codes)
        self.shape_ = AgeShape.fit(resid[rows], age_z[rows])
        return self

    def transform(self, values: np.ndarray, age_z: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Raw values (n, D) -> normal scores at each row's age and levels."""
        resid = self.location_scale_.transform(self.transform_.transform(values), age_z, codes)
        return self.shape_.transform(resid, age_z)

    def inverse(self, scores: np.ndarray, age_z: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Normal scores (n, D) -> raw values; monotone per IDP, so quantiles map to
        quantiles."""
        resid = self.location_scale_.inverse(self.shape_.inverse(scores, age_z), age_z, codes)
        return self.transform_.inverse(resid)

    def with_level(
        self,
        k: int,
        code: int,
        values: np.ndarray,
        age_z: np.ndarray,
        codes: np.ndarray,
        prior_n: float,
    ) -> FirstStage:
        """A copy whose level `code` of categorical `k` is learned from the raw `values` of
        controls that all hold it (`LocationScale.with_level`, shrunk towards its start by
        a prior worth `prior_n` people); the standardisation and the shape are kept."""
        new = FirstStage()
        new.transform_, new.shape_ = self.transform_, self.shape_
        new.location_scale_ = self.location_scale_.with_level(
            k, code, self.transform_.transform(values), age_z, codes, prior_n=prior_n
        )
        return new

    @property
    def n_idps(self) -> int:
        return len(self.transform_.loc)

    def to_dict(self) -> dict:
        """JSON-able parts, under the keys the bundle stores them."""
        return {
            "transform": self.transform_.to_dict(),
            "location_scale": self.location_scale_.to_dict(),
            "shape": self.shape_.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> FirstStage:
        stage = cls()
        stage.transform_ = IDPTransform.from_dict(d["transform"])
        stage.location_scale_ = LocationScale.from_dict(d["location_scale"])
        stage.shape_ = AgeShape.from_dict(d["shape"])
        return stage


CHOICE_HELD_OUT = 5
"""One person in this many is held out when the scale of positive IDPs is chosen."""
_SAFETY_AGES = 41


def lowest_score(spread: NewPersonSpread | None = None) -> float:
    """The lowest normal score any centile of a first-stage margin reaches at a
    probability the model accepts: the reference table's tabled margin (`spread`'s
    quantiles at the table's z-levels; without a spread, standard normal) read at
    z = -Z_BOUND by `reference.scores_at`, tail extrapolation included. A Student-t
    spread reaches much further than Z_BOUND (about -10.7 for scale 1, 8 degrees of
    freedom): that, not -Z_BOUND, is what a raw-scale IDP must stay positive at."""
    from scipy import stats  # fitting only, here and below: scoring never loads scipy.stats

    spread = spread or NewPersonSpread(1.0, None)
    margin = spread.quantiles(PROBABILITY_LEVELS)[None, :, None]
    lowest = scores_at(margin, np.array([stats.norm.cdf(-Z_BOUND)]))[0, 0, 0]
    return float(lowest * spread.largest_factor())


def choose_log_scale(
    values: np.ndarray,
    age_z: np.ndarray,
    codes: np.ndarray,
    n_levels: list[int],
    rows: np.ndarray,
    floor_score: float | None = None,
) -> FirstStage:
    """A first stage fitted on `rows` with each IDP that is positive in every row on the
    scale that fits it better: raw units or the log, chosen per IDP by the data.

    Why choose: the log guarantees positive centiles and suits an IDP whose spread grows
    with its mean (ventricles: multiplicative, skewed, near zero), but where sex, site and
    age act additively in raw units (most thicknesses and volumes far from zero, and the
    synthetic benchmark's IDPs) the log bends those effects into interactions that the
    location-scale model lacks, and the centiles lose accuracy (benchmarks/RESULTS.md,
    "Edges of the age range"). The criterion is the held-out log-likelihood in raw units,
    so that the two scales are comparable: every CHOICE_HELD_OUT-th person (a fixed
    permutation) is left out, both scales are fitted on the rest, and each IDP's left-out
    people score sum log phi(score) + log |d score / d y| (the change-of-variables
    density of y; the derivative by central differences of the whole map, so the log's
    Jacobian 1 / y and the shape's local slope are both in it). Raw units are kept only
    if they fit better and are safe: with every row fitted, the centile at normal score
    `floor_score` (default `lowest_score()`, the most extreme a stage without a
    new-person spread is read at) stays positive at every age of the training range
    (means and spreads are held beyond it) for every combination of levels in the
    training rows and the unknown level; else the log. Below MIN_ROWS people the
    held-out likelihood is too noisy and every positive IDP goes on the log scale.
    """
    positive = np.all(values[rows] > 0, axis=0)
    log = positive.copy()
    if positive.any() and len(rows) >= MIN_ROWS:
        order = np.random.default_rng(0).permutation(len(rows))
        held = rows[order % CHOICE_HELD_OUT == 0]
        kept = rows[order % CHOICE_HELD_OUT != 0]
        cols = np.flatnonzero(positive)
        fit_on = values[:, cols]
        likelihood = [
            held_out_log_likelihood(
                FirstStage()._fit_steps(
                    fit_on, age_z, codes, n_levels, kept, np.full(len(cols), on_log)
                ),
                fit_on[held], age_z[held], codes[held],
            )
            for on_log in (False, True)
        ]
        log[cols[likelihood[0] > likelihood[1]]] = False
    stage = FirstStage()._fit_steps(values, age_z, codes, n_levels, rows, log)
    floor = lowest_score() if floor_score is None else floor_score
    unsafe = unsafe_raw(stage, positive, age_z[rows], codes[rows], floor)
    if unsafe.any():
        stage = FirstStage()._fit_steps(values, age_z, codes, n_levels, rows, log | unsafe)
    return stage


def unsafe_raw(
    stage: FirstStage,
    positive: np.ndarray,
    age_z: np.ndarray,
    codes: np.ndarray,
    floor_score: float,
) -> np.ndarray:
    """(D,) bool: `positive` IDPs (positive in every row `stage` was fitted on) that it
    keeps in raw units although their centile at normal score `floor_score` is not
    positive somewhere (`lowest_centile`)."""
    raw = positive & ~stage.transform_.log
    if not raw.any():
        return raw
    return raw & (lowest_centile(stage, age_z, codes, floor_score) <= 0)


def held_out_log_likelihood(
    stage: FirstStage, values: np.ndarray, age_z: np.ndarray, codes: np.ndarray
) -> np.ndarray:
    """Per IDP, the log-likelihood in raw units of positive `values` (n, D) under `stage`:
    sum over rows of log phi(score) + log |d score / d y|, the derivative by central
    differences at y (1 +- 1e-6)."""
    from scipy import stats

    step = 1e-6 * values
    up = stage.transform(values + step, age_z, codes)
    down = stage.transform(values - step, age_z, codes)
    slope = np.abs(up - down) / (2.0 * step)
    with np.errstate(divide="ignore"):
        density = stats.norm.logpdf(stage.transform(values, age_z, codes)) + np.log(slope)
    return density.sum(axis=0)


def lowest_centile(
    stage: FirstStage, age_z: np.ndarray, codes: np.ndarray, score: float
) -> np.ndarray:
    """Per IDP, the lowest value `stage` gives at normal score `score` over an age grid
    spanning `age_z` and every combination of levels in `codes` plus the unknown one."""
    ages = np.linspace(age_z.min(), age_z.max(), _SAFETY_AGES)
    combos = np.unique(np.vstack([codes, np.zeros((1, codes.shape[1]), codes.dtype)]), axis=0)
    grid_ages = np.tile(ages, len(combos))
    grid_codes = np.repeat(combos, len(ages), axis=0)
    scores = np.full((len(grid_ages), stage.n_idps), score)
    return stage.inverse(scores, grid_ages, grid_codes).min(axis=0)


def site_factor_at(site_term: float, inverse: np.ndarray) -> np.ndarray:
    """sqrt(1 + site_term * inverse): how much wider than a big site's a new person's
    scores are spread, at sums of 1 / (training people of each level) `inverse`
    (`NewPersonSpread`)."""
    return np.sqrt(1.0 + site_term * np.asarray(inverse))


class NewPersonSpread(NamedTuple):
    """How the first stage's scores of people it did not see are spread: a scale and, for
    heavy tails, the degrees of freedom of a Student-t (None: normal), for a person of a
    level the first stage learned from many people; and `site_term`, the extra variance
    per 1 / (training people of the person's level), summed over the categorical columns
    (`level_counts`: training people per level code 1..m of each column).

    Why the site term: a site's mean and spread are learned from its own people, so a
    new person of a site with 9 training people is scored with far more error than one
    of a site with 99. One pooled spread is then too wide for the big sites and too
    narrow for the small ones (benchmarks/RESULTS.md, "New people by site size"). The
    error of an estimate from n people shrinks as 1 / n,
    hence a variance scale^2 (1 + site_term * sum_c 1 / n_c). Unknown levels (code 0) and
    levels added by adaptation (beyond `level_counts`) add nothing: the first stage has
    no effect of theirs to be wrong about (an adapted site has its own posterior
    predictive, `joint.with_site_uncertainty`)."""

    scale: float
    dof: float | None
    site_term: float = 0.0
    level_counts: tuple[tuple[int, ...], ...] = ()

    def quantiles(self, probs: np.ndarray) -> np.ndarray:
        """Quantiles at `probs` of standard normal draws given this spread, for a level
        learned from many people: what the model draws if its denoiser adds nothing to
        the first stage's margins."""
        from scipy import stats

        if self.dof is None:
            return self.scale * stats.norm.ppf(probs)
        return self.scale * stats.t.ppf(probs, self.dof)

    def site_factor(self, codes: np.ndarray) -> np.ndarray:
        """(n,) the factor sqrt(1 + site_term * sum_c 1 / n_c) by which new people of the
        level combinations `codes` (n, K) are spread beyond `quantiles`' (see the class)."""
        codes = np.asarray(codes)
        if self.site_term <= 0.0:
            return np.ones(len(codes))
        return self.factor_at(inverse_level_counts(codes, self.level_counts))

    def factor_at(self, inverse: np.ndarray) -> np.ndarray:
        """The site factor at sums of 1 / (training people of each level) `inverse`."""
        return site_factor_at(self.site_term, inverse)

    def largest_factor(self) -> float:
        """The site factor of the level with the fewest training people (1 without a
        site term): how far beyond `quantiles` any new person's score may reach."""
        if self.site_term <= 0.0 or not self.level_counts:
            return 1.0
        fewest = sum(
            1.0 / min(n for n in counts if n > 0)
            for counts in self.level_counts
            if any(n > 0 for n in counts)
        )
        return float(self.factor_at(fewest))

    def widen(self, draws: np.ndarray, seed: int) -> np.ndarray:
        """`draws` (n, D) spread as new people's scores of a well-learned level are: the
        scale, and for heavy tails a Student-t scale mixture with one chi-squared factor
        per draw, shared by its IDPs (a multivariate t: each IDP's margin is the same
        Student-t). The site factor is applied where scores meet raw values
        (`NewPeopleStage`), so that the reference table stays one for every site.

        Why one factor per draw: a factor per IDP would leave the margins as they are but
        scramble the relations between IDPs. Real IDPs hold near-exact linear ones (a
        total volume and its parts), and independent factors would blur them into
        directions real people never take: real profiles would then look more typical
        than the model's own draws, and the multivariate deviation would under-flag
        (README, "How it works", 1)."""
        if self.dof is None:
            return draws * self.scale
        rng = np.random.default_rng([seed, 5])
        factor = np.sqrt(self.dof / rng.chisquare(self.dof, size=(len(draws), 1)))
        return draws * self.scale * factor

    def as_training_scores(self, scores: np.ndarray) -> np.ndarray:
        """New people's scores (their site factor taken out) on the training people's
        scale, Phi^-1 of this spread's CDF: the scale on which the denoiser learned the
        joint law, so that conditional draws meet a new person's values as the reference
        table's margins meet their plain scores (normcore.conditional). Without it, a
        held-out person's conditional law is too narrow by the spread's scale and tails
        (benchmarks/RESULTS.md, "Conditional centiles on fcon1000")."""
        from scipy import special, stats

        scores = np.asarray(scores, dtype=float)
        if self.dof is None:
            return scores / self.scale
        tail = stats.t.sf(np.abs(scores) / self.scale, self.dof)
        return np.sign(scores) * -special.ndtri(tail)  # each side from its own tail

    def from_training_scores(self, scores: np.ndarray) -> np.ndarray:
        """The inverse of `as_training_scores`: draws on the training people's scale as
        a new person's scores (imputed bands)."""
        from scipy import special, stats

        scores = np.asarray(scores, dtype=float)
        if self.dof is None:
            return scores * self.scale
        tail = special.ndtr(-np.abs(scores))
        return np.sign(scores) * stats.t.isf(tail, self.dof) * self.scale

    def to_dict(self) -> dict:
        out: dict = {"scale": self.scale, "dof": self.dof}
        if self.site_term > 0.0:  # files of models without one stay as they were
            out["site_term"] = self.site_term
            out["level_counts"] = [list(c) for c in self.level_counts]
        return out

    @classmethod
    def from_dict(cls, d: dict) -> NewPersonSpread:
        return cls(
            float(d["scale"]),
            None if d["dof"] is None else float(d["dof"]),
            float(d.get("site_term", 0.0)),
            tuple(tuple(int(n) for n in counts) for counts in d.get("level_counts", ())),
        )


def level_counts(codes: np.ndarray, n_levels: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """People per level code 1 .. n_levels[k] - 1 of each categorical column k of `codes`
    (n, K); `n_levels` counts the unknown code 0 (`CovariateEncoder.n_levels`)."""
    return tuple(
        tuple(int(c) for c in np.bincount(codes[:, k], minlength=m)[1:m])
        for k, m in enumerate(n_levels)
    )


def people_of_levels(codes: np.ndarray, counts: Sequence[Sequence[int]]) -> np.ndarray:
    """(n, K) the people of each row's level in each categorical column's `counts`; 0 for
    an unknown level or one beyond `counts`."""
    out = np.zeros((len(codes), len(counts)))
    for k, per_level in enumerate(counts):
        n = np.concatenate([[0], np.asarray(per_level, dtype=np.float64)])
        code = codes[:, k]
        known = (code >= 1) & (code < len(n))
        out[known, k] = n[code[known]]
    return out


def inverse_level_counts(codes: np.ndarray, counts: Sequence[Sequence[int]]) -> np.ndarray:
    """(n,) sum over categorical columns of 1 / (people of the row's level in `counts`);
    an unknown level, one beyond `counts` or one with nobody adds nothing."""
    people = people_of_levels(codes, counts)
    return np.where(people > 0, 1.0 / np.maximum(people, 1.0), 0.0).sum(axis=1)


class NewPeopleStage(NamedTuple):
    """The first stage as it maps *new* people: scores divided by their level's site
    factor (`NewPersonSpread.site_factor`), so that a new person of any site is on the
    reference table's one scale, and table scores multiplied by it on the way back to raw
    values (centiles, draws, imputed bands). The training people's own scores, which the
    denoiser learns from, go through the plain first stage."""

    stage: FirstStage
    spread: NewPersonSpread

    def transform(self, values: np.ndarray, age_z: np.ndarray, codes: np.ndarray) -> np.ndarray:
        scores = self.stage.transform(values, age_z, codes)
        return scores / self.spread.site_factor(codes)[:, None]

    def inverse(self, scores: np.ndarray, age_z: np.ndarray, codes: np.ndarray) -> np.ndarray:
        scaled = scores * self.spread.site_factor(codes)[:, None]
        return self.stage.inverse(scaled, age_z, codes)


def t_match(median_abs: float, q95_abs: float) -> tuple[float, float | None]:
    """(scale, degrees of freedom) of the scaled Student-t whose |t| has this median and
    95th percentile; dof None means normal (tails no heavier than a normal's)."""
    from scipy import optimize, stats

    normal = (stats.norm.ppf(0.75), stats.norm.ppf(0.975))
    ratio = q95_abs / median_abs

    def tail_ratio(dof: float) -> float:
        return stats.t.ppf(0.975, dof) / stats.t.ppf(0.75, dof)

    if ratio <= tail_ratio(MAX_DOF):
        return median_abs / normal[0], None
    dof = (
        2.5
        if ratio >= tail_ratio(2.5)
        else optimize.brentq(lambda v: tail_ratio(v) - ratio, 2.5, MAX_DOF)
    )
    return median_abs / stats.t.ppf(0.75, dof), float(dof)


class OutOfFold(NamedTuple):
    """Every person's scores (n, D) under a first stage fitted without them (K-fold), and
    the sum over categorical columns of 1 / (people of their level in that fold's
    training) (n,): nan for a person whose level had nobody there (the model has seen
    their level, so their score says nothing of the model's own error)."""

    scores: np.ndarray
    inverse: np.ndarray

    def new_people(self, spread: NewPersonSpread) -> np.ndarray:
        """The scores as a new person's are read (divided by the site factor with the
        fold's counts), nan for the people left out."""
        return self.scores / spread.factor_at(self.inverse)[:, None]


def out_of_fold(
    values: np.ndarray,
    age_z: np.ndarray,
    codes: np.ndarray,
    n_levels: list[int],
    seed: int,
    log_positive: bool | Sequence[bool] | None = None,
) -> OutOfFold:
    """The K-fold scores of `OutOfFold`; `log_positive`: the model's scale per IDP (see
    `FirstStage`), which every fold keeps."""
    n = len(values)
    fold = np.random.default_rng([seed, 11]).permutation(n) % FOLDS
    scores = np.empty(values.shape, dtype=np.float64)
    inverse = np.zeros(n)
    for k in range(FOLDS):
        held = fold == k
        stage = FirstStage(log_positive).fit(
            values, age_z, codes, n_levels, np.flatnonzero(~held)
        )
        scores[held] = stage.transform(values[held], age_z[held], codes[held])
        counts = level_counts(codes[~held], n_levels)
        people = people_of_levels(codes[held], counts)
        unseen = ((codes[held] >= 1) & (people == 0)).any(axis=1)
        inverse[held] = np.where(unseen, np.nan, inverse_level_counts(codes[held], counts))
    return OutOfFold(scores, inverse)


def new_person_spread(
    values: np.ndarray,
    age_z: np.ndarray,
    codes: np.ndarray,
    n_levels: list[int],
    seed: int,
    inside: np.ndarray | None = None,
    log_positive: bool | Sequence[bool] | None = None,
    folds: OutOfFold | None = None,
) -> NewPersonSpread:
    """How the first stage's scores of new people are spread (a scaled Student-t, wider
    for a level learned from few people: `NewPersonSpread`).

    From the out-of-fold scores (`out_of_fold`; `folds`, if the caller has them), the
    site term first (`site_term`): how much more widely the scores of people whose level
    had few people in their fold are spread. Then, with each score divided by its site
    factor, the |score| median and 95th percentile, pooled over people and IDPs and taken
    relative to the in-sample ones (so that only what is due to not being seen counts),
    give the t; its excess over normal is scaled by (K - 1) / K: the model's own first
    stage sees all n people, and estimation error shrinks about as 1 / n (the site term
    is applied with the model's own counts). People whose level had nobody in their
    fold's training are left out. `inside`: the in-sample scores, if the caller already
    has them; `log_positive`: the model's scale per IDP (see `FirstStage`).
    """
    from scipy import stats

    n = len(values)
    if n < MIN_ROWS:
        return NewPersonSpread(1.0, None)
    if inside is None:
        inside = (
            FirstStage(log_positive).fit(values, age_z, codes, n_levels)
            .transform(values, age_z, codes)
        )
    if folds is None:
        folds = out_of_fold(values, age_z, codes, n_levels, seed, log_positive)
    kept = np.isfinite(folds.inverse)
    inverse = folds.inverse
    if kept.sum() < MIN_ROWS:  # most levels too small to leave out: one spread for all
        kept, inverse = np.ones(n, dtype=bool), np.zeros(n)
    inside, outside, inverse = np.abs(inside[kept]), np.abs(folds.scores[kept]), inverse[kept]
    term = site_term(inside, outside, inverse)
    outside = outside / site_factor_at(term, inverse)[:, None]
    shrink = (FOLDS - 1) / FOLDS
    targets = []
    for level in (0.5, 0.95):
        normal = stats.norm.ppf(0.5 + level / 2)
        ratio = np.quantile(outside, level) / np.quantile(inside, level)
        targets.append(normal * max(1.0, 1.0 + (ratio - 1.0) * shrink))
    return NewPersonSpread(*t_match(*targets), term, level_counts(codes, n_levels) if term else ())


SITE_BINS = 10
"""Groups of people, by their level's size, in which `site_term` compares spreads."""
SITE_QUANTILE = 0.75
"""The quantile of |score| whose growth with 1 / n sets the site term. A small site's
errors are heavier-tailed than a big one's (its spread, not only its mean, is learned
from few people), so one factor cannot match every quantile: on sites of 8 and of 240
people, the median under-corrected a small site's 95 % band and the 90th percentile
over-corrected it; the 75th, between the 50 % band's edge (the median of |score|) and
the 95 % band's, came close to 5 % at both (benchmarks/RESULTS.md, "New
people by site size")."""
MAX_SITE_TERM = 20.0
"""Largest site term measured or accepted from a file: a site of 5 people then has its
new people's scores spread 2.2 times as wide as a big site's."""


def site_term(inside: np.ndarray, outside: np.ndarray, inverse: np.ndarray) -> float:
    """The extra variance of new people's scores per 1 / (training people of their level):
    people are put in SITE_BINS groups by `inverse` (n,), the sum of 1 / count of their
    levels; in each, the squared ratio of the out-of-fold to the in-sample SITE_QUANTILE
    of |score| ((n, D) each) is fitted as c (1 + term * inverse) by weighted least
    squares. 0 when the levels' sizes hardly differ or the fit finds no growth."""
    bins = min(SITE_BINS, len(inverse) // 20)
    if bins < 3 or np.ptp(inverse) < 1e-3:
        return 0.0
    groups = np.array_split(np.argsort(inverse, kind="stable"), bins)
    x = np.array([inverse[g].mean() for g in groups])
    y = np.array(
        [
            (np.quantile(outside[g], SITE_QUANTILE) / np.quantile(inside[g], SITE_QUANTILE)) ** 2
            for g in groups
        ]
    )
    w = np.array([len(g) for g in groups], dtype=np.float64)
    design = np.column_stack([np.ones_like(x), x]) * np.sqrt(w)[:, None]
    (c0, c1), *_ = np.linalg.lstsq(design, y * np.sqrt(w), rcond=None)
    if c0 <= 0.0 or c1 <= 0.0:
        return 0.0
    return float(min(c1 / c0, MAX_SITE_TERM))


class ModelStages(NamedTuple):
    """A model's first stages, one scale per IDP: `split` fitted on the training split
    (the network and its calibration see scores of validation people it did not fit),
    `kept` on every row (the margins the model keeps: each IDP's mean, spread and shape
    gain from more people), the new-person `spread` of the kept one, and `new_scores`
    (n, D): every person's scores as a new person's (`OutOfFold.new_people`; nan for
    those left out), None below MIN_ROWS people."""

    split: FirstStage
    kept: FirstStage
    spread: NewPersonSpread
    new_scores: np.ndarray | None


def fit_model_stages(
    values: np.ndarray,
    age_z: np.ndarray,
    codes: np.ndarray,
    n_levels: list[int],
    train_rows: np.ndarray,
    seed: int,
) -> ModelStages:
    """The first stages and new-person spread of one model, each positive IDP on one scale.

    The split stage chooses the scale (`choose_log_scale`); the kept stage and the spread's
    folds reuse it. Raw units must then stay positive at the most extreme centile the model
    answers, which only the spread says: its Student-t tails, read at z = -Z_BOUND, reach
    normal scores far beyond -Z_BOUND (`lowest_score`). An IDP whose kept stage is not
    positive there goes on the log scale and everything is refitted; the spread, pooled
    over IDPs, may then change, so this repeats until no raw IDP is unsafe (at most once
    per positive IDP: an IDP never leaves the log)."""
    positive = np.all(values > 0, axis=0)
    log: np.ndarray | None = None
    while True:
        split = FirstStage(log).fit(values, age_z, codes, n_levels, train_rows)
        log = split.transform_.log
        kept = FirstStage(log).fit(values, age_z, codes, n_levels)
        folds = (
            out_of_fold(values, age_z, codes, n_levels, seed, log)
            if len(values) >= MIN_ROWS
            else None
        )
        spread = new_person_spread(
            values, age_z, codes, n_levels, seed,
            inside=kept.transform(values, age_z, codes), log_positive=log, folds=folds,
        )  # fmt: skip
        unsafe = unsafe_raw(kept, positive, age_z, codes, lowest_score(spread))
        if not unsafe.any():
            new_scores = None if folds is None else folds.new_people(spread)
            return ModelStages(split, kept, spread, new_scores)
        log = log | unsafe
