"""Edited model files (issue 20, item 2): each attack is a file edited and re-checksummed,
as anyone can; each is refused with a BundleError naming what is wrong, or, where the edit
is plausible, caught by the signature of a key the user holds."""

import json

import numpy as np
import pytest
from safetensors.numpy import save as st_save

from normcore import bundle, bundle_checks, denoisers, provenance
from normcore.errors import BundleError
from normcore.explore import provenance_card
from normcore.model import NormativeModel


@pytest.fixture(autouse=True)
def no_configured_key(monkeypatch):
    monkeypatch.delenv(provenance.KEY_ENV, raising=False)


@pytest.fixture(scope="module")
def data(fitted) -> bytes:
    return fitted.to_bytes()


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "bundle.key"
    path.write_text(provenance.new_key_text())
    return path


def edited(data: bytes, change_meta=None, change_tensors=None) -> bytes:
    """The bundle with its JSON or tensors changed and its checksum recomputed."""
    tensors, meta = bundle.from_bytes(data)
    if change_meta is not None:
        change_meta(meta)
    if change_tensors is not None:
        change_tensors(tensors)
    return bundle.to_bytes(tensors, meta)


def forged(data: bytes, meta_json: str) -> bytes:
    """A bundle whose normcore JSON is `meta_json` verbatim, with a matching checksum."""
    tensors, _ = bundle.from_bytes(data)
    return st_save(
        tensors, metadata={"normcore": meta_json, "sha256": bundle._digest(tensors, meta_json)}
    )


def refused(data: bytes, match: str) -> str:
    with pytest.raises(BundleError, match=match) as err:
        NormativeModel.from_bytes(data, device="cpu")
    return str(err.value)


# ------------------------------------------------------------ plausible edits: signing
def shift_location(meta):
    meta["transform"]["loc"] = [
        loc + 2 * scale for loc, scale in zip(meta["transform"]["loc"], meta["transform"]["scale"])
    ]


def test_shifted_location_loads_unsigned_but_changes_the_fingerprint(fitted, data, test_df):
    attacked = edited(data, shift_location)
    model = NormativeModel.from_bytes(attacked, device="cpu")
    honest = NormativeModel.from_bytes(data, device="cpu")
    assert model.origin.fingerprint != honest.origin.fingerprint
    assert model.score(test_df)["centile"].mean() < fitted.score(test_df)["centile"].mean() - 10


def test_shifted_location_is_refused_when_a_key_is_configured(data, key_file, monkeypatch):
    signed = bundle.sign(data, provenance.read_key(key_file))
    monkeypatch.setenv(provenance.KEY_ENV, str(key_file))
    assert NormativeModel.from_bytes(signed, device="cpu").origin.signature == "verified"
    # The attacker re-checksums without the key: the file is unsigned ...
    monkeypatch.delenv(provenance.KEY_ENV)
    attacked = edited(signed, shift_location)
    monkeypatch.setenv(provenance.KEY_ENV, str(key_file))
    refused(attacked, "not signed")
    # ... or keeps the old signature, which no longer matches.
    tensors, meta = bundle.from_bytes(signed)
    shift_location(meta)
    meta_json = json.dumps(meta, sort_keys=True)
    header = {
        "normcore": meta_json,
        "sha256": bundle._digest(tensors, meta_json),
        "hmac_sha256": _stored(signed)["hmac_sha256"],
    }
    refused(st_save(tensors, metadata=header), "signature does not match")


def _stored(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n])["__metadata__"]


def test_a_key_of_the_wrong_size_is_refused(tmp_path, monkeypatch, data):
    short = tmp_path / "short.key"
    short.write_text("abc")
    monkeypatch.setenv(provenance.KEY_ENV, str(short))
    refused(data, "at least 16")


def test_signature_survives_a_round_trip_and_another_key_is_refused(data, tmp_path, monkeypatch):
    first, second = tmp_path / "a.key", tmp_path / "b.key"
    first.write_text(provenance.new_key_text())
    second.write_text(provenance.new_key_text())
    signed = bundle.sign(data, provenance.read_key(first))
    assert bundle.origin(signed).signature == "not verified"  # no key configured
    assert bundle.origin(signed).fingerprint == bundle.origin(data).fingerprint
    monkeypatch.setenv(provenance.KEY_ENV, str(second))
    refused(signed, "signature does not match")


def test_swapped_sex_levels_are_refused(data):
    def swap(meta):
        meta["encoder"]["levels"]["sex"] = meta["encoder"]["levels"]["sex"][::-1]

    refused(edited(data, swap), r"'encoder.levels.sex' are not in the order .* swapped")


