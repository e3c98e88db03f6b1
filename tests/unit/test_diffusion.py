import numpy as np
import pytest
import torch

from normcore.diffusion import (
    Schedule,
    ddim_timesteps,
    generate,
    q_sample,
    v_target,
    x0_variance,
)


def test_paper_linear_schedule_matches_its_config():
    ab = Schedule("linear", 100).alpha_bar
    assert ab[50] == pytest.approx(1.7e-4, rel=0.3)
    assert np.all(np.diff(ab) < 0)


def test_cosine_schedule_is_monotone_and_ends_near_zero():
    ab = Schedule("cosine", 1000).alpha_bar
    assert 0.99 < ab[0] <= 1 and ab[-1] < 1e-4 and np.all(np.diff(ab) < 0)


def test_bad_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown noise schedule"):
        Schedule("quadratic", 10)


def test_ddim_timesteps_are_read_from_an_explicit_descending_list():
    ts = ddim_timesteps(Schedule("cosine", 1000), 50)
    assert ts[0] == 999 and ts[-1] == 0 and len(ts) == 50 and ts == sorted(ts, reverse=True)
    with pytest.raises(ValueError):
        ddim_timesteps(Schedule("cosine", 10), 11)


def _oracle(schedule: Schedule, mu: float, s: float):
    """Exact E[v | x_t] for data x0 ~ N(mu, s^2): the ideal denoiser."""
    ab = torch.as_tensor(schedule.alpha_bar, dtype=torch.float64)

    def denoise(x, t):
        a = ab[t]
        eps = (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s**2 + 1 - a)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return (a.sqrt() * eps - (1 - a).sqrt() * x0).float()

    return denoise


@pytest.mark.parametrize("n_steps, eta", [(10, 1.0), (50, 1.0), (20, 0.0)])
def test_moment_matched_samplers_recover_a_gaussian_with_the_ideal_denoiser(n_steps, eta):
    sched = Schedule("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    steps = ddim_timesteps(sched, n_steps)
    denoise = _oracle(sched, 1.5, 0.3)
    var = x0_variance(
        denoise, 1.5 + 0.3 * torch.randn(4000, 1, generator=g), sched, steps, generator=g
    )
    x = generate(denoise, 20_000, 1, sched, steps, eta=eta, generator=g, x0_var=var)
    assert x.mean().item() == pytest.approx(1.5, abs=0.01)
    assert x.std().item() == pytest.approx(0.3, rel=0.02)


def test_textbook_few_step_sampler_is_too_narrow_which_is_why_x0_variance_exists():
    sched = Schedule("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    x = generate(_oracle(sched, 0.0, 0.3), 20_000, 1, sched, ddim_timesteps(sched, 20), generator=g)
    assert x.std().item() < 0.3 * 0.9


def test_q_sample_has_the_forward_marginal():
    sched = Schedule("cosine", 100)
    ab = torch.as_tensor(sched.alpha_bar, dtype=torch.float32)
    x0 = torch.full((50_000, 1), 2.0)
    t = torch.full((50_000,), 40)
    xt = q_sample(x0, t, torch.randn(50_000, 1, generator=torch.Generator().manual_seed(1)), ab)
    assert xt.mean().item() == pytest.approx(2.0 * ab[40].sqrt().item(), abs=0.02)
    assert xt.var().item() == pytest.approx(1 - ab[40].item(), abs=0.02)


def test_v_target_lets_the_sampler_recover_x0_and_the_noise_exactly():
    sched = Schedule("cosine", 1000)
    ab = torch.as_tensor(sched.alpha_bar, dtype=torch.float32)
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    t = torch.tensor([0, 10, 300, 700, 990, 999])
    xt, v = q_sample(x0, t, noise, ab), v_target(x0, t, noise, ab)
    a = ab[t].unsqueeze(-1)
    assert torch.allclose(a.sqrt() * xt - (1 - a).sqrt() * v, x0, atol=1e-5)
    assert torch.allclose((1 - a).sqrt() * xt + a.sqrt() * v, noise, atol=1e-5)
