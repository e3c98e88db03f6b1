"""Centiles of IDPs given other IDPs, and bands of IDPs a person lacks, from conditional draws.

The reference table answers "where does this value fall among people of this age, sex and
site"; a clinician also asks "... and this head size" or "... and the rest of this brain",
and a table may lack some IDPs of a person. One masked denoiser answers every such question
(CSDI-style random conditioning masks; normcore.train.conditioning_masks): for each person,
`DRAWS` draws of the IDPs not given are made with the given IDPs' normal scores clamped
(JointModel.draw_given), and

- the conditional centile of an IDP not given is the share of its draws below the person's
  normal score, read from a kernel-smoothed CDF (`smoothed_cdf`), with its Monte-Carlo
  standard error;
- the band of an IDP the person lacks is its draws' quantiles (`draw_quantiles`).

Everything is in the first stage's normal-score units: the first stage maps values to
scores and bands back to values at the person's own covariates, as for the reference
table. Why draws and not a table: a given set and its values are the person's own, so
nothing can be tabulated in advance; the cost is DRAWS x sampling steps network passes per
person, batched over people (README, "Conditional centiles").
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr, ndtri

from normcore.joint import CHUNK, JointModel

DRAWS = 400
"""Conditional draws per person: with the smoothed CDF, a centile's Monte-Carlo standard
error is at most about 2.5 points and 1.3 on average (README, "Conditional centiles")."""
Z_BOUND = 6.0
"""|z| of a conditional centile is clipped here, as the reference table clips its z."""


def conditional_draws(
    joint: JointModel,
    age_z: np.ndarray,
    codes: np.ndarray,
    scores: np.ndarray,
    given: np.ndarray,
    draws: int = DRAWS,
    seed: int = 0,
) -> np.ndarray:
    """`draws` draws (n, draws, D) of each row's normal scores given its cells marked in
    `given` (n, D) bool, whose `scores` (n, D) are used (other cells may be nan).

    People are drawn in blocks of about CHUNK rows, so memory stays bounded and people who
    share a given set share each network pass.
    """
    n, d = scores.shape
    out = np.empty((n, draws, d))
    block = max(1, CHUNK // draws)
    values = np.where(given, scores, 0.0)
    for b, s in enumerate(range(0, n, block)):
        rows = np.repeat(np.arange(s, min(s + block, n)), draws)
        drawn = joint.draw_given(age_z[rows], codes[rows], given[rows], values[rows], seed + b)
        out[s : s + block] = drawn.reshape(-1, draws, d)
    return out


def smoothed_cdf(draws: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P(X <= at) per row and IDP from draws (n, K, D) of X, and its Monte-Carlo standard
    error: both (n, D).

    A Gaussian kernel (Silverman's bandwidth h = 0.9 min(sd, IQR / 1.34) K^-1/5) turns the
    share of draws below a value into a smooth function of it, with less Monte-Carlo error
    than a count of K draws. The draws are first pulled towards their mean by
    1 / sqrt(1 + h^2 / sd^2), so that the smoothed law keeps the draws' variance instead of
    adding h^2 to it (Jones 1991, "On correcting for variance inflation in kernel density
    estimation", Comput. Stat. Data Anal. 11:3). The error is the standard deviation of the
    K kernel terms over sqrt(K).
    """
    k = draws.shape[1]
    mean = draws.mean(axis=1, keepdims=True)
    sd = draws.std(axis=1, ddof=1, keepdims=True)
    q75, q25 = np.quantile(draws, [0.75, 0.25], axis=1, keepdims=True)
    spread = np.minimum(sd, (q75 - q25) / 1.349)
    h = np.maximum(0.9 * np.where(spread > 0, spread, sd) * k**-0.2, 1e-6)
    pulled = mean + (draws - mean) / np.sqrt(1.0 + (h / np.maximum(sd, 1e-12)) ** 2)
    terms = ndtr((at[:, None, :] - pulled) / h)
    return terms.mean(axis=1), terms.std(axis=1, ddof=1) / np.sqrt(k)


def z_of_probabilities(p: np.ndarray) -> np.ndarray:
    """z = Phi^-1(p), clipped to +-Z_BOUND (nan stays nan)."""
    lo = ndtr(-Z_BOUND)
    with np.errstate(invalid="ignore"):
        return ndtri(np.clip(p, lo, 1.0 - lo))


def draw_quantiles(draws: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Quantiles (n, P, D) of draws (n, K, D) at probabilities `probs` (P,)."""
    return np.moveaxis(np.quantile(draws, probs, axis=1), 0, 1)
