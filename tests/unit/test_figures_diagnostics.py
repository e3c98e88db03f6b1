"""Each diagnostics figure, built from a table whose content is known, shows that content."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from scipy import stats

from normcore import metrics
from normcore.figures import diagnostics


def uniform_pit(n: int, columns: list[str]) -> pd.DataFrame:
    """Perfectly uniform PIT values (i + 0.5) / n in every column."""
    grid = (np.arange(n) + 0.5) / n
    return pd.DataFrame({c: grid for c in columns})


def by_name(fig: go.Figure) -> dict[str, go.BaseTraceType]:
    return {t.name: t for t in fig.data if t.name}


def test_pit_histogram_uniform_input_gives_flat_bars_band_and_chosen_idps() -> None:
    pit = uniform_pit(200, ["a", "b"])
    fig = diagnostics.pit_histogram(pit, show=["b"], bins=20)
    traces = by_name(fig)
    bars = traces["all 2 IDPs pooled"]
    assert isinstance(bars, go.Bar)
    np.testing.assert_allclose(bars.y, 1.0)
    assert list(traces["uniform (calibrated)"].y) == [1.0, 1.0]
    line = traces["b"]
    assert line.line.shape == "hv" and len(line.x) == 21
    np.testing.assert_allclose(line.y, 1.0)
    low, high = stats.binom.interval(0.95, 200, 1 / 20)
    band = traces["95% band, one IDP (n=200)"]
    np.testing.assert_allclose(band.y, low / (200 / 20))
    assert band.fill == "tonexty"
    upper = [t for t in fig.data if t.legendgroup == band.name and t is not band][0]
    np.testing.assert_allclose(upper.y, high / (200 / 20))
    assert fig.layout.template.layout.paper_bgcolor is not None  # plotly_white applied


def test_pit_histogram_shows_a_biased_model_as_a_slope() -> None:
    pit = pd.DataFrame({"a": np.linspace(0.0, 0.49, 400)})
    bars = by_name(diagnostics.pit_histogram(pit))["1 IDP"]
    assert np.all(np.asarray(bars.y[10:]) == 0) and np.all(np.asarray(bars.y[:10]) > 1.5)


def test_pit_qq_diagonal_for_uniform_input_and_dkw_band() -> None:
    n = 500
    fig = diagnostics.pit_qq(uniform_pit(n, ["a", "b"]), show=["a"])
    traces = by_name(fig)
    pooled = traces["all 2 IDPs pooled"]
    np.testing.assert_allclose(pooled.y, pooled.x, atol=1.0 / n)
    eps = np.sqrt(np.log(2 / 0.05) / (2 * n))
    band = traces[f"95% band, one IDP (n={n})"]
    np.testing.assert_allclose(band.y, np.clip(np.asarray(band.x) - eps, 0, 1))
    assert "a" in traces and "b" not in traces


def test_coverage_curve_mean_error_and_noise_band() -> None:
    pit = pd.DataFrame({"a": np.full(100, 0.5), "b": (np.arange(100) + 0.5) / 100})
    table = metrics.coverage(pit)
    fig = diagnostics.coverage_curve(table)
    mean = by_name(fig)["mean over IDPs"]
    expected = table.groupby("nominal")["error"].mean()
    np.testing.assert_allclose(mean.x, expected.index)
    np.testing.assert_allclose(mean.y, expected.to_numpy())
    # IDP "a" is always covered: error 1 - nominal; "b" is exact: about 0.
    assert mean.y[0] == pytest.approx((0.5 + 0.0) / 2, abs=0.01)
    noise = by_name(fig)["95% sampling noise, one IDP (n=100)"]
    nominal = np.asarray(noise.x)
    np.testing.assert_allclose(noise.y, -1.96 * np.sqrt(nominal * (1 - nominal) / 100), rtol=1e-3)


def test_ace_by_age_bars_are_mean_absolute_errors_per_bin() -> None:
    rng = np.random.default_rng(0)
    ages = rng.uniform(20, 80, 300)
    pit = pd.DataFrame({"a": rng.uniform(size=300), "b": rng.uniform(size=300) ** 2})
    table = metrics.ace(pit, ages, age_bins=3)
    fig = diagnostics.ace_by_age(table)
    bars = by_name(fig)["ACE (all quantiles)"]
    expected = table.assign(e=table["error"].abs()).groupby("age_bin")["e"].mean()
    np.testing.assert_allclose(bars.y, expected.to_numpy())
    assert len(bars.x) == 3
    assert {f"q = {q:g}" for q in metrics.DEFAULT_QUANTILES} <= set(by_name(fig))
    floor = by_name(fig)["noise floor (calibrated)"]
    assert all(0 < v < 0.1 for v in floor.y)


def test_ks_per_idp_sorted_worst_first_flagged_in_red_and_capped() -> None:
    ks = pd.DataFrame(
        {
            "idp": ["a", "b", "c"],
            "n": [100, 100, 100],
            "statistic": [0.1, 0.5, 0.3],
            "p_value": [0.3, 1e-20, 1e-8],
            "p_adjusted": [0.3, 3e-20, 1.5e-8],
            "flagged": [False, True, True],
        }
    )
    fig = diagnostics.ks_per_idp(ks)
    bar = fig.data[0]
    assert list(bar.y) == ["a", "c", "b"]  # plotly draws the first bar at the bottom
    assert list(bar.marker.color) == ["#1f6f8b", "#c0504d", "#c0504d"]
    critical = fig.layout.shapes[0].x0
    assert critical == pytest.approx(stats.kstwo.ppf(0.95, 100))
    capped = diagnostics.ks_per_idp(ks, max_idps=2)
    assert list(capped.data[0].y) == ["c", "b"]
    assert "worst 2 of 3" in capped.layout.title.text


def test_strata_heatmap_marks_the_shifted_site() -> None:
    rng = np.random.default_rng(1)
    n = 600
    strata = pd.DataFrame(
        {"site": rng.choice(["S0", "S1", "S2"], n), "sex": rng.choice(["F", "M"], n)}
    )
    pit = rng.uniform(size=(n, 2))
    shifted = (strata["site"] == "S1").to_numpy()
    pit[shifted] = stats.norm.cdf(stats.norm.ppf(pit[shifted]) + 2.0)
    table = metrics.calibration_by_stratum(pit, strata[["site", "sex"]])
    table.insert(0, "by", "site x sex")
    fig = diagnostics.strata_heatmap(table, rows="site", columns="sex")
    heat = fig.data[0]
    assert list(heat.y) == ["S0", "S1", "S2"] and list(heat.x) == ["F", "M"]
    assert np.asarray(heat.z).shape == (3, 2)
    assert heat.zmin == 0 and heat.zmax == pytest.approx(np.nanmax(np.asarray(heat.z, dtype=float)))
    text = np.asarray(heat.text)
    assert all(cell.endswith("*") for cell in text[1])
    assert not any(cell.endswith("*") for cell in text[[0, 2]].ravel())
    # the grouping may be named in either order
    table["by"] = "sex x site"
    assert np.asarray(diagnostics.strata_heatmap(table).data[0].z).shape == (3, 2)


def test_strata_heatmap_orders_age_bands_by_age() -> None:
    bands = ["5-10", "10-20", "100-110"]
    table = pd.DataFrame(
        {
            "by": "age_band x sex",
            "age_band": np.repeat(bands, 2),
            "sex": ["F", "M"] * 3,
            "n": 20,
            "ks_mean": np.arange(6) / 10,
            "miscalibrated": False,
        }
    )
    heat = diagnostics.strata_heatmap(table, rows="age_band", columns="sex").data[0]
    assert list(heat.y) == bands
    np.testing.assert_allclose(heat.z, [[0.0, 0.1], [0.2, 0.3], [0.4, 0.5]])


def test_deviation_histogram_is_a_pit_histogram_of_centiles() -> None:
    deviation = pd.DataFrame({"deviation_centile": 100 * (np.arange(400) + 0.5) / 400})
    fig = diagnostics.deviation_histogram(deviation, bins=10)
    bars = by_name(fig)["people"]
    np.testing.assert_allclose(bars.y, 1.0)
    assert fig.layout.xaxis.title.text == "deviation centile / 100"


def test_correlation_scatter_plots_real_against_model() -> None:
    table = pd.DataFrame(
        {
            "idp_a": ["a", "a", "b"],
            "idp_b": ["b", "c", "c"],
            "real_pearson": [0.5, 0.2, -0.1],
            "model_pearson": [0.4, 0.2, 0.1],
            "real_spearman": [0.5, 0.2, -0.1],
            "model_spearman": [0.5, 0.2, -0.1],
        }
    )
    fig = diagnostics.correlation_scatter(table)
    points = by_name(fig)["IDP pairs"]
    np.testing.assert_allclose(points.x, table["real_pearson"])
    np.testing.assert_allclose(points.y, table["model_pearson"])
    assert "0.100" in fig.layout.title.text  # mean |0.1, 0, 0.2|
    assert "0.000" in diagnostics.correlation_scatter(table, method="spearman").layout.title.text
    big = pd.concat([table] * 20, ignore_index=True)
    assert len(by_name(diagnostics.correlation_scatter(big, max_points=10))["IDP pairs"].x) == 10


def test_joint_vs_product_colours_pairs_by_whether_the_joint_wins() -> None:
    table = pd.DataFrame(
        {
            "idp_a": ["a", "a"],
            "idp_b": ["b", "c"],
            "energy_joint": [0.01, 0.2],
            "energy_product": [0.3, 0.1],
            "mmd_joint": [0.0, 0.1],
            "mmd_product": [0.1, 0.05],
            "joint_better": [True, False],
        }
    )
    fig = diagnostics.joint_vs_product(table)
    points = fig.data[1]
    np.testing.assert_allclose(points.x, [0.3, 0.1])
    np.testing.assert_allclose(points.y, [0.01, 0.2])
    assert list(points.marker.color) == ["#1f6f8b", "#c0504d"]
    assert "50% joint better" in points.name


def test_memorisation_histogram_has_the_values_and_the_r_equals_1_line() -> None:
    r = np.array([0.5, 0.9, 1.1, 1.2, np.nan])
    fig = diagnostics.memorisation_histogram(r)
    np.testing.assert_allclose(fig.data[0].x, [0.5, 0.9, 1.1, 1.2])
    assert fig.layout.shapes[0].x0 == 1.0
    assert "P(r < 1) = 0.50" in fig.layout.title.text
