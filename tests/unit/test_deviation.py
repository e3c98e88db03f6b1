"""The multivariate deviation ranked at the person's own age (issue 17, item 5).

Truth: 6 IDPs with standard normal margins whose coupling grows with age, R(a) = c(a) J +
(1 - c(a)) I with c from 0.05 at 20 to 0.85 at 80. One distance ranked among samples of
every age is calibrated over everyone but not within ages; ranked among the samples at
the person's age, under that age's correlation, it is calibrated in both halves.
"""

import numpy as np
import pytest
from scipy import stats

from normcore.reference import (
    PROBABILITY_LEVELS,
    ReferenceTable,
    build_reference,
    mahalanobis_centile,
    z_of_scores,
)

NORMAL = stats.norm.ppf(PROBABILITY_LEVELS)
D = 6


def _coupling(ages: np.ndarray) -> np.ndarray:
    # the reference also draws a little beyond the age range (kernels at its ends)
    return np.clip(0.05 + 0.8 * (np.asarray(ages) - 20.0) / 60.0, 0.0, 0.95)


def _draw(ages: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """z ~ N(0, c J + (1 - c) I) at each age: a shared factor plus own noise."""
    c = _coupling(ages)[:, None]
    shared = rng.standard_normal((len(ages), 1))
    return np.sqrt(c) * shared + np.sqrt(1.0 - c) * rng.standard_normal((len(ages), D))


def _sampler(ages, codes, seed):
    return _draw(ages, np.random.default_rng(seed))


@pytest.fixture(scope="module")
def table() -> ReferenceTable:
    return build_reference(
        _sampler, (20.0, 80.0), [1], NORMAL, samples_per_combination=2000, grid_points=11,
        first_stage_margins=np.array([True]),
    )  # fmt: skip


def _controls(table: ReferenceTable, n: int = 2000) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(11)
    ages = rng.uniform(20.0, 80.0, n)
    codes = np.zeros((n, 1), dtype=np.int64)
    q, _ = table.lookup(codes, ages)
    return ages, codes, z_of_scores(q, _draw(ages, rng))


def _pooled(table: ReferenceTable) -> ReferenceTable:
    """The same draws' reference pooled over every age, as files that stored (D, D) and
    (C, Q) hold it: one correlation and one distance distribution per combination."""
    ages = np.linspace(20.0, 80.0, 4000)
    z = _draw(ages, np.random.default_rng(5))
    corr = np.corrcoef(z, rowvar=False)
    precision = np.linalg.inv(corr)
    d2 = np.einsum("ij,jk,ik->i", z, precision, z)
    arrays = table.to_arrays()
    arrays["reference.precision"] = precision
    arrays["reference.mahalanobis"] = np.quantile(d2, PROBABILITY_LEVELS)[None]
    return ReferenceTable.from_arrays(arrays, table.n_levels, table.bandwidth)


def _ks_by_half(table: ReferenceTable, ages, codes, z) -> tuple[float, float]:
    _, centile = mahalanobis_centile(table, codes, ages, z)
    young = ages < 50.0
    return tuple(
        float(stats.kstest(centile[half] / 100.0, "uniform").statistic)
        for half in (young, ~young)
    )


def test_deviation_is_uniform_in_the_young_and_the_old_half(table):
    ages, codes, z = _controls(table)
    young_ks, old_ks = _ks_by_half(table, ages, codes, z)
    assert young_ks < 0.08 and old_ks < 0.08


def test_a_reference_pooled_over_ages_is_not(table):
    """The check above can fail: the pooled reference, loaded as an old file stores it,
    misranks at least one half."""
    ages, codes, z = _controls(table)
    assert max(_ks_by_half(_pooled(table), ages, codes, z)) > 0.1


def test_the_reference_is_stored_per_age_and_round_trips(table):
    grid = len(table.ages)
    assert table.precision.shape == (grid, D, D)
    assert table.mahalanobis.shape == (1, grid, len(PROBABILITY_LEVELS))
    again = ReferenceTable.from_arrays(table.to_arrays(), table.n_levels, table.bandwidth)
    assert np.array_equal(again.precision, table.precision)
    assert np.array_equal(again.mahalanobis, table.mahalanobis)
    # the tabled correlation follows the coupling: weak when young, strong when old
    corr_young = np.linalg.inv(table.precision[0])
    corr_old = np.linalg.inv(table.precision[-1])
    off = ~np.eye(D, dtype=bool)
    assert corr_young[off].mean() < 0.25 < 0.6 < corr_old[off].mean()


def test_a_stored_reference_of_the_wrong_grid_is_refused(table):
    arrays = table.to_arrays()
    arrays["reference.precision"] = arrays["reference.precision"][:3]
    with pytest.raises(ValueError, match="grid ages"):
        ReferenceTable.from_arrays(arrays, table.n_levels, table.bandwidth)
