"""`ModelConfig` and `TrainConfig`: every setting that defines how a model is built,
trained and sampled.

Kept in their own module, which imports nothing heavy, so that the model, which fits with
them, the training loop, and the bundle, which saves them as JSON and reads them back
before any network is built, all read them without importing each other or torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SAINT_SIZES = {"width": 16, "depth": 2, "heads": 2, "ffn": 2}
"""The SAINT network's default sizes (feed-forward width = `ffn` x width), chosen by
measurement: on the joint benchmark's subgroup truth (20 IDPs) this network's conditional
centiles are as good as those of one twice as wide with twice the heads and feed-forward
(width 32, 4 heads, 4x) at a third of the cost per draw (benchmarks/RESULTS.md, "Fit
profile"). Kept here, beside the settings and away from torch, because the bundle checks
read them too."""

BACKBONE_LR = {"film": 1e-3, "saint": 3e-3}
"""Each backbone's default learning rate. SAINT's small network learns slowly at 1e-3
(at 20 IDPs its validation loss still fell at the 8,000-step cap); at 3e-3 it gets as far
in fewer steps at 20 IDPs, and further in the same steps at 100. FiLM at 3e-3 trains no
faster and no better (benchmarks/RESULTS.md, "Fit profile", learning rate)."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; defaults were chosen on the synthetic benchmark (README)."""

    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_epochs: int | None = None
    """Passes over the training rows; None = as many as `max_steps` allows."""
    max_steps: int = 8000
    patience_steps: int = 500
    """Stop when the validation loss has not improved for this many optimiser steps. The
    loss is that of the EMA weights on fixed draws, so it is smooth, and once the network
    starts to fit its training rows it rises steadily, as do the conditional centiles'
    errors (benchmarks/RESULTS.md, "Fit profile"): a longer wait trains steps that are
    thrown away."""
    val_fraction: float = 0.15
    covariate_dropout: float = 0.1
    """Probability, per categorical covariate and row, of replacing it by 'unknown'."""
    ema_decay: float = 0.995
    unconditional_share: float = 0.3
    """Share of rows trained with nothing observed (masked networks; `conditioning_masks`)."""
    max_seconds: float | None = None
    """Wall-clock budget for the loop (the dashboard's live training uses it)."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines how a model is built, trained and sampled (saved as JSON)."""

    backbone: str = "film"
    schedule: str = "cosine"
    diffusion_steps: int = 1000
    sampling_steps: int = 20
    eta: float = 1.0
    """1 = ancestral (stochastic) sampling, 0 = deterministic DDIM."""
    network: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    reference_samples: int = 10_000
    grid_points: int = 41
    seed: int = 0
    conditional: bool = True
    """The denoiser takes conditioning masks (conditional centiles, people with blank IDPs)."""
    gaussian_prior: bool = False
    """The denoiser learns a correction to the exact denoiser of a Gaussian law with the
    training people's score covariance at each age (normcore.denoisers.gaussian_prior).
    Off by default: it makes conditional centiles and the joint draws much better, but at
    100 IDPs it left the multivariate deviation miscalibrated in most age bands, made
    imputed bands worse and tripled the fit (benchmarks/RESULTS.md, "Joint model";
    README, "Conditional centiles")."""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["train"] = self.train.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        # Models saved before conditional scoring have no key: their networks take no mask.
        return cls(**{"conditional": False, **d, "train": TrainConfig(**d["train"])})
