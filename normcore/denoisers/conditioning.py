"""Shared embedding of (timestep, age, categorical covariates) into one vector.

Both backbones condition on the same vector, so the comparison between them is about how
they model the IDPs, not how they read covariates.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal(t: torch.Tensor, dim: int, steps: int) -> torch.Tensor:
    """Transformer-style sinusoidal features of the timestep scaled to [0, 1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half)
    angle = (t.float() * (1000.0 / steps)).unsqueeze(-1) * freqs
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


def age_features(age: torch.Tensor) -> torch.Tensor:
    """(age, age^2/2, age^3/6) of standardised ages, shape (B, 3)."""
    age = age.reshape(-1, 1)
    return torch.cat([age, age**2 / 2, age**3 / 6], dim=-1)


class Conditioning(nn.Module):
    """Embed timestep, standardised age and category codes (0 = unknown) into `dim`.

    The covariate embedding is split from the timestep so that a sampler computes it once
    per person instead of once per step. Age enters through a small MLP on (age, age^2,
    age^3) so that non-linear age curves need not be rebuilt by every layer; each
    categorical covariate has its own embedding table whose row 0 is the learned
    "unknown" level.
    """

    def __init__(self, n_levels: list[int], steps: int, dim: int) -> None:
        super().__init__()
        self.steps = steps
        self.time_dim = dim
        self.time = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.age = nn.Sequential(nn.Linear(3, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.categories = nn.ModuleList(nn.Embedding(k, dim) for k in n_levels)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim))

    def embed_covariates(self, age: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The covariate part of the conditioning (B, dim): computed once per sampling run."""
        h = self.age(age_features(age))
        for k, table in enumerate(self.categories):
            h = h + table(codes[:, k])
        return h

    def forward(self, t: torch.Tensor, covariates: torch.Tensor) -> torch.Tensor:
        """Conditioning vector from timesteps (B,) or one shared timestep (1,)."""
        return self.out(self.time(sinusoidal(t, self.time_dim, self.steps)) + covariates)


def with_mask(masked: bool, x: torch.Tensor, observed: torch.Tensor | None) -> torch.Tensor:
    """x (B, D) concatenated with its observation mask (B, D) for a masked network (zeros
    when `observed` is None: nothing observed), x itself for an unmasked one."""
    if not masked:
        if observed is not None:
            check_masked(masked)
        return x
    return torch.cat([x, torch.zeros_like(x) if observed is None else observed.to(x.dtype)], -1)


def draws_per_row(x: torch.Tensor, covariates: torch.Tensor) -> int:
    """How many consecutive rows of x (B, D) each row of `covariates` (P, dim) serves:
    B / P, refused unless whole.

    Why: a person's conditional draws (normcore.conditional) share their covariates and,
    at each sampling step, the timestep, so everything computed from those alone (the
    conditioning vector, and in FiLM every block's scale and shift, half the network's
    multiply-adds) is the same for all of them. Computed once per person and broadcast over
    their draws, it costs 1/K of what it costs per row, for the same result.
    """
    k, rest = divmod(len(x), max(len(covariates), 1))
    if rest or k < 1:
        raise ValueError(
            f"{len(x)} rows of x cannot share {len(covariates)} rows of covariates evenly"
        )
    return k


def check_masked(masked: bool) -> None:
    """Refuse an observation mask for a network built without mask inputs."""
    if not masked:
        raise ValueError("this denoiser was built without conditioning masks")
