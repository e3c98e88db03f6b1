"""Residual MLP whose every block is modulated by the conditioning vector (FiLM).

Compared with the paper's 8 x 384 BatchNorm MLP, this uses LayerNorm (no dependence on
the batch, so sampling one person equals sampling a thousand), residual blocks and a
sinusoidal time embedding. It is much smaller (width 128, 4 blocks), which is what makes
training and the reference table cheap on a CPU: the first stage has taken out each
IDP's margins, so the denoiser's job is the dependence between IDPs, and a wider network
costs fit time without lowering the centile error (benchmarks/RESULTS.md, "Smaller
networks"). FiLM: Perez et al., AAAI 2018.

`masked=True` adds conditioning on any subset of the IDPs, as in CSDI (Tashiro et al.,
NeurIPS 2021), so one network answers for every subset (normcore.conditional). Its input
keeps apart the observed IDPs' clean scores, the other IDPs' noisy values and the 0/1 mask
saying which cells are observed (`split_observed`). Joined in one channel (the noisy vector
with the clean scores in their cells, and the mask), the first linear layer cannot pull
them apart itself, since that takes a product of a value and the mask: the conditional
centiles' error on the subgroup truth was much larger (benchmarks/RESULTS.md, "Fit
profile"). Files before format 10 hold networks of that joined layout.

With a Gaussian `prior` (normcore.denoisers.gaussian_prior) the network predicts a
correction to the prior's v, and its input keeps apart what a first linear layer cannot
pull apart itself: the observed cells' clean scores, the other cells' noisy values, the
mask, and the prior's estimate of the other cells' clean scores. Each step lowered the
conditional centiles' error on the subgroup truth (benchmarks/RESULTS.md, "Fit
profile"). The head keeps its usual initialisation: started at zero (at the prior), the
network learned less of how coupling changes with age before early stopping ended it.
With a prior, the covariate embedding's last column is the prior's age level (`embed`).
"""

from __future__ import annotations

import torch
from torch import nn

from normcore.denoisers.conditioning import Conditioning, check_masked, draws_per_row, with_mask
from normcore.denoisers.gaussian_prior import GaussianPrior


class FiLMBlock(nn.Module):
    """LayerNorm -> Linear -> FiLM(scale, shift from cond) -> SiLU -> Linear, residual."""

    def __init__(self, width: int, cond_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.film = nn.Linear(cond_dim, 2 * width)
        self.fc2 = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """h (B, width) modulated by `cond` (P, cond_dim), each row of which serves B / P
        consecutive rows of h (`draws_per_row`): the scale and shift are computed per row
        of `cond`, and fc1's bias folded into the shift, (W n + b)(1 + s) + t =
        (W n)(1 + s) + (b (1 + s) + t), so that no pass over the B rows adds it."""
        k, width = draws_per_row(h, cond), h.shape[-1]
        scale, shift = self.film(cond).chunk(2, dim=-1)
        gain = 1 + scale
        offset = self.fc1.bias * gain + shift
        u = nn.functional.linear(self.norm(h), self.fc1.weight).view(-1, k, width)
        u = torch.addcmul(offset.unsqueeze(1), u, gain.unsqueeze(1)).view(-1, width)
        return h + self.fc2(self.drop(nn.functional.silu(u)))


class FiLMMLP(nn.Module):
    """FiLM-conditioned residual MLP denoiser over the whole IDP vector.

    `split_observed`: 1 (the default) gives a masked network without a prior the observed
    scores, the noisy values and the mask in three channels; 0 joins the first two, as
    networks saved before format 10 do. With a prior its inputs are always apart.
    """

    def __init__(
        self,
        n_idps: int,
        n_levels: list[int],
        steps: int,
        width: int = 128,
        depth: int = 4,
        dropout: float = 0.0,
        masked: bool = False,
        prior: GaussianPrior | None = None,
        split_observed: int = 1,
    ) -> None:
        super().__init__()
        self.masked = masked
        self.split = bool(split_observed) and masked and prior is None
        self.cond = Conditioning(n_levels, steps, width)
        channels = (1 + masked + self.split) if prior is None else (4 if masked else 2)
        self.inp = nn.Linear(channels * n_idps, width)
        self.blocks = nn.ModuleList(FiLMBlock(width, width, dropout) for _ in range(depth))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, n_idps))
        self.prior = prior

    def embed(self, age: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Covariate embedding to pass to `forward` (computed once per sampling run); with
        a prior, its last column is the prior's age level."""
        h = self.cond.embed_covariates(age, codes)
        return h if self.prior is None else self.prior.tag(h, age)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        covariates: torch.Tensor,
        observed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted v (`diffusion.v_target`) for x_t (B, D) at timesteps t and embedded
        covariates (B, dim), or (P, dim) with each row shared by B / P consecutive rows of
        x (one person's draws at one shared timestep; `draws_per_row`). `observed` (B, D)
        0/1 marks cells of x that hold clean observed scores instead of x_t (masked
        networks only; None = none observed)."""
        levels = None
        if self.prior is not None:
            covariates, levels = self.prior.untag(covariates, draws_per_row(x, covariates))
        c = self.cond(t, covariates)
        inputs, prior_v = self._inputs(x, t, observed, levels)
        h = self.inp(inputs)
        for block in self.blocks:
            h = block(h, c)
        v = self.head(h)
        return v if prior_v is None else v + prior_v

    def _inputs(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        observed: torch.Tensor | None,
        levels: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first layer's input, and the prior's v (None without a prior) at the rows'
        age `levels`."""
        if levels is None:
            if not self.split:
                return with_mask(self.masked, x, observed), None
            m = torch.zeros_like(x) if observed is None else observed.to(x.dtype)
            return torch.cat([x * m, x * (1 - m), m], -1), None
        if observed is not None:
            check_masked(self.masked)
        v = self.prior(x, t, observed, levels)
        if not self.masked:
            return torch.cat([x, self.prior.clean(x, t, v)], -1), v
        m = torch.zeros_like(x) if observed is None else observed.to(x.dtype)
        free = 1 - m
        return torch.cat([x * m, x * free, m, self.prior.clean(x, t, v) * free], -1), v
