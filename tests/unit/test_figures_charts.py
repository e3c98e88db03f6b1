"""The chart builders put the right numbers in the right traces (no browser needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from normcore.explore import extreme_rates as rates_table
from normcore.figures import charts

QS = charts.FAN_QUANTILES


AGES = np.linspace(20, 80, 13)


def long_centiles(idps=("a", "b"), ages=AGES) -> pd.DataFrame:
    """Quantile q of IDP k at age t = 10 k + t / 10 + 4 (q - 0.5): monotone in q."""
    rows = [
        (t, idp, q, 10 * k + t / 10 + 4 * (q - 0.5))
        for t in ages
        for k, idp in enumerate(idps)
        for q in QS
    ]
    return pd.DataFrame(rows, columns=["age", "idp", "quantile", "value"])


def test_fan_draws_three_bands_and_the_median_in_order():
    fig = charts.centile_fan(long_centiles(), "b")
    fills = [t for t in fig.data if t.fill == "tonexty"]
    assert [t.name for t in fills] == ["2-98th centile", "10-90th centile", "25-75th centile"]
    median = next(t for t in fig.data if t.name == "median")
    np.testing.assert_allclose(median.y, 10 + np.linspace(20, 80, 13) / 10)
    upper = fig.data[0]  # the 98th centile edge drawn before its band's fill
    np.testing.assert_allclose(np.asarray(upper.y) - np.asarray(median.y), 4 * 0.48)


def test_fan_shades_only_ages_outside_training():
    cent = long_centiles(ages=np.linspace(10, 90, 9))
    fig = charts.centile_fan(cent, "a", age_range=(20, 80))
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert sorted((s.x0, s.x1) for s in rects) == [(10, 20), (80, 90)]
    inside = charts.centile_fan(cent, "a", age_range=(10, 90))
    assert not [s for s in inside.layout.shapes if s.type == "rect"]


def test_fan_points_hover_carries_centile_and_label():
    pts = pd.DataFrame({"age": [30.0], "value": [3.0], "centile": [97.5], "label": ["sub-1"]})
    fig = charts.centile_fan(long_centiles(), "a", points=pts)
    dots = next(t for t in fig.data if t.mode == "markers")
    assert dots.customdata[0][0] == 97.5 and dots.customdata[0][1] == "sub-1"
    assert "centile" in dots.hovertemplate


def test_fan_rejects_an_idp_without_centiles():
    with pytest.raises(ValueError, match="no rows for IDP 'zzz'"):
        charts.centile_fan(long_centiles(), "zzz")


def test_small_multiples_one_panel_per_idp_with_its_own_points():
    pts = pd.DataFrame(
        {"idp": ["a", "b", "b"], "age": [30, 40, 50], "value": [1, 2, 3], "centile": [50, 60, 70]}
    )
    fig = charts.fan_small_multiples(long_centiles(), ["a", "b"], points=pts, columns=2)
    titles = [a.text for a in fig.layout.annotations]
    assert titles[:2] == ["a", "b"]
    dots = [t for t in fig.data if t.mode == "markers"]
    assert [len(t.x) for t in dots] == [1, 2]
    assert dots[1].xaxis == "x2"
    with pytest.raises(ValueError):
        charts.fan_small_multiples(long_centiles(), [])


def test_truth_is_drawn_dashed_with_one_legend_entry():
    cent = long_centiles()
    fig = charts.centile_fan(cent, "a", truth=cent)
    truth = [t for t in fig.data if t.name == "true centiles"]
    assert len(truth) == len(QS) and sum(bool(t.showlegend) for t in truth) == 1
    assert all(t.line.dash == "dash" for t in truth)


def test_deviation_profile_groups_by_region_and_flags_extremes():
    scores = pd.DataFrame(
        {
            "idp": ["lh_G_cuneus_thickness", "Left-Hippocampus", "eTIV", "rh_S_central_thickness"],
            "z": [0.5, -2.5, 1.0, 2.0],
            "centile": [69, 0.6, 84, 97.7],
            "value": [2.4, 3500, 1.5e6, 2.2],
        }
    )
    fig = charts.deviation_profile(scores)
    (bars,) = fig.data
    groups, labels = (list(level) for level in bars.y)
    assert groups == [
        "Global volumes", "Subcortical volumes", "Cortical thickness (left)",
        "Cortical thickness (right)",
    ]
    assert labels == ["eTIV", "Left-Hippocampus", "lh G cuneus", "rh S central"]
    colour = dict(zip(labels, bars.marker.color))
    assert colour["Left-Hippocampus"] != colour["eTIV"]
    assert colour["rh S central"] == colour["Left-Hippocampus"]


@pytest.mark.parametrize("n_idps", [47, 150])
def test_deviation_profile_labels_every_idp_and_shows_interval_bars(n_idps):
    """Every IDP gets its own labelled row (the figure grows with them, the page scrolls),
    and the z interval of each is drawn as a visible error bar."""
    names = [f"lh_region{k}_thickness" for k in range(n_idps)]
    z = np.linspace(-3, 3, n_idps)
    scores = pd.DataFrame(
        {"idp": names, "z": z, "centile": 50.0, "value": 2.5, "z_lo": z - 0.2, "z_hi": z + 0.3}
    )
    fig = charts.deviation_profile(scores)
    (bars,) = fig.data
    assert len(bars.y[1]) == n_idps and len(set(bars.y[1])) == n_idps
    assert fig.layout.yaxis.dtick == 1  # one tick label per row, none skipped
    assert fig.layout.height >= 18 * n_idps
    assert bars.error_x.visible
    np.testing.assert_allclose(bars.error_x.array, 0.3)
    np.testing.assert_allclose(bars.error_x.arrayminus, 0.2)
    assert "z" in fig.layout.xaxis.title.text


def test_fan_axes_carry_units_and_volumes_have_thousands_separators():
    cent = long_centiles(idps=("eTIV", "lh_MeanThickness_thickness", "lh_precentral_area"))
    fig = charts.fan_small_multiples(cent, ["eTIV", "lh_MeanThickness_thickness",
                                            "lh_precentral_area"], columns=3)
    axes = [fig.layout.yaxis, fig.layout.yaxis2, fig.layout.yaxis3]
    assert [a.title.text for a in axes] == [
        "eTIV (mm³)", "lh MeanThickness (mm)", "lh precentral area (mm²)"
    ]
    assert [a.tickformat for a in axes] == [",.0f", ".2f", ",.0f"]
    single = charts.centile_fan(cent, "eTIV")
    assert single.layout.yaxis.title.text == "eTIV (mm³)"
    assert single.layout.yaxis.tickformat == ",.0f"


def test_fan_axis_is_clipped_to_the_data_not_to_exploding_bands():
    cent = long_centiles(ages=np.linspace(10, 90, 17))
    outside = (cent["age"] < 20) | (cent["age"] > 80)
    cent.loc[outside, "value"] = cent.loc[outside, "value"] * 1000 * (cent["quantile"] - 0.5)
    fig = charts.centile_fan(cent, "a", age_range=(20, 80))
    lo, hi = fig.layout.yaxis.range
    inside = cent[~outside & (cent["idp"] == "a")]["value"]
    assert inside.min() - 1 < lo < inside.min() and inside.max() < hi < inside.max() + 1
    people = pd.DataFrame({"age": [50.0], "value": [40.0], "centile": [99.9]})
    with_person = charts.centile_fan(cent, "a", age_range=(20, 80), points=people)
    assert with_person.layout.yaxis.range[1] > 40.0  # people shown are never cut off


def test_fan_draws_a_rug_of_reference_ages_and_shades_sparse_and_adapted_ages():
    cent = long_centiles(ages=np.linspace(10, 90, 17))
    ages = np.r_[np.linspace(20, 40, 50), [75.0]]
    fig = charts.centile_fan(
        cent, "a", age_range=(20, 80), reference_ages=ages, sparse_spans=[(40.5, 80.0)],
        site_age_range=(25, 35),
    )
    rug = next(t for t in fig.data if t.name == "reference people's ages")
    np.testing.assert_allclose(rug.x, ages)
    assert np.all(np.asarray(rug.y) < fig.layout.yaxis.range[0] + 0.1 * np.ptp(
        fig.layout.yaxis.range))
    by_name = {}
    for shape in fig.layout.shapes:
        by_name.setdefault(shape.name, []).append((shape.x0, shape.x1))
    assert by_name["few reference people"] == [(40.5, 80.0)]
    assert sorted(by_name["outside the site's controls"]) == [(10, 25), (35, 90)]
    assert sorted(by_name["outside the training ages"]) == [(10, 20), (80, 90)]


def test_loss_curve_rings_the_kept_weights():
    history = [{"epoch": e, "loss": 1.0 / e, "val_loss": v}
               for e, v in zip(range(1, 6), [0.9, 0.5, 0.4, 0.45, 0.6])]
    fig = charts.loss_curve(history, kept=2)
    kept = next(t for t in fig.data if "kept" in t.name)
    assert list(kept.x) == [3] and list(kept.y) == [0.4]
    assert "epoch 3" in kept.name


def test_extreme_rates_marks_idps_whose_interval_excludes_five_percent():
    z = np.concatenate([np.zeros(190), np.full(10, 3.0), np.zeros(100), np.full(100, 3.0)])
    scores = pd.DataFrame({"idp": ["ok"] * 200 + ["bad"] * 200, "z": z})
    rates = rates_table(scores)
    assert rates.set_index("idp").loc["ok", "rate"] == pytest.approx(0.05)
    fig = charts.extreme_rates(rates)
    bar = fig.data[0]
    assert list(bar.x) == ["bad", "ok"]  # worst first
    assert bar.marker.color[0] != bar.marker.color[1]
    assert fig.layout.shapes[0].y0 == 0.05


def test_cohort_heatmap_and_correlation_heatmaps_keep_values():
    z = pd.DataFrame([[0.1, -4.0], [2.0, 0.0]], index=["p1", "p2"], columns=["a", "b"])
    fig = charts.cohort_z_heatmap(z)
    np.testing.assert_array_equal(fig.data[0].z, z.to_numpy())
    assert (fig.data[0].zmin, fig.data[0].zmax) == (-3, 3)
    r = pd.DataFrame([[1.0, 0.3], [0.3, 1.0]], index=["a", "b"], columns=["a", "b"])
    both = charts.correlation_heatmaps(r, r * 0.5)
    assert both.data[1].z[0][1] == pytest.approx(0.15)


def test_dependence_and_pair_by_age_and_loss_curve():
    rng = np.random.default_rng(0)
    samples = pd.DataFrame(rng.normal(size=(200, 2)), columns=["x", "y"])
    fig = charts.dependence_contours(samples, samples.head(5), "x", "y")
    assert isinstance(fig.data[0], go.Histogram2dContour) and len(fig.data[1].x) == 5
    table = pd.DataFrame(
        {
            "age": [20, 40, 20, 40],
            "source": ["model", "model", "real", "real"],
            "r": [0.1, 0.2, 0.3, 0.4],
        }
    )
    by_age = charts.pair_correlation_by_age(table)
    assert [t.name for t in by_age.data] == ["model", "real"]
    loss = charts.loss_curve(
        [{"epoch": 1, "loss": 1.0, "val_loss": 1.1}, {"epoch": 2, "loss": 0.8, "val_loss": 0.9}]
    )
    assert [list(t.y) for t in loss.data] == [[1.0, 0.8], [1.1, 0.9]]


def _profile(idps, z, centile=50.0):
    z = np.asarray(z, dtype=float)
    return pd.DataFrame(
        {"idp": idps, "z": z, "centile": centile, "value": 1.0, "z_lo": z - 0.1, "z_hi": z + 0.2}
    )


def test_profile_comparison_puts_the_conditional_z_beside_the_plain_one_on_each_row():
    plain = _profile(["eTIV", "Left-Hippocampus", "Right-Hippocampus"], [1.5, -2.5, 0.3])
    given = _profile(["Left-Hippocampus", "Right-Hippocampus"], [-1.0, 2.4])
    fig = charts.profile_comparison(plain, given, given=["eTIV"])
    reference, conditional = fig.data
    assert reference.name == "compared with people of the same age, sex and site"
    assert conditional.name == "... and the same eTIV"
    labels = list(reference.y[1])
    assert labels == ["eTIV (given)", "Left-Hippocampus", "Right-Hippocampus"]
    np.testing.assert_allclose(reference.x, [1.5, -2.5, 0.3])
    # the given IDP has no conditional bar; the others carry their own conditional z
    assert np.isnan(conditional.x[0])
    np.testing.assert_allclose(conditional.x[1:], [-1.0, 2.4])
    np.testing.assert_allclose(conditional.error_x.array[1:], 0.2)
    assert reference.offsetgroup != conditional.offsetgroup
    colours = list(conditional.marker.color)
    assert colours[2] != colours[1]  # 2.4 is flagged, -1.0 is not
    assert fig.layout.barmode == "group"


def test_profile_comparison_draws_an_imputed_band_labelled_for_a_missing_idp():
    plain = _profile(["eTIV", "Left-Hippocampus"], [0.5, np.nan], centile=np.nan)
    imputed = pd.DataFrame(
        {"idp": ["Left-Hippocampus"], "z_q02": [-2.1], "z_q25": [-0.8], "z_q50": [-0.2],
         "z_q75": [0.4], "z_q98": [1.9]}
    )  # fmt: skip
    fig = charts.profile_comparison(plain, None, imputed)
    reference, band, median = fig.data
    assert list(reference.y[1]) == ["eTIV", f"Left-Hippocampus · {charts.IMPUTED_LABEL}"]
    assert charts.IMPUTED_LABEL in band.name and "imputed (missing)" == charts.IMPUTED_LABEL
    assert np.isnan(band.base[0]) and np.isnan(band.x[0])  # eTIV is present: no band
    assert band.base[1] == pytest.approx(-2.1) and band.x[1] == pytest.approx(4.0)
    assert median.x[1] == pytest.approx(-0.2)
    assert band.offsetgroup == reference.offsetgroup  # in the missing bar's place


def test_joint_draws_over_fans_shows_the_draws_on_both_fans_and_as_a_pair():
    cent = long_centiles(("a", "b"))
    rng = np.random.default_rng(0)
    draws = pd.DataFrame({"a": rng.normal(5, 1, 50), "b": rng.normal(15, 1, 50)})
    margins = cent[cent["age"] == 50].drop(columns="age")
    fig = charts.joint_draws_over_fans(cent, draws, margins, "a", "b", at_age=50)
    strips = [t for t in fig.data if t.name == "joint draws"]
    assert len(strips) == 3
    left, middle, pair = strips
    np.testing.assert_allclose(left.x, 50.0)
    np.testing.assert_allclose(left.y, draws["a"])
    np.testing.assert_allclose(middle.y, draws["b"])
    np.testing.assert_allclose(pair.x, draws["a"])
    np.testing.assert_allclose(pair.y, draws["b"])
    assert (left.xaxis, middle.xaxis, pair.xaxis) == ("x", "x2", "x3")
    # each IDP's centiles at that age cross the pair panel: 7 vertical, 7 horizontal lines
    vertical = [s for s in fig.layout.shapes if s.x0 == s.x1 and s.xref == "x3"]
    horizontal = [s for s in fig.layout.shapes if s.y0 == s.y1 and s.yref == "y3"]
    expected = {i: sorted(margins[margins["idp"] == i]["value"]) for i in ("a", "b")}
    assert sorted(s.x0 for s in vertical) == pytest.approx(expected["a"])
    assert sorted(s.y0 for s in horizontal) == pytest.approx(expected["b"])
    medians = [t for t in fig.data if t.name == "median"]
    assert len(medians) == 2
