"""Device choice: auto falls back to the CPU, cuda without a GPU is a plain error,
and a model's bundle does not depend on where it was fitted."""

import pytest
import torch

from normcore.device import resolve_device, training_autocast
from normcore.model import NormativeModel

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here")


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch as it looks on a machine with two GPUs, the first one current."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_auto_is_the_cpu_without_a_gpu(no_gpu):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")


def test_auto_is_the_current_gpu_when_there_is_one(two_gpus):
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")


def test_each_process_gets_its_local_rank_s_gpu(two_gpus):
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 1)  # 3 mod 2 GPUs
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda", 0)  # named wins
    assert resolve_device("cpu", local_rank=1) == torch.device("cpu")


def test_cuda_without_a_gpu_is_a_readable_error(no_gpu):
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match="no GPU"):
            resolve_device(name)


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
