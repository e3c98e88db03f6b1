"""Numeric helpers shared by the first stage (`preprocessing`) and the reference table.

Both hold distributions the same way: quantile vectors tabled at evenly spaced z-levels
(normal scores of probability levels), estimated by Gaussian-kernel-weighted quantiles
and read by piecewise-linear interpolation with linear tails. Keeping one copy of each
piece here means the first stage and the table cannot drift apart in how they weight,
interpolate or extrapolate.

Shapes: n rows (people or draws), K tabled z-levels, D IDPs, P requested points.
"""

from __future__ import annotations

import numpy as np


def kish_effective_size(weights: np.ndarray) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2 of non-negative weights.

    Why: kernel-weighted estimates rest on fewer people than carry a non-zero weight;
    this is the number of equally weighted people that would give the same variance of
    a weighted mean (Kish 1965, *Survey Sampling*, section 11.7).
    """
    return float(weights.sum() ** 2 / (weights**2).sum())


def weighted_quantiles(
    values: np.ndarray,
    weights: np.ndarray,
    probs: np.ndarray,
    order: np.ndarray | None = None,
) -> np.ndarray:
    """Quantiles (P, D) at `probs` of each column of `values` (m, D) under `weights` (m,).

    Each sorted value stands at the midpoint of its weight on the cumulative scale,
    (cumsum(w) - w / 2) / sum(w), and quantiles interpolate linearly between those
    points (Hyndman & Fan 1996, definition 5, with weights): with equal weights it is the
    usual (i - 0.5) / m plotting position, and it does not jump when a weight changes a
    little, as a kernel moves along age. Probabilities beyond the outermost midpoints
    take the extreme values. `order`: `np.argsort(values, axis=0)` if the caller has it
    already (one sort serves every kernel centre).
    """
    if order is None:
        order = np.argsort(values, axis=0)
    out = np.empty((len(probs), values.shape[1]))
    total = weights.sum()
    for j in range(values.shape[1]):
        w = weights[order[:, j]]
        cdf = (np.cumsum(w) - 0.5 * w) / total
        out[:, j] = np.interp(probs, cdf, values[order[:, j], j])
    return out


def rank_normal_scores(x: np.ndarray) -> np.ndarray:
    """Normal scores of each column's ranks, Phi^-1((rank - 0.5) / n) (n, D).

    Why: they keep the columns' dependence (a Gaussian copula's correlation, rank
    correlations) and drop their margins, so two samples whose margins differ can be
    compared on dependence alone (van der Waerden scores). Ties share their mean rank.
    """
    from scipy import stats  # here only: scoring never ranks, and scipy.stats takes a second

    return stats.norm.ppf((stats.rankdata(x, axis=0) - 0.5) / x.shape[0])


def z_of_values(
    q: np.ndarray, values: np.ndarray, z_grid: np.ndarray, tail_span: int
) -> np.ndarray:
    """Normal score (n, D) of each value (n, D) within its quantile vector q (n, K, D).

    q[:, k] is the quantile at normal score z_grid[k]; z_grid is evenly spaced and each
    q[i, :, j] increasing. Between tabled quantiles z is linear in the value. Beyond
    them the map continues along the chord of the outermost `tail_span` segments, a
    Gaussian tail with the local spread: the outermost segment alone rests on the
    fewest samples, and a steadier slope keeps extrapolated tails from stretching.
    Zero-width segments (tied quantiles) are guarded, so the map is defined everywhere.
    """
    n_q = q.shape[1]
    step = (z_grid[-1] - z_grid[0]) / (n_q - 1)
    k = (q < values[:, None, :]).sum(axis=1)
    lo = np.clip(k - 1, 0, n_q - 2)
    q_lo = np.take_along_axis(q, lo[:, None, :], axis=1)[:, 0]
    q_hi = np.take_along_axis(q, (lo + 1)[:, None, :], axis=1)[:, 0]
    frac = (values - q_lo) / np.maximum(q_hi - q_lo, 1e-12)
    z = z_grid[lo] + np.clip(frac, 0.0, 1.0) * step
    span_z = tail_span * step
    low_slope = span_z / np.maximum(q[:, tail_span] - q[:, 0], 1e-12)
    high_slope = span_z / np.maximum(q[:, -1] - q[:, -1 - tail_span], 1e-12)
    z = np.where(k == 0, z_grid[0] - (q[:, 0] - values) * low_slope, z)
    return np.where(k == n_q, z_grid[-1] + (values - q[:, -1]) * high_slope, z)


def values_of_z(q: np.ndarray, z: np.ndarray, z_grid: np.ndarray, tail_span: int) -> np.ndarray:
    """Values (n, P, D) at normal scores z from quantile vectors q (n, K, D): the inverse
    of `z_of_values`, with the same linear tails.

    `z` broadcasts against (n, P, D): (P,)[None, :, None] for the same points in every
    row, or (n, 1, D) for one point per row and IDP.
    """
    n_q = q.shape[1]
    step = (z_grid[-1] - z_grid[0]) / (n_q - 1)
    pos = (z - z_grid[0]) / step
    lo = np.clip(np.floor(pos).astype(int), 0, n_q - 2)
    frac = pos - lo
    shape = np.broadcast_shapes(np.shape(z), (q.shape[0], 1, q.shape[2]))
    lo = np.broadcast_to(lo, shape)
    q_lo = np.take_along_axis(q, lo, axis=1)
    q_hi = np.take_along_axis(q, lo + 1, axis=1)
    inside = q_lo + (q_hi - q_lo) * frac
    span_z = tail_span * step
    low = q[:, [0]] - (z_grid[0] - z) * (q[:, [tail_span]] - q[:, [0]]) / span_z
    high = q[:, [-1]] + (z - z_grid[-1]) * (q[:, [-1]] - q[:, [-1 - tail_span]]) / span_z
    return np.where(z < z_grid[0], low, np.where(z > z_grid[-1], high, inside))
