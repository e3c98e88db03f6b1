"""The diffusion process: noise schedules and samplers, with no learned state."""

from normcore.diffusion.sampler import ddim_timesteps, generate, q_sample
from normcore.diffusion.schedule import Schedule

__all__ = ["Schedule", "q_sample", "generate", "ddim_timesteps"]
