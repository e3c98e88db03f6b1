"""Denoising networks over all IDPs at once, and the one list of their names.

Each has `embed(age, codes) -> h` (the covariate embedding) and `forward(x_t, t, h) ->
v_hat`: the networks predict v, not the noise (see `normcore.diffusion.sampler.v_target`).
Built with `masked=True`, `forward` also takes `observed` (B, D), the 0/1 mask of cells
holding clean observed scores (conditional draws, normcore.conditional).
`BACKBONES` (defined in normcore.options, which the CLI's parser reads without torch) is
the registry the CLI, the dashboard and the benchmarks offer.
"""

from __future__ import annotations

from torch import nn

from normcore.denoisers.conditioning import Conditioning
from normcore.denoisers.film_mlp import FiLMMLP
from normcore.denoisers.gaussian_prior import GaussianPrior
from normcore.denoisers.saint import SAINT
from normcore.diffusion.schedule import Schedule
from normcore.options import BACKBONES


def build_denoiser(
    backbone: str,
    n_idps: int,
    n_levels: list[int],
    steps: int,
    masked: bool = True,
    prior: Schedule | None = None,
    **size: int,
) -> nn.Module:
    """Construct a denoiser by name; `size` overrides its width/depth defaults. `masked`
    networks take an observation mask (conditional centiles); False builds the networks of
    models fitted before conditional scoring. With `prior` (the model's noise schedule) the
    network learns a correction to the exact denoiser of a Gaussian law (GaussianPrior);
    without it, the whole denoiser (models fitted before it)."""
    gaussian = None if prior is None else GaussianPrior(n_idps, prior.alpha_bar)
    if backbone == "film":
        return FiLMMLP(n_idps, n_levels, steps, masked=masked, prior=gaussian, **size)
    if backbone == "saint":
        return SAINT(n_idps, n_levels, steps, masked=masked, prior=gaussian, **size)
    raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")


__all__ = ["BACKBONES", "Conditioning", "FiLMMLP", "GaussianPrior", "SAINT", "build_denoiser"]
