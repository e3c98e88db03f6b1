"""The exact denoiser of a Gaussian law of the scores, which a network then corrects.

Why: the first stage leaves each IDP's scores near N(0, 1) at every age, sex and site, so
the law the denoiser must learn is close to a Gaussian with the scores' covariance, and
for a Gaussian the best v prediction has a closed form for any noise level and any set
of observed cells. A network that adds a learned correction to it starts from what a
Gaussian copula knows (the copula's conditional centiles, exactly) and spends its 2,000
or so training rows on what a copula cannot say: subgroups, coupling that changes with
age (benchmarks/RESULTS.md, "Gaussian prior"). The same idea underlies residual learning
over an analytic baseline in score-based models (e.g. the Gaussian "linear denoiser" of
Wang & Vastola, "The unreasonable effectiveness of Gaussian score approximation for
diffusion models", TMLR 2024).

With x0 ~ N(0, S), a cell i observed either clean (y_i = x0_i) or noisy
(y_i = s x0_i + sigma eps_i, s = sqrt(alpha_bar_t), sigma = sqrt(1 - alpha_bar_t)):
E[x0 | y] = S A (A S A + N)^-1 y with A = diag(1 or s), N = diag(0 or sigma^2), and the
noisy cells' v = s eps - sigma x0 has E[v | y] = (s y - E[x0 | y]) / sigma.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class GaussianPrior(nn.Module):
    """E[v | x_t, observed cells] under x0 ~ N(0, `cov`), for a schedule's alpha_bar.

    `cov` (D, D) is a buffer saved with the network's weights (set once, before training,
    from the training people's scores: `set_covariance`); alpha_bar is rebuilt from the
    schedule and not saved.
    """

    def __init__(self, n_idps: int, alpha_bar: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("cov", torch.eye(n_idps))
        self.register_buffer(
            "alpha_bar", torch.as_tensor(alpha_bar, dtype=torch.float64), persistent=False
        )

    def set_covariance(self, cov: np.ndarray) -> None:
        """Use `cov` (D, D), symmetric positive definite, as the Gaussian's covariance."""
        self.cov.copy_(torch.as_tensor(cov, dtype=self.cov.dtype))

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, observed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """E[v | x] (B, D) for x (B, D) at timesteps t ((B,) or one shared (1,)); cells
        marked in `observed` hold clean scores and get 0 (their v is never used).

        One D x D solve per distinct (observed set, timestep) among the rows, batched, in
        float64: a sampler's pass is one, a training batch as many as its groups
        (train.ROWS_PER_DRAW)."""
        cov, y = self.cov.to(torch.float64), x.to(torch.float64)
        obs = torch.zeros(1, x.shape[1], dtype=torch.bool, device=x.device)
        if observed is not None:
            obs = observed > 0
        seen, steps, which = _pairs(obs, t.reshape(-1))
        ab = self.alpha_bar[steps].unsqueeze(-1)
        s, sigma = ab.sqrt(), (1.0 - ab).sqrt()
        a = torch.where(seen, 1.0, s)
        k = a.unsqueeze(-1) * cov * a.unsqueeze(-2) + torch.diag_embed(
            torch.where(seen, 0.0, sigma**2)
        )
        # x0 = S A K^-1 y: one factorisation per pair, one triangular solve per row.
        lu, pivots = torch.linalg.lu_factor(k)
        if which is None:
            sol = torch.linalg.lu_solve(lu[0], pivots[0], y.T).T
        else:
            lu, pivots, seen, s, sigma = (v[which] for v in (lu, pivots, seen, s, sigma))
            a = a[which]
            sol = torch.linalg.lu_solve(lu, pivots, y.unsqueeze(-1)).squeeze(-1)
        x0 = (a * sol) @ cov
        return torch.where(seen, 0.0, (s * y - x0) / sigma).to(x.dtype)

    def clean(self, x: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The clean scores sqrt(ab) x - sqrt(1 - ab) v that x (B, D) at timesteps t and
        a v prediction (this prior's) imply (diffusion.sampler's x0 from v)."""
        ab = self.alpha_bar.to(x.device)[t].reshape(-1, 1)
        return (ab.sqrt() * x - (1.0 - ab).sqrt() * v).to(x.dtype)


def _pairs(
    observed: torch.Tensor, steps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The distinct (observed set, timestep) pairs among the rows of `observed` ((B, D) or
    one shared (1, D)) and `steps` ((B,) or one shared (1,)): their sets (P, D), their
    timesteps (P,), and each row's pair (B,), None when every row shares one pair."""
    if len(steps) == 1 and bool((observed == observed[:1]).all()):
        return observed[:1], steps, None
    n = max(len(observed), len(steps))
    key = torch.cat([observed.expand(n, -1).float(), steps.expand(n).float()[:, None]], 1)
    pairs, which = torch.unique(key, dim=0, return_inverse=True)
    return pairs[:, :-1] > 0, pairs[:, -1].long(), which
