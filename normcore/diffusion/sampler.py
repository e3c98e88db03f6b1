"""Forward noising and reverse sampling over an explicit list of timesteps.

One update rule covers both samplers: the generalised DDIM step of Song et al. (2021)
with stochasticity `eta`. With `eta=1` it is ancestral DDPM sampling (over all steps it is
exactly DDPM's posterior step; over a subsequence it is the "skip-step" ancestral sampler);
with `eta=0` it is the deterministic DDIM sampler. The previous timestep is always read
from the list, never computed by a formula.

Why `x0_covariance`: both samplers plug the denoiser's *mean* estimate of x0 into a step
that is exact only for a known x0, so every step drops the uncertainty of x0 given x_t.
With few steps the generated distribution is too narrow (with the ideal denoiser of a
Gaussian, tens of ancestral steps give a standard deviation several per cent too small;
README, "How it works", 3), which for a normative model means too-narrow centile bands.
Moment matching fixes it (the idea of Bao et al., "Analytic-DPM", 2022): the optimal
Gaussian step adds B^2 * Cov(x0 | x_t), where B is the step's coefficient on x0.
`x0_covariance` estimates Cov(x0 | x_t) per timestep, over all IDPs, from the denoiser's
x0 errors on held-out rows; with it the ideal-denoiser Gaussian is reproduced exactly at
any number of steps. The whole matrix,
not only its diagonal: the uncertainty of correlated IDPs is correlated, and adding it
independently per IDP thins every correlation (README, "How it works", 3).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from normcore.diffusion.schedule import Schedule

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""v_hat = denoise(x_t, t) with the conditioning already bound; t has shape (1,)."""

X0_CLIP = 8.0
"""Predicted clean values are clipped to +-8 (the data are normal scores, near N(0, 1)), which
keeps early, very noisy steps from throwing samples far outside anything plausible."""


def q_sample(
    x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor
) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_0) = N(sqrt(ab_t) x0, (1 - ab_t) I)."""
    ab = alpha_bar[t].unsqueeze(-1)
    return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise


def v_target(
    x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor
) -> torch.Tensor:
    """What the denoiser learns to predict: v = sqrt(ab_t) noise - sqrt(1 - ab_t) x0.

    Why v and not the noise (Salimans & Ho, 2022): x0 is recovered from a noise estimate
    by dividing by sqrt(ab_t), which reaches ~3e-5 at the noisy end of the cosine
    schedule, so a small error in the noise becomes a huge error in x0 exactly where
    sampling starts. Measured on fcon1000 (47 IDPs, 523 people) that put samples against
    the x0 clip and made every band several times too wide. From v, x0 = sqrt(ab) x_t -
    sqrt(1 - ab) v has an error no larger than v's at every step.
    """
    ab = alpha_bar[t].unsqueeze(-1)
    return ab.sqrt() * noise - (1.0 - ab).sqrt() * x0


def _predict_x0(x: torch.Tensor, v: torch.Tensor, ab_t: float) -> torch.Tensor:
    return (ab_t**0.5 * x - (1.0 - ab_t) ** 0.5 * v).clamp_(-X0_CLIP, X0_CLIP)


@torch.inference_mode()
def x0_covariance(
    denoise: Denoise,
    x0: torch.Tensor,
    schedule: Schedule,
    timesteps: list[int],
    repeats: int = 4,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Estimated Cov(x0 | x_t) at each timestep: (len(timesteps), D, D).

    The mean outer product of the predicted x0's errors, each IDP's part scaled down
    where its error variance exceeds the variance of x0 itself: the exact posterior
    variance never exceeds the prior's, but an imperfect denoiser's error can, and adding
    that would make every generated distribution too wide. Scaling rows and columns by
    the same factor keeps the matrix positive semi-definite.
    """
    dev = x0.device
    alpha_bar = torch.as_tensor(schedule.alpha_bar, dtype=torch.float32, device=dev)
    out = torch.zeros(len(timesteps), x0.shape[1], x0.shape[1], device=dev)
    for i, t in enumerate(timesteps):
        for _ in range(repeats):
            tt = torch.full((1,), t, dtype=torch.long, device=dev)
            noise = torch.randn(x0.shape, generator=generator, device=dev)
            xt = q_sample(x0, tt.expand(len(x0)), noise, alpha_bar)
            err = _predict_x0(xt, denoise(xt, tt), float(alpha_bar[t])) - x0
            out[i] += err.T @ err / len(x0)
    out /= repeats
    var = torch.diagonal(out, dim1=1, dim2=2).clamp_min(1e-12)
    shrink = torch.minimum(torch.ones_like(var), x0.var(dim=0) / var).sqrt()
    return out * shrink[:, :, None] * shrink[:, None, :]


