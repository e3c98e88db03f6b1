import numpy as np
import pytest
import torch

from normcore.diffusion import (
    Schedule,
    ddim_timesteps,
    generate,
    given_x0_covariance,
    q_sample,
    v_target,
    x0_covariance,
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


def _oracle(schedule: Schedule, mu: torch.Tensor, cov: torch.Tensor):
    """Exact E[v | x_t] for data x0 ~ N(mu, cov): the ideal denoiser."""
    ab = torch.as_tensor(schedule.alpha_bar, dtype=torch.float64)
    mu, cov = mu.double(), cov.double()
    eye = torch.eye(len(mu), dtype=torch.float64)

    def denoise(x, t):
        a = ab[t]
        gain = a.sqrt() * cov @ torch.linalg.inv(a * cov + (1 - a) * eye)
        x0 = mu + (x.double() - a.sqrt() * mu) @ gain.T
        return ((a.sqrt() * x.double() - x0) / (1 - a).sqrt()).float()

    return denoise


def _gaussian(mu, cov, n, g):
    return mu + torch.randn(n, len(mu), generator=g) @ torch.linalg.cholesky(cov).T


@pytest.mark.parametrize("n_steps, eta", [(10, 1.0), (50, 1.0), (20, 0.0)])
def test_moment_matched_samplers_recover_a_gaussian_with_the_ideal_denoiser(n_steps, eta):
    """Means, spreads and the correlation of two IDPs, at any number of steps; the
    correlation needs the whole covariance of x0 given x_t (its diagonal gave 0.474)."""
    sched = Schedule("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    steps = ddim_timesteps(sched, n_steps)
    mu = torch.tensor([1.5, -0.5])
    cov = torch.tensor([[0.09, 0.075], [0.075, 0.25]])  # SDs 0.3 and 0.5, correlation 0.5
    denoise = _oracle(sched, mu, cov)
    x0_cov = x0_covariance(denoise, _gaussian(mu, cov, 4000, g), sched, steps, generator=g)
    x = generate(denoise, 40_000, 2, sched, steps, eta=eta, generator=g, x0_cov=x0_cov)
    assert x.mean(0).numpy() == pytest.approx(mu.numpy(), abs=0.01)
    assert x.std(0).numpy() == pytest.approx([0.3, 0.5], rel=0.02)
    assert np.corrcoef(x.T.numpy())[0, 1] == pytest.approx(0.5, abs=0.01)


def test_x0_covariance_never_exceeds_the_data_variance():
    """A denoiser that predicts nonsense has errors far larger than x0's own spread; what
    the sampler adds back is capped at that spread, and stays a covariance matrix."""
    sched = Schedule("cosine", 100)
    g = torch.Generator().manual_seed(3)
    x0 = _gaussian(torch.zeros(3), torch.eye(3) * 0.25, 2000, g)
    cov = x0_covariance(lambda x, t: 10 * torch.ones_like(x), x0, sched, [99, 50, 0], generator=g)
    assert torch.all(torch.diagonal(cov, dim1=1, dim2=2) <= x0.var(dim=0) + 1e-6)
    assert torch.all(torch.linalg.eigvalsh(cov) >= -1e-6)


def test_textbook_few_step_sampler_is_too_narrow_which_is_why_x0_covariance_exists():
    sched = Schedule("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    denoise = _oracle(sched, torch.zeros(1), torch.full((1, 1), 0.09))
    x = generate(denoise, 20_000, 1, sched, ddim_timesteps(sched, 20), generator=g)
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


def _given_oracle(schedule: Schedule, mu: torch.Tensor, cov: torch.Tensor, given: torch.Tensor):
    """Exact E[v | x_t of the other IDPs, clean given IDPs] for x0 ~ N(mu, cov): what a
    masked denoiser learns; the given cells of x hold clean values."""
    u, g = torch.nonzero(~given).flatten(), torch.nonzero(given).flatten()
    cov = cov.double()
    slope = cov[u][:, g] @ torch.linalg.inv(cov[g][:, g])
    cond_cov = cov[u][:, u] - slope @ cov[g][:, u]
    ab = torch.as_tensor(schedule.alpha_bar, dtype=torch.float64)
    eye = torch.eye(len(u), dtype=torch.float64)

    def denoise(x, t):
        a = ab[t]
        x = x.double()
        mean = mu[u].double() + (x[:, g] - mu[g].double()) @ slope.T
        gain = a.sqrt() * cond_cov @ torch.linalg.inv(a * cond_cov + (1 - a) * eye)
        x0 = mean + (x[:, u] - a.sqrt() * mean) @ gain.T
        v = torch.zeros_like(x)
        v[:, u] = (a.sqrt() * x[:, u] - x0) / (1 - a).sqrt()
        return v.float()

    return denoise, slope, cond_cov


def test_clamped_draws_with_the_given_x0_covariance_recover_a_gaussian_conditional():
    """Three IDPs, the first given: with the ideal masked denoiser, the clamped sampler and
    the Schur complement of the unconditional x0 covariance give the exact conditional
    mean, spreads and correlation of the other two, at few steps. Without the complement
    (the unconditional covariance) the spreads come out too wide."""
    sched = Schedule("cosine", 1000)
    g = torch.Generator().manual_seed(4)
    steps = ddim_timesteps(sched, 10)
    mu = torch.tensor([0.5, -1.0, 0.0])
    cov = torch.tensor([[1.0, 0.8, 0.5], [0.8, 1.0, 0.3], [0.5, 0.3, 1.0]])
    given = torch.tensor([True, False, False])
    full = x0_covariance(_oracle(sched, mu, cov), _gaussian(mu, cov, 4000, g), sched, steps,
                         generator=g)  # fmt: skip
    denoise, slope, cond_cov = _given_oracle(sched, mu, cov, given)
    n = 20_000
    observed = given.expand(n, -1)
    values = torch.full((n, 3), 1.5)
    conditional = given_x0_covariance(full, given)
    assert torch.all(conditional[:, 0, :] == 0) and torch.all(conditional[:, :, 0] == 0)
    x = generate(denoise, n, 3, sched, steps, generator=g, x0_cov=conditional,
                 observed=observed, values=values)  # fmt: skip
    assert torch.all(x[:, 0] == 1.5)
    want_mean = (mu[1:].double() + (1.5 - mu[0]) * slope[:, 0]).numpy()
    assert x[:, 1:].mean(0).numpy() == pytest.approx(want_mean, abs=0.015)
    want_sd = cond_cov.diagonal().sqrt().numpy()
    assert x[:, 1:].std(0).numpy() == pytest.approx(want_sd, rel=0.03)
    want_r = (cond_cov[0, 1] / (want_sd[0] * want_sd[1])).item()
    assert np.corrcoef(x[:, 1:].T.numpy())[0, 1] == pytest.approx(want_r, abs=0.02)
    wide = generate(denoise, n, 3, sched, steps, generator=g, x0_cov=full,
                    observed=observed, values=values)  # fmt: skip
    assert wide[:, 1].std().item() > want_sd[0] * 1.025  # SE of an sd here: 0.5 %


def test_noise_factor_of_a_covariance_that_is_mostly_zero_rows():
    """A conditional draw's covariance at 100 IDPs with four missing: zero wherever an IDP
    is given. torch's `eigh` failed to converge on many such matrices; the factor must
    exist, reproduce the covariance and keep the given IDPs noise-free."""
    from normcore.diffusion.sampler import _noise_factor

    for seed in range(50):
        rng = np.random.default_rng(seed)
        a = rng.standard_normal((4, 4))
        cov = np.zeros((100, 100), np.float32)
        missing = rng.choice(100, 4, replace=False)
        cov[np.ix_(missing, missing)] = 0.05 * a @ a.T
        factor = _noise_factor(torch.from_numpy(cov)).numpy()
        assert np.allclose(factor @ factor.T, cov, atol=1e-6)
        given = np.setdiff1d(np.arange(100), missing)
        assert np.all(factor[given] == 0)


def test_gaussian_prior_is_the_exact_denoiser_for_any_given_set_timestep_and_age():
    """GaussianPrior against the oracles above (the Schur-complement form, written
    independently), at the covariance its anchors give each age level: with nothing given
    at a shared timestep, with one given set shared by every row, and with each row's own
    set, timestep and age in one batch (training)."""
    from normcore.denoisers import GaussianPrior
    from normcore.denoisers.gaussian_prior import AGE_LEVELS

    sched = Schedule("cosine", 1000)
    young = torch.tensor([[1.0, 0.2, 0.1], [0.2, 1.0, 0.0], [0.1, 0.0, 1.0]])
    old = torch.tensor([[1.0, 0.8, 0.5], [0.8, 1.0, 0.3], [0.5, 0.3, 1.0]])
    middle = (young + old) / 2 + 0.1 * torch.eye(3)
    prior = GaussianPrior(3, sched.alpha_bar)
    prior.set_covariance(torch.stack([young, middle, old]).numpy(), np.array([-1.0, 0.0, 1.0]))

    def cov_at(level: int) -> torch.Tensor:  # hat functions over anchors -1, 0, 1
        at = -1.0 + 2.0 * level / (AGE_LEVELS - 1)
        w = abs(at)
        return (1 - w) * middle + w * (young if at < 0 else old)

    zero = torch.zeros(3)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    for level in (0, 5, AGE_LEVELS - 1):
        levels = torch.full((64,), level)
        for step in (0, 400, 999):
            t = torch.tensor([step])
            want = _oracle(sched, zero, cov_at(level))(x, t)
            assert torch.allclose(prior(x, t, None, levels), want, atol=1e-4)
            given = torch.tensor([True, False, True])
            oracle, _, _ = _given_oracle(sched, zero, cov_at(level), given)
            got = prior(x, t, given.expand(64, -1).float(), levels)
            assert torch.allclose(got, oracle(x, t), atol=1e-4)
    sets = torch.rand(64, 3, generator=torch.Generator().manual_seed(1)) < 0.5
    steps = torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(2))
    levels = torch.randint(0, AGE_LEVELS, (64,), generator=torch.Generator().manual_seed(3))
    batch = prior(x, steps, sets.float(), levels)
    for i in range(64):
        if sets[i].all():
            assert torch.all(batch[i] == 0)
            continue
        one, _, _ = _given_oracle(sched, zero, cov_at(int(levels[i])), sets[i])
        assert torch.allclose(batch[i], one(x[i : i + 1], steps[i : i + 1])[0], atol=1e-4)


def test_prior_covariances_follow_coupling_that_changes_with_age():
    """Two IDPs whose correlation runs from 0 at the youngest to 0.8 at the oldest: the
    anchors recover it at the ends and in the middle."""
    from normcore.denoisers.gaussian_prior import prior_covariances

    rng = np.random.default_rng(0)
    age = rng.uniform(-1.5, 1.5, 20_000)
    r = 0.8 * (age + 1.5) / 3.0
    z1 = rng.standard_normal(len(age))
    z2 = r * z1 + np.sqrt(1 - r**2) * rng.standard_normal(len(age))
    cov, anchors = prior_covariances(np.stack([z1, z2], 1), age)
    assert anchors == pytest.approx([-1.5, 0.0, 1.5], abs=1e-3)
    assert [c[0, 1] for c in cov] == pytest.approx([0.0, 0.4, 0.8], abs=0.05)
    assert np.all(np.linalg.eigvalsh(cov) > 0)


def test_prior_covariances_are_shrunk_where_people_are_few_for_the_idps():
    """300 people and 60 IDPs with one covariance at every age: the anchors, each from
    about a third of the people, are shrunk (towards the pooled covariance), and new
    people of the same law are likelier under them than under the unshrunk ones."""
    from normcore.denoisers import gaussian_prior as gp

    rng = np.random.default_rng(1)
    d = 60
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    truth = a @ a.T + 0.5 * np.eye(d)
    age, new_age = rng.uniform(-1.5, 1.5, 300), rng.uniform(-1.5, 1.5, 2000)
    scores = rng.multivariate_normal(np.zeros(d), truth, len(age))
    new = rng.multivariate_normal(np.zeros(d), truth, len(new_age))
    cov, anchors = gp.prior_covariances(scores, age)
    plain = gp._shrunk(gp._moments(scores, age, anchors), 0.0, 0.0)
    assert not np.allclose(cov, plain)
    at_level = gp.level_weights(np.arange(gp.AGE_LEVELS), anchors)
    levels = gp.age_level(new_age, anchors)

    def fit(c: np.ndarray) -> float:
        return gp._log_likelihood(np.einsum("lk,kij->lij", at_level, c), new, levels)

    assert fit(cov) > fit(plain) + 5.0 * len(new)
