"""The exact denoiser of a Gaussian law of the scores at each age, which a network corrects.

Why: the first stage leaves each IDP's scores near N(0, 1) at every age, sex and site, so
the law the denoiser must learn is close to a Gaussian with the scores' covariance, and
for a Gaussian the best v prediction has a closed form for any noise level and any set
of observed cells. A network that adds a learned correction to it starts from what a
Gaussian copula knows and spends its training rows on what a copula cannot say, such as
a subgroup (benchmarks/RESULTS.md, "Fit profile"). The covariance follows age, as
coupling between brain regions does: one covariance at each of a few anchor ages,
interpolated linearly between them (a convex combination of covariances is one). With
a single covariance for all ages, the network had to undo the pooled coupling at the
youngest ages, and at 100 IDPs it did not: young controls looked atypical. The same idea,
residual learning over an analytic Gaussian denoiser, is in Wang & Vastola, "The
unreasonable effectiveness of Gaussian score approximation for diffusion models" (TMLR
2024).

With x0 ~ N(0, S), a cell i observed either clean (y_i = x0_i) or noisy
(y_i = s x0_i + sigma eps_i, s = sqrt(alpha_bar_t), sigma = sqrt(1 - alpha_bar_t)):
E[x0 | y] = S A (A S A + N)^-1 y with A = diag(1 or s), N = diag(0 or sigma^2), and the
noisy cells' v = s eps - sigma x0 has E[v | y] = (s y - E[x0 | y]) / sigma.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

ANCHORS = 3
"""Ages at which the prior's covariance is estimated: the youngest, middle and oldest
training age (standardised); between them it is interpolated linearly."""
GATHER_CELLS = 2**21
"""Rows x D x D at most for which each row gets its own copy of its key's factors (one
batched solve: a training batch); larger passes (a sampler's thousands of rows) loop over
their few keys instead of copying."""
AGE_LEVELS = 16
"""Ages are read at this many evenly spaced levels between the youngest and oldest
anchor, so that a pass over thousands of people of different ages needs at most this
many D x D solves per timestep and observed set."""


def anchor_weights(age_z: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """(n, K) weights of the K `anchors` (standardised ages, increasing) at the ages
    `age_z` (n,), read at their AGE_LEVELS level (`level_weights`)."""
    return level_weights(age_level(age_z, anchors), anchors)


def level_weights(level: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """(n, K) weights of the K `anchors` at age levels (n,): hat functions, which sum to 1
    (ages beyond the anchors took the nearest end's level)."""
    at = anchors[0] + (anchors[-1] - anchors[0]) * np.asarray(level) / (AGE_LEVELS - 1)
    k = len(anchors)
    out = np.zeros((len(at), k))
    for j in range(k):
        w = np.ones_like(at)
        if j > 0:
            w = np.where(at < anchors[j], (at - anchors[j - 1]) / (anchors[j] - anchors[j - 1]), w)
        if j + 1 < k:
            w = np.where(at > anchors[j], (anchors[j + 1] - at) / (anchors[j + 1] - anchors[j]), w)
        out[:, j] = np.clip(w, 0.0, 1.0)
    return out


def age_level(age_z: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """The level (0 .. AGE_LEVELS - 1) of each standardised age between the end anchors."""
    span = max(float(anchors[-1] - anchors[0]), 1e-12)
    frac = np.clip((np.asarray(age_z, dtype=np.float64) - anchors[0]) / span, 0.0, 1.0)
    return np.rint(frac * (AGE_LEVELS - 1)).astype(np.int64)


class GaussianPrior(nn.Module):
    """E[v | x_t, observed cells] under x0 ~ N(0, S(age)), for a schedule's alpha_bar.

    `cov` (ANCHORS, D, D) and `anchors` (ANCHORS,) are buffers saved with the network's
    weights (set once, before training, from the training people's scores:
    `set_covariance`); alpha_bar is rebuilt from the schedule and not saved.
    """

    def __init__(self, n_idps: int, alpha_bar: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("cov", torch.eye(n_idps).repeat(ANCHORS, 1, 1))
        self.register_buffer("anchors", torch.linspace(-1.0, 1.0, ANCHORS, dtype=torch.float64))
        self.register_buffer(
            "alpha_bar", torch.as_tensor(alpha_bar, dtype=torch.float64), persistent=False
        )

    def set_covariance(self, cov: np.ndarray, anchors: np.ndarray) -> None:
        """Use `cov` (ANCHORS, D, D), each symmetric positive definite, at the standardised
        ages `anchors` (ANCHORS,), increasing."""
        self.cov.copy_(torch.as_tensor(cov, dtype=self.cov.dtype))
        self.anchors.copy_(torch.as_tensor(anchors, dtype=self.anchors.dtype))

    def levels(self, age: torch.Tensor) -> torch.Tensor:
        """Each standardised age's level (`age_level`), as a float column (B, 1) to carry
        in a network's covariate embedding."""
        anchors = self.anchors.cpu().numpy()
        return torch.as_tensor(age_level(age.detach().cpu().numpy(), anchors)).to(
            device=age.device, dtype=torch.float32
        )[:, None]

    def tag(self, h: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
        """A network's covariate embedding h (B, dim) with the ages' levels as a last
        column: how the levels reach `forward` through the networks' call signature."""
        return torch.cat([h, self.levels(age)], 1)

    @staticmethod
    def untag(covariates: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the embedding, each of B = P k rows' level) from a `tag`ged (P, dim + 1)
        embedding whose rows each serve k consecutive rows (`draws_per_row`)."""
        return covariates[:, :-1], covariates[:, -1].repeat_interleave(k)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        observed: torch.Tensor | None,
        levels: torch.Tensor,
    ) -> torch.Tensor:
        """E[v | x] (B, D) for x (B, D) at timesteps t ((B,) or one shared (1,)) and age
        `levels` (B,); cells marked in `observed` hold clean scores and get 0 (their v is
        never used).

        One D x D factorisation per distinct (observed set, timestep, age level) among the
        rows, in float64, and triangular solves for its rows: a sampler's pass has as
        many as its people's age levels, a training batch about as many as its groups
        (train.ROWS_PER_DRAW; a batch is sorted by age)."""
        y = x.to(torch.float64)
        obs = torch.zeros(1, x.shape[1], dtype=torch.bool, device=x.device)
        if observed is not None:
            obs = observed > 0
        seen, steps, level, which = _keys(obs, t.reshape(-1), levels.reshape(-1).long())
        ab = self.alpha_bar[steps].unsqueeze(-1)
        s, sigma = ab.sqrt(), (1.0 - ab).sqrt()
        anchors = self.anchors.cpu().numpy()
        weights = torch.as_tensor(level_weights(level.cpu().numpy(), anchors), device=x.device)
        cov = torch.einsum("pk,kij->pij", weights, self.cov.to(torch.float64))
        a = torch.where(seen, 1.0, s)
        k = a.unsqueeze(-1) * cov * a.unsqueeze(-2) + torch.diag_embed(
            torch.where(seen, 0.0, sigma**2)
        )
        lu, pivots = torch.linalg.lu_factor(k)
        terms = (lu, pivots, cov, a, s, sigma, seen)
        if which is None:
            return _v(y, *(term[0] for term in terms)).to(x.dtype)
        if y.numel() * y.shape[1] <= GATHER_CELLS:  # a training batch: one batched pass
            return _v(y, *(term[which] for term in terms)).to(x.dtype)
        v = torch.empty_like(y)
        for key, term in enumerate(zip(*terms, strict=True)):
            rows = torch.nonzero(which == key).squeeze(1)
            v[rows] = _v(y[rows], *term)
        return v.to(x.dtype)

    def clean(self, x: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The clean scores sqrt(ab) x - sqrt(1 - ab) v that x (B, D) at timesteps t and
        a v prediction (this prior's) imply (diffusion.sampler's x0 from v)."""
        ab = self.alpha_bar.to(x.device)[t].reshape(-1, 1)
        return (ab.sqrt() * x - (1.0 - ab).sqrt() * v).to(x.dtype)


def _v(
    y: torch.Tensor,
    lu: torch.Tensor,
    pivots: torch.Tensor,
    cov: torch.Tensor,
    a: torch.Tensor,
    s: torch.Tensor,
    sigma: torch.Tensor,
    seen: torch.Tensor,
) -> torch.Tensor:
    """E[v | y] for rows y (n, D) given their factorised K = A S A + N (`lu`, `pivots`),
    S (`cov`), A's diagonal `a`, the timestep's s and sigma and the `seen` cells (which
    get 0): either one of each shared by all rows, or one per row (a leading n axis)."""
    if lu.dim() == 2:
        sol = torch.linalg.lu_solve(lu, pivots, y.T).T
        x0 = (a * sol) @ cov
    else:
        sol = torch.linalg.lu_solve(lu, pivots, y.unsqueeze(-1)).squeeze(-1)
        x0 = torch.einsum("bi,bij->bj", a * sol, cov)
    return torch.where(seen, 0.0, (s * y - x0) / sigma)


def _keys(
    observed: torch.Tensor, steps: torch.Tensor, levels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The distinct (observed set, timestep, age level) triples among the rows (each of
    `observed` (B, D), `steps` (B,), `levels` (B,) may have one row shared by all): their
    sets (P, D), timesteps (P,), levels (P,), and each row's triple (B,), None when every
    row shares one."""
    n = max(len(observed), len(steps), len(levels))
    if (
        len(steps) == 1
        and bool((observed == observed[:1]).all())
        and bool((levels == levels[:1]).all())
    ):
        return observed[:1], steps, levels[:1], None
    key = torch.cat(
        [
            observed.expand(n, -1).float(),
            steps.expand(n).float()[:, None],
            levels.expand(n).float()[:, None],
        ],
        1,
    )
    triples, which = torch.unique(key, dim=0, return_inverse=True)
    return triples[:, :-2] > 0, triples[:, -2].long(), triples[:, -1].long(), which


TOWARDS_POOLED = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
"""Candidate weights of the pooled covariance in each anchor's (`prior_covariances`)."""
TOWARDS_IDENTITY = (0.0, 0.05, 0.1, 0.2, 0.4)
"""Candidate weights of the mean variance times the identity, after that."""
SHRINKAGE_FOLDS = 5


def prior_covariances(scores: np.ndarray, age_z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The prior's covariances (ANCHORS, D, D) and anchor ages (ANCHORS,) from the training
    people's first-stage `scores` (n, D) and standardised ages (n,).

    E[z z^T | age] = sum_k w_k(age) S_k is fitted by least squares over people (the same
    normal equations for every entry), about 0 (the first stage makes 0 every IDP's mean
    at every age, sex and site). Each S_k is learned from about a third of the people, so
    at 100 IDPs it is far from its truth, and a prior that conditions on 90 IDPs through
    it gives bands too narrow and deviations too large. It is therefore shrunk towards the
    pooled covariance and then towards a multiple of the identity, by the weights that
    give people left out of the estimate the highest Gaussian likelihood at their age
    (`_shrinkage`, K-fold). The eigenvalues are then floored at 5 % of the mean variance
    so that every S_k stays positive definite."""
    anchors = np.linspace(float(np.min(age_z)), float(np.max(age_z)), ANCHORS)
    if anchors[-1] - anchors[0] < 1e-6:
        anchors = anchors[0] + np.linspace(-1.0, 1.0, ANCHORS)
    pooled, identity = _shrinkage(scores, age_z, anchors)
    return _shrunk(_moments(scores, age_z, anchors), pooled, identity), anchors


def _moments(
    scores: np.ndarray, age_z: np.ndarray, anchors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The anchors' least-squares second moments (ANCHORS, D, D) and the pooled (D, D)."""
    w = anchor_weights(age_z, anchors)
    gram = w.T @ w + 1e-6 * np.eye(ANCHORS)
    moments = np.einsum("nk,ni,nj->kij", w, scores, scores, optimize=True)
    local = np.linalg.solve(gram, moments.reshape(ANCHORS, -1)).reshape(moments.shape)
    return local, scores.T @ scores / len(scores)


def _shrunk(moments: tuple[np.ndarray, np.ndarray], pooled: float, identity: float) -> np.ndarray:
    """The anchors' covariances with these shrinkage weights, eigenvalues floored."""
    local, overall = moments
    mean_variance = float(np.mean(np.diag(overall)))
    out = np.empty_like(local)
    for k in range(ANCHORS):
        mixed = (1.0 - pooled) * local[k] + pooled * overall
        mixed = (1.0 - identity) * mixed + identity * mean_variance * np.eye(len(overall))
        eigval, eigvec = np.linalg.eigh((mixed + mixed.T) / 2)
        out[k] = (eigvec * np.maximum(eigval, 0.05 * mean_variance)) @ eigvec.T
    return out


def _shrinkage(scores: np.ndarray, age_z: np.ndarray, anchors: np.ndarray) -> tuple[float, float]:
    """(towards pooled, towards identity) among the candidates whose anchors, fitted on
    K - 1 folds of people, give the held-out fold's scores the highest mean Gaussian
    log-likelihood at their age level."""
    fold = np.random.default_rng(0).permutation(len(scores)) % SHRINKAGE_FOLDS
    at_level = level_weights(np.arange(AGE_LEVELS), anchors)
    parts = [
        (_moments(scores[fold != k], age_z[fold != k], anchors), fold == k)
        for k in range(SHRINKAGE_FOLDS)
    ]
    best, best_ll = (0.0, 0.0), -np.inf
    for pooled in TOWARDS_POOLED:
        for identity in TOWARDS_IDENTITY:
            ll = sum(
                _log_likelihood(
                    np.einsum("lk,kij->lij", at_level, _shrunk(moments, pooled, identity)),
                    scores[held],
                    age_level(age_z[held], anchors),
                )
                for moments, held in parts
            )
            if ll > best_ll:
                best, best_ll = (pooled, identity), ll
    return best


def _log_likelihood(covs: np.ndarray, scores: np.ndarray, levels: np.ndarray) -> float:
    """Sum over people of log N(score; 0, covs[level]) less the constant."""
    total = 0.0
    for level in np.unique(levels):
        chol = np.linalg.cholesky(covs[level])
        y = np.linalg.solve(chol, scores[levels == level].T)
        total -= 0.5 * float((y**2).sum()) + y.shape[1] * float(np.log(np.diag(chol)).sum())
    return total