def test_widened_age_range_is_refused(data):
    def widen(meta):
        meta["training"]["age_range"] = [0.0, 150.0]

    refused(edited(data, widen), "differs from the ages the reference table was built over")


def test_level_age_range_outside_the_training_ages_is_refused(data):
    def widen(meta):
        level = next(iter(meta["training"]["level_age_ranges"]["site"]))
        meta["training"]["level_age_ranges"]["site"][level] = [0.0, 500.0]

    refused(edited(data, widen), "lies outside the training ages")


# ------------------------------------------------------------------ numbers' meaning
@pytest.mark.parametrize(
    ("part", "field", "index"),
    [("transform", "loc", 0), ("transform", "scale", 1), ("predictive", "scale", None)],
)
def test_nan_numbers_are_refused(data, part, field, index):
    def poison(meta):
        if index is None:
            meta[part][field] = float("nan")
        else:
            meta[part][field][index] = float("nan")

    refused(edited(data, poison), f"'{part}.{field}'.*(not finite|not a finite)")


def test_nan_in_a_tensor_is_refused(data):
    def poison(tensors):
        tensors["reference.quantiles"].flat[0] = float("nan")

    refused(edited(data, change_tensors=poison), "'reference.quantiles' holds NaN")


def test_draw_offsets_that_would_move_every_draw_far_are_refused(data):
    def far(tensors):
        tensors["reference.draw_offsets"][:] = 5.0

    refused(edited(data, change_tensors=far), "'reference.draw_offsets' move the model's draws")


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda c: c.__setitem__((1, 0, 1), c[1, 0, 1] + 0.5), "is not symmetric"),
        (lambda c: c.__setitem__((2, 0, 0), -1.0), "is not positive definite"),
        (lambda c: c.__imul__(50.0), "has variances above"),
    ],
)
def test_an_edited_gaussian_prior_is_refused(fitted_prior, change, match):
    def edit(tensors):
        change(tensors["net.prior.cov"])

    data = fitted_prior.to_bytes()
    NormativeModel.from_bytes(data, device="cpu")  # unedited: loads
    refused(edited(data, change_tensors=edit), f"'net.prior.cov' {match}")


def test_prior_anchor_ages_out_of_order_are_refused(fitted_prior):
    def swap(tensors):
        tensors["net.prior.anchors"][:] = tensors["net.prior.anchors"][::-1].copy()

    refused(edited(fitted_prior.to_bytes(), change_tensors=swap), "net.prior.anchors")


def test_negative_scale_is_refused(data):
    def mirror(meta):
        meta["transform"]["scale"][0] = -meta["transform"]["scale"][0]

    refused(edited(data, mirror), "'transform.scale' has scales that are not positive")


def test_decreasing_reference_quantiles_are_refused(data):
    def reverse(tensors):
        tensors["reference.quantiles"] = np.flip(tensors["reference.quantiles"], 2)

    refused(edited(data, change_tensors=reverse), "'reference.quantiles' should be increasing")


def test_decreasing_shape_quantiles_are_refused(data):
    def reverse(tensors):
        table = tensors[bundle.SHAPE_TENSOR]
        tensors[bundle.SHAPE_TENSOR] = np.flip(table, 1)

    refused(edited(data, change_tensors=reverse), "'shape.quantiles' should be increasing")


def test_repeated_levels_are_refused(data):
    def repeat(meta):
        site = meta["encoder"]["levels"]["site"]
        site[-1] = site[0]

    refused(edited(data, repeat), "repeat levels")


# ------------------------------------------------------------------ malformed headers
def test_header_that_is_a_list_is_refused(data):
    refused(forged(data, "[1, 2, 3]"), "not a normcore model bundle")


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("config", "network"), [4], "'config.network' should be a JSON object, not a list"),
        (("config", "sampling_steps"), "20", "'config.sampling_steps' should be a whole number"),
        (("schema", "idps"), 3, "'schema' is malformed"),
        (("encoder", "levels"), ["F", "M"], "'encoder.levels' should be a JSON object"),
        (("encoder", "age_sd"), 0, "'encoder.age_sd' is 0, outside above 0"),
        (("training", "n"), 2.5, "'training.n' should be a whole number"),
        (("deviation_calibration",), {"a": 1}, "'deviation_calibration' should be a list"),
        (("deviation_calibration",), [0, 1, 0], "'deviation_calibration' should hold a shift"),
        (("deviation_calibration",), [9, 1], "'deviation_calibration shift' is 9"),
        (("deviation_calibration",), [0, 1, 2.0, 0, 20, 80], "shift slope' is 2"),
        (("deviation_calibration",), [0, 1, 0, 0.1, 80, 20], "oldest age' is 20"),
        (("adaptations",), [{"column": "site"}], "'adaptations\\[0\\]' has no 'level'"),
        (("history",), [[1, 2]], "'history\\[0\\]' should be a JSON object"),
    ],
)
def test_wrong_types_are_refused(data, path, value, match):
    def change(meta):
        target = meta
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    refused(edited(data, change), match)