def given_x0_covariance(x0_cov: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
    """Cov(x0_U | x_t, x0_G) per timestep from Cov(x0 | x_t) (steps, D, D), for the IDPs U
    not in the given set G (`given`, (D,) bool); rows and columns of G are zero.

    Why a Schur complement: a conditional draw clamps the given IDPs to their clean scores,
    so the uncertainty of x0 that each step must add back is that of the other IDPs given
    x_t *and* x0_G. Within the Gaussian that moment matching assumes for x0 given x_t this
    is exactly Sigma_UU - Sigma_UG Sigma_GG^-1 Sigma_GU (x_t's given cells add nothing once
    x0_G is known), so one stored matrix per step serves every given set at no extra
    network pass, and every person of a table with its own blank cells
    (normcore.conditional).
    """
    u, g = torch.nonzero(~given).flatten(), torch.nonzero(given).flatten()
    out = torch.zeros_like(x0_cov)
    for i, cov in enumerate(x0_cov.double()):
        s_uu, s_ug, s_gg = cov[u][:, u], cov[u][:, g], cov[g][:, g]
        if len(g):
            s_uu = s_uu - s_ug @ torch.linalg.pinv(s_gg, hermitian=True) @ s_ug.T
        out[i][u[:, None], u[None, :]] = s_uu.to(out.dtype)
    return out


def _noise_factor(cov: torch.Tensor) -> torch.Tensor:
    """A factor L with L L^T = cov (symmetric PSD; tiny negative eigenvalues from rounding
    are set to zero), so that noise @ L.T has covariance cov.

    Rows and columns that are exactly zero (IDPs given in a conditional draw) stay zero
    in L, and the rest is decomposed on its own: LAPACK's divide-and-conquer `eigh`
    behind torch can fail to converge on a matrix that is mostly zero rows (a hundred
    IDPs, a few of them missing). Should the block itself fail, it is decomposed again in
    float64."""
    live = torch.nonzero((cov != 0).any(dim=1)).squeeze(1)
    factor = torch.zeros_like(cov)
    if len(live) == 0:
        return factor
    block = cov[live][:, live]
    try:
        eigval, eigvec = torch.linalg.eigh(block)
    except torch.linalg.LinAlgError:
        eigval, eigvec = torch.linalg.eigh(block.to(torch.float64))
    factor[live[:, None], live[None, :]] = (eigvec * eigval.clamp_min(0.0).sqrt()).to(cov.dtype)
    return factor


@torch.inference_mode()
def generate(
    denoise: Denoise,
    n: int,
    dim: int,
    schedule: Schedule,
    timesteps: list[int],
    eta: float = 1.0,
    generator: torch.Generator | None = None,
    x0_cov: torch.Tensor | None = None,
    observed: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the reverse process from pure noise to an (n, dim) sample of normal scores.

    `x0_cov` (len(timesteps), dim, dim), from `x0_covariance`, adds the moment-matched
    covariance of each step; without it the sampler is the textbook one. With `observed`
    (n, dim) bool and `values` (n, dim), a conditional draw: the observed cells hold their
    values at every step (what `denoise`, a masked network told the same mask, reads) and
    in the result, and `x0_cov` should be `given_x0_covariance` of that set. The sample is
    drawn on the generator's device (CPU without one), so a CUDA generator keeps the loop
    on the GPU.
    """
    alpha_bar = schedule.alpha_bar
    dev = generator.device if generator is not None else torch.device("cpu")
    x = torch.randn(n, dim, generator=generator, device=dev)
    if observed is not None:
        observed, values = observed.to(dev), values.to(device=dev, dtype=x.dtype)
    for i, t in enumerate(timesteps):
        if observed is not None:
            x = torch.where(observed, values, x)
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        ab_t = float(alpha_bar[t])
        ab_prev = float(alpha_bar[t_prev]) if t_prev >= 0 else 1.0
        v = denoise(x, torch.full((1,), t, dtype=torch.long, device=dev))
        x0 = _predict_x0(x, v, ab_t)
        eps = (x - ab_t**0.5 * x0) / (1.0 - ab_t) ** 0.5
        sigma = eta * ((1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev)) ** 0.5
        c = max(1.0 - ab_prev - sigma**2, 0.0) ** 0.5
        x = ab_prev**0.5 * x0 + c * eps
        if x0_cov is None:
            if sigma > 0:
                x = x + sigma * torch.randn(n, dim, generator=generator, device=dev)
            continue
        b = ab_prev**0.5 - c * (ab_t / (1.0 - ab_t)) ** 0.5
        cov = sigma**2 * torch.eye(dim, device=dev) + b**2 * x0_cov[i].to(dev)
        x = x + torch.randn(n, dim, generator=generator, device=dev) @ _noise_factor(cov).T
    return x if observed is None else torch.where(observed, values, x)
