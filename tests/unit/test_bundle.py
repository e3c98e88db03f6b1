import json
import pickle

import pandas as pd
import pytest

from normcore import bundle
from normcore.errors import BundleError
from normcore.model import NormativeModel


@pytest.fixture(scope="module")
def data(fitted) -> bytes:
    return fitted.to_bytes()


def test_round_trip_preserves_everything_needed(fitted, data, test_df):
    again = NormativeModel.from_bytes(data)
    assert again.schema == fitted.schema and again.training_summary == fitted.training_summary
    assert again.score(test_df)["centile"].equals(fitted.score(test_df)["centile"])


def test_truncated_bundle_is_refused(data):
    for cut in (0, 5, 100, len(data) // 2, len(data) - 1):
        with pytest.raises(BundleError, match="truncated|damaged|not a normcore"):
            NormativeModel.from_bytes(data[:cut])


def test_tampered_bundle_is_refused(data):
    tampered = bytearray(data)
    tampered[-10] ^= 0xFF
    with pytest.raises(BundleError, match="modified after it was saved"):
        NormativeModel.from_bytes(bytes(tampered))


def _with_meta(data: bytes, change) -> bytes:
    tensors, meta = bundle.from_bytes(data)
    change(meta)
    return bundle.to_bytes(tensors, meta)


def test_other_format_version_is_refused_with_versions_named(data):
    def bump(meta):
        meta["normcore_version"] = "9.0.0"

    tensors, meta = bundle.from_bytes(data)
    meta["format_version"] = 99
    raw = bundle.to_bytes(tensors, meta)  # to_bytes stamps the current version back
    assert NormativeModel.from_bytes(_with_meta(raw, bump))
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    inner = json.loads(header["__metadata__"]["normcore"])
    inner["format_version"] = 99
    header["__metadata__"]["normcore"] = json.dumps(inner, sort_keys=True)
    new_header = json.dumps(header).encode()
    forged = len(new_header).to_bytes(8, "little") + new_header + raw[8 + header_len :]
    with pytest.raises(BundleError, match="format 99"):
        NormativeModel.from_bytes(forged)


def test_mismatched_shapes_are_refused(data):
    tensors, meta = bundle.from_bytes(data)
    meta["schema"]["idps"] = meta["schema"]["idps"][:-1]
    meta["training"]["idps"] = meta["training"]["idps"][:-1]
    with pytest.raises(BundleError, match="has 3 values for 2 IDPs"):
        NormativeModel.from_bytes(bundle.to_bytes(tensors, meta))


def _content(data: bytes) -> tuple[dict, bytes]:
    """A bundle's header as JSON (safetensors writes its metadata keys in an order that
    changes from call to call) and its tensor bytes."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def test_a_loaded_model_saves_what_it_read_before_and_after_its_network_is_built(data):
    """Saving writes the weights the file held, whether they are still numpy arrays or
    the network was built from them (a loaded model builds it when it first draws)."""
    loaded = NormativeModel.from_bytes(data, device="cpu")
    assert _content(loaded.to_bytes()) == _content(data)
    assert loaded.joint_.net.training is False  # built now
    assert _content(loaded.to_bytes()) == _content(data)


def _within(old, new) -> bool:
    """Whether JSON `old` is `new` but for keys `new` adds (settings added since)."""
    if isinstance(old, dict):
        return isinstance(new, dict) and all(k in new and _within(old[k], new[k]) for k in old)
    return old == new


def test_the_demo_model_saves_what_it_read(demo_model):
    """The demo file was written before the reader stopped using torch: loading and saving
    it gives the same tensors, byte for byte, and the same JSON (plus any setting added
    to normcore since, at its default), in today's format."""
    raw = demo_model.read_bytes()
    header, tensors = _content(NormativeModel.from_bytes(raw, device="cpu").to_bytes())
    old_header, old_tensors = _content(raw)
    assert tensors == old_tensors
    meta, old_meta = header.pop("__metadata__"), old_header.pop("__metadata__")
    assert header == old_header  # every tensor's name, type, shape and offsets
    old, new = json.loads(old_meta["normcore"]), json.loads(meta["normcore"])
    assert new.pop("format_version") == bundle.FORMAT_VERSION  # saved in today's format
    old.pop("format_version")
    assert _within(old, new)


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    malicious = tmp_path / "model.normcore"
    malicious.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(BundleError):
        NormativeModel.load(malicious)
    assert not marker.exists()


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(BundleError, match="No model file"):
        NormativeModel.load(tmp_path / "nope.normcore")


def test_save_is_atomic_and_leaves_no_partial_file(fitted, tmp_path):
    path = tmp_path / "m.normcore"
    fitted.save(path)
    assert path.exists() and not list(tmp_path.glob("*.partial"))


def _as_format_8(data: bytes, network: dict, version: int = 8) -> bytes:
    """The bundle as format 8 (or `version`) wrote it: that version number and `network`
    as its sizes, with a checksum that matches (as a file saved then has)."""
    from safetensors.numpy import save as st_save

    tensors, meta = bundle.from_bytes(data)
    meta = {**meta, "format_version": version, "config": {**meta["config"], "network": network}}
    meta_json = json.dumps(meta, sort_keys=True, allow_nan=True)
    return st_save(
        tensors, metadata={"normcore": meta_json, "sha256": bundle._digest(tensors, meta_json)}
    )


def test_film_file_of_format_9_reads_with_its_joined_inputs(train_df, schema, test_df):
    """Before format 10 a FiLM network took the observed scores and the noisy values in
    one channel: such a file builds that network and draws as before; saved again, it
    names the layout; a file of today's format is the split one, which the old weights do
    not fit."""
    settings = dict(max_epochs=2, reference_samples=200, grid_points=11)
    model = NormativeModel(**settings, network={"split_observed": 0}).fit(train_df, schema)
    assert model.joint_.net.inp.in_features == 2 * len(schema.idps)
    old_file = _as_format_8(model.to_bytes(), {}, version=9)
    again = NormativeModel.from_bytes(old_file)
    assert again.config.network == {"split_observed": 0}
    given = [schema.idps[0]]
    pd.testing.assert_frame_equal(
        again.score(test_df.head(4), given=given), model.score(test_df.head(4), given=given)
    )
    resaved = NormativeModel.from_bytes(again.to_bytes())
    assert resaved.config.network == {"split_observed": 0}
    today = NormativeModel.from_bytes(_as_format_8(model.to_bytes(), {}, version=10))
    with pytest.raises(BundleError, match="do not match its settings"):
        today.sample(test_df.head(1), n=1)
    split = NormativeModel(**settings).fit(train_df, schema)  # today's default
    assert split.joint_.net.inp.in_features == 3 * len(schema.idps)


def test_saint_file_of_format_8_reads_with_the_sizes_of_its_time(train_df, schema, test_df):
    old_defaults = dict(width=32, heads=4, ffn=4)
    settings = dict(max_epochs=2, reference_samples=200, grid_points=11, backbone="saint")
    model = NormativeModel(**settings, network=old_defaults).fit(train_df, schema)
    old_file = _as_format_8(model.to_bytes(), {})  # format 8 stored no sizes: its defaults
    again = NormativeModel.from_bytes(old_file)
    assert again.config.network == {"depth": 2, "idps_per_token": 1, **old_defaults}
    draws = again.sample(test_df.head(5), n=3, seed=0)
    pd.testing.assert_frame_equal(draws, model.sample(test_df.head(5), n=3, seed=0))
    resaved = NormativeModel.from_bytes(again.to_bytes())  # saved again: names its sizes
    assert resaved.config.network == again.config.network
    narrower = NormativeModel.from_bytes(_as_format_8(model.to_bytes(), {"width": 16}))
    with pytest.raises(BundleError, match="do not match its settings"):
        narrower.sample(test_df.head(1), n=1)
