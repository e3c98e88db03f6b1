"""The first stage as one unit: fitted, applied, and checked on people it did not see.

The first stage (`normcore.preprocessing`: standardise, location-scale in age, shape in
age) maps the people it was fitted on to near-standard-normal scores. A new person's
score also carries the error of its estimates: a site's mean learned from a few people,
a local quantile of the shape. `predictive` measures that by K-fold cross-validation and
describes it as a scaled Student-t, which the model applies to its draws so that its
bands hold for new people and not only for the training ones.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, stats

from normcore.preprocessing import AgeShape, IDPTransform, LocationScale

Stage = tuple[IDPTransform, LocationScale, AgeShape]

FOLDS = 5
MIN_ROWS = 50
"""Below this many people the cross-validation is too noisy to act on."""
MAX_DOF = 100.0
"""Tails this close to normal are treated as normal."""


def fit(
    values: np.ndarray, age_z: np.ndarray, codes: np.ndarray, n_levels: list[int], rows: np.ndarray
) -> Stage:
    """Scaling, location-scale and shape fitted on `rows` of (n, D) `values`."""
    transform = IDPTransform.fit(values[rows])
    resid = transform.transform(values)
    location_scale = LocationScale.fit(resid[rows], age_z[rows], codes[rows], n_levels)
    resid = location_scale.transform(resid, age_z, codes)
    return transform, location_scale, AgeShape.fit(resid[rows], age_z[rows])


def scores(stage: Stage, values: np.ndarray, age_z: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """User units -> the normal-score units the denoiser models."""
    transform, location_scale, shape = stage
    resid = location_scale.transform(transform.transform(values), age_z, codes)
    return shape.transform(resid, age_z)


def t_match(median_abs: float, q95_abs: float) -> tuple[float, float | None]:
    """(scale, degrees of freedom) of the scaled Student-t whose |t| has this median and
    95th percentile; dof None means normal (tails no heavier than a normal's)."""
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


def predictive(
    values: np.ndarray,
    age_z: np.ndarray,
    codes: np.ndarray,
    n_levels: list[int],
    seed: int,
    inside: np.ndarray | None = None,
) -> tuple[float, float | None]:
    """How the first stage's scores of new people are spread: (scale, dof) of a Student-t.

    K-fold: each person is scored by a first stage fitted without them. Their |score|
    median and 95th percentile, pooled over people and IDPs and taken relative to the
    in-sample ones (so that only what is due to not being seen counts), give the t. The
    excess over normal is scaled by (K - 1) / K: the model's own first stage sees all n
    people, and estimation error shrinks about as 1 / n. fcon1000 (445 people, 22 sites):
    out of fold, 90.5 % of scores fell in the 95 % band (a t with ~7 dof); synthetic,
    3,000 people: 94.7 %. `inside`: the in-sample scores, if the caller already has them.
    """
    n = len(values)
    if n < MIN_ROWS:
        return 1.0, None
    if inside is None:
        inside = scores(fit(values, age_z, codes, n_levels, np.arange(n)), values, age_z, codes)
    inside = np.abs(inside)
    fold = np.random.default_rng([seed, 11]).permutation(n) % FOLDS
    outside = np.empty_like(inside)
    for k in range(FOLDS):
        held = fold == k
        stage = fit(values, age_z, codes, n_levels, np.flatnonzero(~held))
        outside[held] = np.abs(scores(stage, values[held], age_z[held], codes[held]))
    shrink = (FOLDS - 1) / FOLDS
    targets = []
    for level in (0.5, 0.95):
        normal = stats.norm.ppf(0.5 + level / 2)
        ratio = np.quantile(outside, level) / np.quantile(inside, level)
        targets.append(normal * max(1.0, 1.0 + (ratio - 1.0) * shrink))
    return t_match(*targets)


def predictive_quantiles(spread: tuple[float, float | None], probs: np.ndarray) -> np.ndarray:
    """Quantiles at `probs` of standard normal draws given the new-person `spread`
    (scale, dof) of `predictive`: what the model draws if its denoiser adds nothing to the
    first stage's margins."""
    scale, dof = spread
    return scale * (stats.norm.ppf(probs) if dof is None else stats.t.ppf(probs, dof))
