"""The diffusion process: noise schedules and samplers, with no learned state.

The schedules are numpy and import at once; the samplers need torch and are imported the
first time one of them is asked for (PEP 562), so that reading a model file and scoring
from its reference table never load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from normcore.diffusion.schedule import Schedule, ddim_timesteps

if TYPE_CHECKING:
    from normcore.diffusion.sampler import (
        generate,
        given_x0_covariance,
        q_sample,
        v_target,
        x0_covariance,
    )

__all__ = [
    "Schedule",
    "ddim_timesteps",
    "generate",
    "given_x0_covariance",
    "q_sample",
    "v_target",
    "x0_covariance",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module("normcore.diffusion.sampler"), name)