def test_deeply_nested_header_json_is_refused(data):
    tensors, meta = bundle.from_bytes(data)
    text = json.dumps(meta, sort_keys=True)
    deep = text[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    refused(forged(data, deep), "nested 100001 levels deep")


def test_deeply_nested_outer_header_is_refused():
    body = b'{"__metadata__": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    raw = len(body).to_bytes(8, "little") + body
    refused(raw, "the file's header.*nested")


def test_huge_integer_in_the_header_is_refused(data):
    tensors, meta = bundle.from_bytes(data)
    text = json.dumps(meta, sort_keys=True).replace('"seed": 0', '"seed": ' + "9" * 5000, 1)
    refused(forged(data, text), "not readable JSON")


def test_json_depth_ignores_brackets_inside_strings():
    assert bundle_checks.json_depth(b'{"a": "[[[[{{{{", "b": [1, [2]]}') == 3
    assert bundle_checks.json_depth(b'["\\"[[["]') == 1


# ------------------------------------------------------------------- sizes and shapes
def test_huge_network_fails_before_any_module_is_built(data, monkeypatch):
    def deep(meta):
        meta["config"]["network"] = {"width": 32, "depth": 100_000}

    attacked = edited(data, deep)

    def no_build(*args, **kwargs):
        raise AssertionError("a network was built from an unchecked header")

    monkeypatch.setattr(denoisers, "build_denoiser", no_build)
    refused(attacked, r"'config.network.depth' is 100000, outside 1 to 64")


def test_network_settings_that_disagree_with_the_weights_are_refused(data, test_df, key_file):
    """Loading reads the weights as arrays; the network is built, and its weights checked
    against its settings, when the model first draws, and before a file is signed."""

    def wider(meta):
        meta["config"]["network"] = {"width": 64, "depth": 2}

    attacked = edited(data, wider)
    model = NormativeModel.from_bytes(attacked, device="cpu")
    with pytest.raises(BundleError, match="network's weights do not match its settings"):
        model.sample(test_df.head(2), 1)
    with pytest.raises(BundleError, match="network's weights do not match its settings"):
        bundle.sign(attacked, provenance.read_key(key_file))


def test_too_many_levels_are_refused(data):
    def many(meta):
        meta["encoder"]["levels"]["site"] += [f"T{i:05d}" for i in range(10_000)]

    refused(edited(data, many), r"'encoder.levels.site' has 10002 entries \(at most 10000\)")


def test_small_file_that_would_unpack_to_a_huge_reference_table_is_refused(data):
    def many(meta):
        meta["encoder"]["levels"]["site"] += [f"T{i:05d}" for i in range(9_990)]

    def wide(tensors):
        tensors["reference.quantiles"] = np.zeros((1, 11, 31, 300), dtype=np.float32)

    refused(edited(data, many, wide), "would unpack to")


# -------------------------------------------------------------------------- provenance
def test_loaded_model_carries_its_fingerprint_and_training_table_digest(fitted, data, train_df):
    model = NormativeModel.from_bytes(data, device="cpu")
    assert model.origin.fingerprint == _stored(data)["sha256"]
    assert model.origin.signature == "unsigned"
    card = provenance_card(model)
    assert card["fingerprint (SHA-256)"] == model.origin.fingerprint
    assert card["training table SHA-256"] == provenance.table_digest(train_df, fitted.schema)
    assert provenance_card(fitted)["fingerprint (SHA-256)"].startswith("not saved yet")


def test_training_table_digest_follows_the_content(train_df, schema):
    base = provenance.table_digest(train_df, schema)
    assert provenance.table_digest(train_df.copy(), schema) == base
    changed = train_df.copy()
    changed.loc[0, schema.idps[0]] += 1e-9
    assert provenance.table_digest(changed, schema) != base
    assert np.isfinite(train_df[list(schema.idps)].to_numpy()).all()


def test_demo_model_passes_every_check(demo_model):
    model = NormativeModel.load(demo_model, device="cpu")
    assert len(model.origin.fingerprint) == 64
    assert not model.joint_.net.training  # built from its weights, which pass their check


# ------------------------------------------------------------ the new-person site factor
def _site_counts(meta, n: int = 40) -> list[list[int]]:
    return [[n] * len(levels) for levels in meta["encoder"]["levels"].values()]


def test_a_site_factor_in_the_file_widens_new_peoples_bands(data, test_df):
    """A file whose new-person spread has a site term scores the same people less far out
    (|z| smaller) and gives wider centile fans where its sites are known from fewer
    people."""

    def sites_of(n: int):
        def change(meta):
            meta["predictive"]["site_term"] = 8.0
            meta["predictive"]["level_counts"] = _site_counts(meta, n)

        return change

    honest = NormativeModel.from_bytes(edited(data, sites_of(100_000)), device="cpu")
    wide = NormativeModel.from_bytes(edited(data, sites_of(40)), device="cpu")
    z, z_wide = (m.score(test_df)["z"].abs().to_numpy() for m in (honest, wide))
    assert np.all(z_wide <= z + 1e-9) and z_wide.mean() < 0.95 * z.mean()
    grid = test_df[["age", "sex", "site"]].head(3)
    span = [
        m.centiles(grid, [0.05, 0.95]).groupby(["idp", "age"])["value"].agg(np.ptp).mean()
        for m in (honest, wide)
    ]
    assert span[1] > 1.05 * span[0]


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda p, m: p.update(site_term=1e6, level_counts=_site_counts(m)), "site_term"),
        (lambda p, m: p.update(site_term=2.0, level_counts=[[5]]), "level_counts"),
        (lambda p, m: p.update(site_term=2.0, level_counts=[["many"]]), "level_counts"),
        (
            lambda p, m: p.update(
                site_term=2.0, level_counts=[[-3] * len(c) for c in _site_counts(m)]
            ),
            "negative count",
        ),
    ],
)
def test_an_edited_site_factor_is_refused(data, change, match):
    refused(edited(data, lambda meta: change(meta["predictive"], meta)), match)


