"""Forward noising and reverse sampling over an explicit list of timesteps.

One update rule covers both samplers: the generalised DDIM step of Song et al. (2021)
with stochasticity `eta`. With `eta=1` it is ancestral DDPM sampling (over all steps it is
exactly DDPM's posterior step; over a subsequence it is the "skip-step" ancestral sampler);
with `eta=0` it is the deterministic DDIM sampler. The previous timestep is always read
from the list, never computed by a formula.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from normcore.diffusion.schedule import Schedule

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""eps_hat = denoise(x_t, t) with the conditioning already bound."""

X0_CLIP = 8.0
"""Predicted clean values are clipped to +-8 network units (data are standardised), which
keeps early, very noisy steps from throwing samples far outside anything plausible."""


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_0) = N(sqrt(ab_t) x0, (1 - ab_t) I)."""
    ab = alpha_bar[t].unsqueeze(-1)
    return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise


def ddim_timesteps(schedule: Schedule, n_steps: int) -> list[int]:
    """Evenly spaced timesteps, descending, always starting at T-1 and ending at 0."""
    if not 1 <= n_steps <= schedule.steps:
        raise ValueError(f"sampling steps must be between 1 and {schedule.steps}, got {n_steps}")
    ts = np.unique(np.round(np.linspace(0, schedule.steps - 1, n_steps)).astype(int))
    return [int(t) for t in ts[::-1]]


@torch.inference_mode()
def generate(
    denoise: Denoise,
    n: int,
    dim: int,
    schedule: Schedule,
    timesteps: list[int],
    eta: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Run the reverse process from pure noise to an (n, dim) sample in network units."""
    alpha_bar = schedule.alpha_bar
    x = torch.randn(n, dim, generator=generator)
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        ab_t = float(alpha_bar[t])
        ab_prev = float(alpha_bar[t_prev]) if t_prev >= 0 else 1.0
        eps = denoise(x, torch.full((n,), t, dtype=torch.long))
        x0 = ((x - (1.0 - ab_t) ** 0.5 * eps) / ab_t**0.5).clamp_(-X0_CLIP, X0_CLIP)
        eps = (x - ab_t**0.5 * x0) / (1.0 - ab_t) ** 0.5
        sigma = eta * ((1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev)) ** 0.5
        x = ab_prev**0.5 * x0 + max(1.0 - ab_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0 and t_prev >= 0:
            x = x + sigma * torch.randn(n, dim, generator=generator)
    return x
