"""Device choice: auto falls back to the CPU, cuda without a GPU is a plain error,
and a model's bundle does not depend on where it was fitted."""

import pytest
import torch

from normcore.device import resolve_device, training_autocast
from normcore.model import NormativeModel

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here")


def test_auto_is_cpu_without_a_gpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_a_readable_error():
    with pytest.raises(ValueError, match="no GPU"):
        resolve_device("cuda")


def test_unknown_device_is_rejected():
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")


def test_no_mixed_precision_on_the_cpu():
    with training_autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")


def test_explicit_cpu_model_loads_on_cpu(fitted, tmp_path):
    path = tmp_path / "m.normcore"
    fitted.save(path)
    model = NormativeModel.load(path, device="cpu")
    assert next(model.joint_.net.parameters()).device.type == "cpu"
    assert model.device_ == torch.device("cpu")


@cuda
def test_a_gpu_fit_saves_a_bundle_that_loads_on_the_cpu(train_df, schema, tiny_settings, tmp_path):
    model = NormativeModel(**tiny_settings, device="cuda").fit(train_df, schema)
    assert next(model.joint_.net.parameters()).device.type == "cuda"
    path = tmp_path / "gpu.normcore"
    model.save(path)
    cpu = NormativeModel.load(path, device="cpu")
    assert (cpu.score(train_df)["z"] == model.score(train_df)["z"]).all()
    assert len(cpu.sample(train_df.head(3), 5)) == 15