@pytest.mark.parametrize(
    "shifts, match",
    [
        ({"column": 9, "shifts": [0.1]}, "deviation_site_shifts.column"),
        ({"column": 1, "shifts": [50.0]}, "deviation_site_shifts.shifts"),
        ({"column": 1, "shifts": [0.1] * 500}, "deviation_site_shifts.shifts"),
        ({"column": 1, "shifts": "0.1"}, "deviation_site_shifts.shifts"),
    ],
)
def test_edited_deviation_site_shifts_are_refused(data, shifts, match):
    refused(edited(data, lambda meta: meta.update(deviation_site_shifts=shifts)), match)


def test_deviation_site_shifts_round_trip_and_move_a_sites_deviation(data, test_df):
    """Shifts read back as written; a site shifted up has its people ranked less unusual."""

    def shifted(meta):
        meta["deviation_site_shifts"] = {"column": 1, "shifts": [1.0] * 2}

    honest = NormativeModel.from_bytes(data, device="cpu")
    moved = NormativeModel.from_bytes(edited(data, shifted), device="cpu")
    assert moved.deviation_calibration_.site_shifts == (1.0, 1.0)
    again = NormativeModel.from_bytes(moved.to_bytes(), device="cpu")
    assert again.deviation_calibration_ == moved.deviation_calibration_
    before, after = (m.deviation(test_df)["deviation_centile"].to_numpy() for m in (honest, moved))
    assert np.all(after <= before + 1e-9) and after.mean() < before.mean() - 5


def test_draw_offsets_are_bounded_by_their_curve_over_the_ages_not_by_coefficients(data):
    """A quadratic's coefficients may exceed the bound while its curve over the grid's
    ages stays within it (the model loads); a fit caps a larger curve, keeping its shape,
    so it never writes a file the loader refuses."""
    from normcore.reference import MAX_DRAW_OFFSET, capped_offsets, offset_reach

    def within(tensors):
        offsets = tensors["reference.draw_offsets"]
        offsets[:] = 0.0
        offsets[:, 0, 0], offsets[:, 2, 0] = -1.0, 2.5  # from -1 at mid-age to 1.5 at the ends

    assert NormativeModel.from_bytes(edited(data, change_tensors=within), device="cpu")
    far = np.zeros((3, 2))
    far[:, 0], far[:, 1] = (0.5, 1.0, 1.5), (0.2, 0.1, 0.0)  # reaches 3.0 and 0.3
    capped = capped_offsets(far)
    np.testing.assert_allclose(offset_reach(capped), [MAX_DRAW_OFFSET, 0.3])
    np.testing.assert_allclose(capped[:, 0] / far[:, 0], MAX_DRAW_OFFSET / 3.0)
    np.testing.assert_array_equal(capped[:, 1], far[:, 1])
