import numpy as np
import pytest
from scipy import stats

from normcore.numeric import (
    kish_effective_size,
    rank_normal_scores,
    values_of_z,
    weighted_quantiles,
    z_of_values,
)

GRID = np.linspace(-2.0, 2.0, 21)


def test_kish_size_counts_equal_weights_and_discounts_unequal_ones():
    assert kish_effective_size(np.full(50, 0.3)) == pytest.approx(50.0)
    assert kish_effective_size(np.array([1.0, 1e-6, 1e-6])) == pytest.approx(1.0, abs=1e-5)
    assert kish_effective_size(np.array([2.0, 1.0])) == pytest.approx(9 / 5)


def test_equal_weights_give_the_midpoint_plotting_position():
    x = np.random.default_rng(0).standard_normal((40, 3))
    probs = np.array([0.05, 0.3, 0.5, 0.9])
    got = weighted_quantiles(x, np.ones(40), probs)
    assert np.allclose(got, np.quantile(x, probs, axis=0, method="hazen"))


def test_weights_move_quantiles_and_a_given_order_changes_nothing():
    x = np.arange(10.0)[:, None]
    w = np.where(np.arange(10) >= 5, 9.0, 1.0)
    heavy_top = weighted_quantiles(x, w, np.array([0.5]))
    assert heavy_top[0, 0] > 5.0
    same = weighted_quantiles(x, w, np.array([0.5]), order=np.argsort(x, axis=0))
    assert np.array_equal(same, heavy_top)


def test_rank_normal_scores_drop_the_margins_and_share_ties():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 2))
    warped = np.column_stack([np.exp(x[:, 0]), x[:, 1] ** 3])
    assert np.array_equal(rank_normal_scores(x), rank_normal_scores(warped))
    expected = stats.norm.ppf((np.arange(200) + 0.5) / 200)
    assert np.allclose(np.sort(rank_normal_scores(x)[:, 0]), expected)
    tied = rank_normal_scores(np.array([[1.0], [1.0], [2.0]]))
    assert tied[0, 0] == tied[1, 0] < tied[2, 0]


def _normal_table(mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Quantile vectors (n, K, D) of N(mean, sd^2) at GRID."""
    return mean[:, None, :] + sd[:, None, :] * GRID[None, :, None]


def test_z_of_values_is_exact_for_a_normal_inside_and_beyond_the_table():
    """Normal quantiles are linear in z, so both the interpolation and the linear tails
    recover z exactly, far beyond the tabled levels too."""
    mean, sd = np.array([[1.0, -3.0]]), np.array([[2.0, 0.5]])
    q = _normal_table(mean, sd)
    z = np.array([[-5.0, 0.37]])
    assert np.allclose(z_of_values(q, mean + sd * z, GRID, tail_span=3), z)
    z = np.array([[1.9, 4.5]])
    assert np.allclose(z_of_values(q, mean + sd * z, GRID, tail_span=3), z)


def test_values_of_z_inverts_z_of_values_for_a_skewed_table():
    rng = np.random.default_rng(2)
    q = np.exp(GRID)[None, :, None] * rng.uniform(0.5, 2.0, (5, 1, 3))  # increasing, skewed
    values = rng.uniform(-1.0, 12.0, (5, 3))
    z = z_of_values(q, values, GRID, tail_span=4)
    back = values_of_z(q, z[:, None, :], GRID, tail_span=4)[:, 0]
    assert np.allclose(back, values)


def test_values_of_z_at_shared_points_matches_per_row_points():
    q = _normal_table(np.zeros((4, 2)), np.ones((4, 2)))
    z = np.array([-3.0, 0.1, 2.5])
    shared = values_of_z(q, z[None, :, None], GRID, tail_span=3)
    assert shared.shape == (4, 3, 2)
    assert np.allclose(shared, z[None, :, None])


def test_tied_quantiles_give_a_finite_monotone_map():
    q = np.tile(GRID, (1, 1))[:, :, None].copy()
    q[0, 8:13, 0] = 0.0  # a flat stretch: many people with the same value
    values = np.array([[-1.0], [0.0], [1.0]])
    z = np.concatenate([z_of_values(q, v[None], GRID, tail_span=3) for v in values])
    assert np.all(np.isfinite(z)) and np.all(np.diff(z[:, 0]) > 0)
