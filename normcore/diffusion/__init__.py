"""The diffusion process: noise schedules and samplers, with no learned state."""

from normcore.diffusion.sampler import (
    ddim_timesteps,
    generate,
    given_x0_covariance,
    q_sample,
    v_target,
    x0_covariance,
)
from normcore.diffusion.schedule import Schedule

__all__ = [
    "Schedule",
    "ddim_timesteps",
    "generate",
    "given_x0_covariance",
    "q_sample",
    "v_target",
    "x0_covariance",
]
