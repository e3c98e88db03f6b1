"""Noise schedules as pure functions of their config.

A schedule has no trainable state: it is rebuilt from `(kind, steps)` saved in the bundle.
Products are computed in float64 (alpha_bar underflows quickly in float32 for the paper's
aggressive linear schedule) and handed to torch as float32 where needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

KINDS = ("cosine", "linear")


def linear_betas(steps: int, beta_start: float = 2e-6, beta_end: float = 0.6) -> np.ndarray:
    """The paper's linear schedule (T=100, 2e-6 .. 0.6 in its config)."""
    return np.linspace(beta_start, beta_end, steps, dtype=np.float64)


def cosine_betas(steps: int, offset: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule: alpha_bar(t) = cos^2(((t/T)+s)/(1+s) * pi/2)."""
    t = np.arange(steps + 1, dtype=np.float64) / steps
    f = np.cos((t + offset) / (1 + offset) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    return np.clip(betas, 0.0, max_beta)


@dataclass(frozen=True)
class Schedule:
    """A discrete-time DDPM schedule over timesteps 0..steps-1."""

    kind: str = "cosine"
    steps: int = 1000

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown noise schedule {self.kind!r}; choose one of {KINDS}")
        if self.steps < 2:
            raise ValueError("a noise schedule needs at least 2 steps")

    @property
    def betas(self) -> np.ndarray:
        return cosine_betas(self.steps) if self.kind == "cosine" else linear_betas(self.steps)

    @property
    def alpha_bar(self) -> np.ndarray:
        """Cumulative product of (1 - beta_t), float64, length `steps`."""
        return np.cumprod(1.0 - self.betas)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "steps": self.steps}

    @classmethod
    def from_dict(cls, d: dict) -> Schedule:
        return cls(kind=str(d["kind"]), steps=int(d["steps"]))


def ddim_timesteps(schedule: Schedule, n_steps: int) -> list[int]:
    """Evenly spaced timesteps, descending, always starting at T-1 and ending at 0."""
    if not 1 <= n_steps <= schedule.steps:
        raise ValueError(f"sampling steps must be between 1 and {schedule.steps}, got {n_steps}")
    ts = np.unique(np.round(np.linspace(0, schedule.steps - 1, n_steps)).astype(int))
    return [int(t) for t in ts[::-1]]
