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
from normcore.denoisers.saint import SAINT
from normcore.options import BACKBONES


def build_denoiser(
    backbone: str, n_idps: int, n_levels: list[int], steps: int, masked: bool = True, **size: int
) -> nn.Module:
    """Construct a denoiser by name; `size` overrides its width/depth defaults. `masked`
    networks take an observation mask (conditional centiles); False builds the networks of
    models fitted before conditional scoring."""
    if backbone == "film":
        return FiLMMLP(n_idps, n_levels, steps, masked=masked, **size)
    if backbone == "saint":
        return SAINT(n_idps, n_levels, steps, masked=masked, **size)
    raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")


__all__ = ["BACKBONES", "Conditioning", "FiLMMLP", "SAINT", "build_denoiser"]
