"""`ModelConfig`: every setting that defines how a model is built, trained and sampled.

Kept in its own module so that the model, which fits with it, and the bundle, which
saves it as JSON and rebuilds the network from it, both read it without importing each
other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from normcore.train import TrainConfig


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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["train"] = self.train.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        # Models saved before conditional scoring have no key: their networks take no mask.
        return cls(**{"conditional": False, **d, "train": TrainConfig(**d["train"])})
