"""Where the network runs: one place that turns "auto" / "cpu" / "cuda" into a torch device.

Kept apart from the model so that the CLI, the distributed launcher and the model agree
on one rule: `auto` takes a GPU when torch sees one, else the CPU; asking for `cuda` on a
machine without one is a user error with a plain message, not a CUDA traceback. Bundles
never depend on the device: weights are saved from CPU copies and loaded onto whatever
device the loading process chooses.

Mixed precision: only the training forward pass runs under autocast, in bfloat16 on GPUs
that support it. The sampler and the reference table stay in float32 on every device,
because the reverse process accumulates 50 steps of small variance corrections
(moment matching) whose rounding in 8-bit-mantissa bfloat16 would narrow or widen the
centile bands; on the CPU everything stays float32, so CPU results do not change.
"""

from __future__ import annotations

import contextlib

import torch

from normcore.options import DEVICES


def resolve_device(
    name: str | torch.device | None = "auto", local_rank: int | None = None
) -> torch.device:
    """The torch device for a user's choice: 'auto' (GPU if available), 'cpu', 'cuda', 'cuda:N'.

    `local_rank` picks the GPU of one process among several on a machine (torchrun's
    LOCAL_RANK); it is ignored on the CPU.
    """
    if isinstance(name, torch.device):
        return name
    text = (name or "auto").strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                "device 'cuda' was requested but torch sees no GPU here "
                f"(torch {torch.__version__}); use --device cpu or --device auto."
            )
        if text == "cuda":
            index = local_rank if local_rank is not None else torch.cuda.current_device()
            return torch.device("cuda", index % torch.cuda.device_count())
        return torch.device(text)
    raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")


def training_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision for the training forward pass: bfloat16 on capable GPUs, else nothing.

    bfloat16 keeps float32's exponent range, so no loss scaling is needed and the
    v-prediction loss (targets of unit variance) is not at risk of under/overflow.
    """
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def generator(device: torch.device, seed: int) -> torch.Generator:
    """A seeded random generator living on `device` (the sampler draws its noise there)."""
    return torch.Generator(device=device).manual_seed(seed)
