"""The joint law of the normal scores given covariates: a denoiser, its schedule, and the
corrections applied to its draws, behind one `draw` method.

As in diffusers, the pieces stay apart: the schedule has no trainable state
(normcore.diffusion.Schedule), the network predicts v (normcore.denoisers), and this
object is the pipeline that runs the sampler over an explicit list of timesteps and then
corrects the draws in a fixed order:

1. the sampler adds back the per-step covariance of x0 given x_t (`x0_cov`; see
   diffusion.sampler.x0_covariance), which a mean-only denoiser would lose;
2. `moment_map` gives the draws the mean and covariance of the first stage's scores of
   the training people (`moment_match`);
3. `spread` widens them as the first stage's scores of *new* people are spread
   (first_stage.new_person_spread);
4. rows at an adapted site get its posterior-predictive spread (`with_site_uncertainty`).

`draw_given` draws the other IDPs given some IDPs' scores (a masked network only; see
normcore.conditional): the given cells are clamped at every step, and step 1 adds the
x0 covariance of the other IDPs given them (diffusion.given_x0_covariance). Steps 2-4 are
corrections of the unconditional law and are not applied to conditional draws: they stay
on the training people's scale, and normcore.conditional puts a new person's scores on it
instead (step 3's spread, `NewPersonSpread.as_training_scores`).

A model read from a file holds its denoiser as a `StoredDenoiser` (its settings and its
weights as numpy arrays) and builds the torch network the first time something draws
(`JointModel.net`): importing torch and building a network take seconds, and scoring
people who have every IDP reads the reference table only, so a loaded model that only
scores never loads torch. This module imports torch only inside the functions that run
the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from normcore.config import ModelConfig
from normcore.diffusion import Schedule, ddim_timesteps
from normcore.first_stage import NewPersonSpread

if TYPE_CHECKING:
    import torch
    from torch import nn

CHUNK = 8192
"""Rows sampled at once: bounds memory whatever the number of rows asked for."""
VALIDATION_DRAWS = 100
"""Model draws per validation row when measuring the moment matching."""
MAX_VALIDATION_ROWS = 256
"""Validation rows drawn at for the moment matching: enough per IDP, and fit stays fast."""
MIN_VALIDATION_ROWS = 30
"""Fewer validation rows than this leave the draws unmatched (too noisy to trust)."""
MIN_COVARIANCE_ROWS = 100
"""Fewer validation rows than this estimate `x0_cov` on every row instead."""

AdaptedLevel = tuple[int, int, float]
"""(categorical index, level code, prior + controls) of a level known only from adaptation."""


@dataclass(frozen=True)
class DenoiserSpec:
    """What builds a model's denoiser: its backbone and sizes (the model's settings), the
    number of IDPs and each categorical covariate's number of levels."""

    backbone: str
    n_idps: int
    n_levels: tuple[int, ...]
    steps: int
    masked: bool
    size: dict = field(default_factory=dict)
    """Width, depth, ... (`ModelConfig.network`); the backbone's defaults for the rest."""
    prior: Schedule | None = None
    """The noise schedule of a network that corrects a Gaussian prior (None: one that
    does not; `ModelConfig.gaussian_prior`)."""

    @classmethod
    def of(cls, config: ModelConfig, n_idps: int, n_levels: Sequence[int]) -> DenoiserSpec:
        prior = Schedule(config.schedule, config.diffusion_steps) if config.gaussian_prior else None
        return cls(
            config.backbone, n_idps, tuple(n_levels), config.diffusion_steps,
            config.conditional, dict(config.network), prior,
        )  # fmt: skip

    def untrained(self) -> nn.Module:
        """A new network with this shape and its initial weights (torch's current seed)."""
        from normcore.denoisers import build_denoiser

        return build_denoiser(
            self.backbone, self.n_idps, list(self.n_levels), self.steps, masked=self.masked,
            prior=self.prior, **self.size,
        )  # fmt: skip


@dataclass
class StoredDenoiser:
    """A trained denoiser as a model file holds it: what builds it and its weights."""

    spec: DenoiserSpec
    weights: dict[str, np.ndarray]
    """The network's state dict (names without the file's 'net.' prefix)."""

    @property
    def masked(self) -> bool:
        return self.spec.masked

    def build(self, device: torch.device) -> nn.Module:
        """The network with these weights, in evaluation mode on `device`.

        Weights whose names or shapes differ from the network the spec describes are a
        BundleError (`bundle_checks.check_network_tensors`); the expected ones come from
        the network built on torch's meta device, which allocates nothing, so a file whose
        settings ask for a huge network is refused before any memory is taken.
        """
        import torch

        from normcore.bundle_checks import check_network_tensors

        with torch.device("meta"):
            expected = self.spec.untrained().state_dict()
        check_network_tensors(expected, self.weights)
        net = self.spec.untrained()
        net.load_state_dict({k: torch.from_numpy(v) for k, v in self.weights.items()}, strict=True)
        return net.to(device).eval()


@dataclass
class JointModel:
    """A trained denoiser and everything its draws need, in normal-score units.

    `seed` is the model's seed: the x0 covariance and the moment matching's draws use
    their own seeds derived from it, so a fit is reproducible.
    """

    denoiser: nn.Module | StoredDenoiser
    """The network, or, for a model read from a file, what builds it (see `net`)."""
    schedule: Schedule
    sampling_steps: int
    eta: float
    """1 = ancestral (stochastic) sampling, 0 = deterministic DDIM."""
    x0_cov: np.ndarray
    """(sampling steps, D, D) float32: the covariance of x0 given x_t at each step."""
    moment_map: tuple[np.ndarray, np.ndarray]
    spread: NewPersonSpread
    device: torch.device | str
    """Where the network runs: a torch device, or a user's choice ('auto', 'cpu', 'cuda';
    normcore.device) resolved when the network is built."""
    seed: int = 0

    @property
    def net(self) -> nn.Module:
        """The denoiser, built from its stored weights the first time it is asked for."""
        if isinstance(self.denoiser, StoredDenoiser):
            from normcore.device import resolve_device

            self.device = resolve_device(self.device)
            self.denoiser = self.denoiser.build(self.device)
        return self.denoiser

    def weights(self) -> dict[str, np.ndarray]:
        """The network's state dict as numpy arrays on the CPU, built or not (what a model
        file stores)."""
        if isinstance(self.denoiser, StoredDenoiser):
            return dict(self.denoiser.weights)
        return {k: v.detach().cpu().numpy() for k, v in self.denoiser.state_dict().items()}

    @classmethod
    def calibrate(
        cls,
        net: nn.Module,
        schedule: Schedule,
        *,
        sampling_steps: int,
        eta: float,
        device: torch.device,
        seed: int,
        split_scores: np.ndarray,
        kept_scores: np.ndarray,
        age_z: np.ndarray,
        codes: np.ndarray,
        val_rows: np.ndarray,
        train_rows: np.ndarray,
        spread: NewPersonSpread,
    ) -> JointModel:
        """Measure the draws' corrections for a trained `net`.

        `split_scores` are every row's scores under the first stage fitted on `train_rows`
        only (what the network was trained on); `kept_scores` under the first stage the
        model keeps (fitted on every row). The x0 covariance and the moment matching's
        draws are measured at validation rows, which the network did not train on.

        The moment map's target covariance leaves the validation people out, so that the
        deviation calibration later measured on them sees them as new people: a
        covariance estimated from n people makes those same people look more typical
        than new ones, by about D / n in the squared distance (benchmarks/RESULTS.md).
        """
        identity = (np.eye(split_scores.shape[1]), np.zeros(split_scores.shape[1]))
        joint = cls(
            net, schedule, sampling_steps, eta, np.empty(0, np.float32), identity, spread,
            device, seed,
        )  # fmt: skip
        # Too few validation rows: every scored person, in table order (the noise follows
        # the rows, so the same people give the same estimate).
        everyone = np.sort(np.r_[val_rows, train_rows])
        rows = val_rows if len(val_rows) >= MIN_COVARIANCE_ROWS else everyone
        joint.x0_cov = joint._estimate_x0_covariance(split_scores[rows], age_z[rows], codes[rows])
        some = val_rows[:MAX_VALIDATION_ROWS]
        draws = joint._draws_at(age_z[some], codes[some])
        joint.moment_map = moment_match(
            draws, kept_scores[train_rows], enough=len(some) >= MIN_VALIDATION_ROWS
        )
        return joint

    @property
    def timesteps(self) -> list[int]:
        return ddim_timesteps(self.schedule, self.sampling_steps)

    def draw(
        self,
        age_z: np.ndarray,
        codes: np.ndarray,
        seed: int,
        adapted: Sequence[AdaptedLevel] = (),
    ) -> np.ndarray:
        """One draw per row of the normal scores at standardised ages `age_z` (n,) and
        category codes (n, K), with every correction of the module docstring applied;
        `adapted` lists the levels known only from adaptation (see normcore.adapt)."""
        raw = self.raw_draws(age_z, codes, seed)
        scores = self.spread.widen(self.matched(raw), seed)
        return with_site_uncertainty(scores, codes, seed, adapted)

    def raw_draws(self, age_z: np.ndarray, codes: np.ndarray, seed: int) -> np.ndarray:
        """One draw per row from the sampler (step 1 only), before the other corrections,
        with noise from a generator seeded with `seed`."""
        import torch

        from normcore.device import generator
        from normcore.diffusion.sampler import generate

        net = self.net.eval()
        g = generator(self.device, seed)
        out = np.empty((len(age_z), self.x0_cov.shape[-1]))
        steps = self.timesteps
        k = shared_runs(age_z, codes)
        chunk = max(k, CHUNK // k * k)
        with torch.inference_mode():
            age_t = torch.as_tensor(age_z[::k]).to(self.device)
            codes_t = torch.as_tensor(codes[::k], dtype=torch.long).to(self.device)
            x0_cov = torch.from_numpy(self.x0_cov)
            for s in range(0, len(age_z), chunk):
                a, c = age_t[s // k : (s + chunk) // k], codes_t[s // k : (s + chunk) // k]
                h = net.embed(a, c)
                x = generate(
                    lambda xt, t, h=h: net(xt, t, h),
                    len(a) * k,
                    out.shape[1],
                    self.schedule,
                    steps,
                    eta=self.eta,
                    generator=g,
                    x0_cov=x0_cov,
                )
                out[s : s + chunk] = x.cpu().numpy()
        return out

    @property
    def conditional(self) -> bool:
        """Whether the network takes conditioning masks (can draw given some IDPs); read
        without building it."""
        return bool(getattr(self.denoiser, "masked", False))

    def draw_given(
        self,
        age_z: np.ndarray,
        codes: np.ndarray,
        given: np.ndarray,
        values: np.ndarray,
        seed: int,
        draws: int = 1,
    ) -> np.ndarray:
        """`draws` raw draws (n, draws, D) per row of the normal scores given the IDPs
        marked in `given` (n, D) bool, whose scores `values` (n, D) hold (other cells are
        ignored); the given cells of the result are those values.

        Rows are grouped by their given set, each set with its own x0 covariance. A row's
        draws share its covariates, so the network reads them once per row and step, not
        once per draw (`denoisers.conditioning.draws_per_row`); one draw per row of rows
        repeated `draws` times gives the same draws to rounding.
        """
        if not self.conditional:
            raise ValueError(
                "this model was trained before conditional scoring; refit it to score IDPs "
                "given others or people with missing IDPs"
            )
        import torch

        from normcore.device import generator
        from normcore.diffusion.sampler import given_x0_covariance

        given = np.asarray(given, dtype=bool)
        out = np.repeat(np.where(given, values, 0.0)[:, None, :], draws, axis=1)
        self.net.eval()
        g = generator(self.device, seed)
        sets, which = np.unique(given, axis=0, return_inverse=True)
        per_chunk = max(1, CHUNK // draws)
        with torch.inference_mode():
            x0_cov = torch.from_numpy(self.x0_cov)
            for k, one_set in enumerate(sets):
                rows = np.flatnonzero(which.reshape(-1) == k)
                cov = given_x0_covariance(x0_cov, torch.as_tensor(one_set))
                for s in range(0, len(rows), per_chunk):
                    r = rows[s : s + per_chunk]
                    out[r] = self._clamped_draws(age_z[r], codes[r], one_set, out[r], cov, g)
        return out

    def _clamped_draws(
        self,
        age_z: np.ndarray,
        codes: np.ndarray,
        one_set: np.ndarray,
        values: np.ndarray,
        cov: torch.Tensor,
        g: torch.Generator,
    ) -> np.ndarray:
        """Conditional draws (n, K, D) of rows that share one given set, K per row
        (`values` (n, K, D); see `draw_given`)."""
        import torch

        from normcore.diffusion.sampler import generate

        dev = self.device
        n, k, d = values.shape
        h = self.net.embed(
            torch.as_tensor(age_z).to(dev), torch.as_tensor(codes, dtype=torch.long).to(dev)
        )
        observed = torch.as_tensor(one_set, device=dev).expand(n * k, -1)
        mask = observed.float()
        x = generate(
            lambda xt, t: self.net(xt, t, h, mask),
            n * k,
            d,
            self.schedule,
            self.timesteps,
            eta=self.eta,
            generator=g,
            x0_cov=cov,
            observed=observed,
            values=torch.as_tensor(values.reshape(n * k, d), dtype=torch.float32),
        )
        return x.cpu().numpy().reshape(n, k, d)

    def matched(self, draws: np.ndarray) -> np.ndarray:
        """`draws` with the moment map applied (an affine map: mean and covariance)."""
        matrix, offset = self.moment_map
        return draws @ matrix + offset

    def _estimate_x0_covariance(
        self, scores: np.ndarray, age_z: np.ndarray, codes: np.ndarray
    ) -> np.ndarray:
        """Per-step covariance of x0 given x_t over the IDPs, at these rows' covariates."""
        import torch

        from normcore.device import generator
        from normcore.diffusion.sampler import x0_covariance

        net, dev = self.net, self.device
        with torch.inference_mode():
            h = net.embed(
                torch.as_tensor(age_z).to(dev), torch.as_tensor(codes, dtype=torch.long).to(dev)
            )
            cov = x0_covariance(
                lambda xt, t: net(xt, t, h),
                torch.as_tensor(scores, dtype=torch.float32).to(dev),
                self.schedule,
                self.timesteps,
                generator=generator(dev, self.seed + 2),
            )
        return cov.cpu().numpy()

    def _draws_at(self, age_z: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """VALIDATION_DRAWS raw draws at each row's covariates (rows, draws, D)."""
        reps = np.repeat(np.arange(len(age_z)), VALIDATION_DRAWS)
        draws = self.raw_draws(age_z[reps], codes[reps], self.seed + 3)
        return draws.reshape(len(age_z), VALIDATION_DRAWS, -1)


def shared_runs(age_z: np.ndarray, codes: np.ndarray) -> int:
    """k > 1 when the rows come in consecutive runs of k with the same covariates (several
    draws at each age and level combination), else 1.

    Why: the network then reads each run's covariates once per sampling step, not once per
    row (`denoisers.conditioning.draws_per_row`), which in FiLM is about half of a step's
    multiply-adds; the draws are the same to rounding.
    """
    n = len(age_z)
    if n < 2:
        return 1
    codes = np.asarray(codes).reshape(n, -1)
    same = (age_z[1:] == age_z[:-1]) & (codes[1:] == codes[:-1]).all(axis=1)
    k = n if same.all() else int(np.argmin(same)) + 1
    if k == 1 or n % k:
        return 1
    runs_a, runs_c = age_z.reshape(-1, k), codes.reshape(n // k, k, -1)
    return k if (runs_a == runs_a[:, :1]).all() and (runs_c == runs_c[:, :1]).all() else 1


def moment_match(
    draws: np.ndarray, scores: np.ndarray, enough: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, offset) such that `draws @ matrix + offset` have the mean and covariance
    of the first stage's `scores` (n, D) of the training people.

    Why: the first stage maps every training person to near-standard-normal scores, so
    their mean, spread and correlations are what the denoiser's draws over the same
    people's covariates should have. A denoiser that regresses a little to the mean draws
    too narrow ones, and one that under-learns the dependence draws too weak correlations,
    which makes real people look more typical than the model's own samples (measured in
    benchmarks/RESULTS.md). The matrix is the optimal-transport map between the two
    Gaussians (the symmetric one; Olkin & Pukelsheim 1982, Knott & Smith 1984), so draws
    move no more than needed; the scores' covariance is Ledoit-Wolf-shrunk (Ledoit & Wolf
    2004) so that it stays well-conditioned with many IDPs. `draws` (rows, draws, D) are at
    validation people's covariates; with too few of them (`enough` False) it is the
    identity.
    """
    from sklearn.covariance import LedoitWolf  # fit only: scikit-learn takes a second to import

    d = scores.shape[1]
    if not enough:
        return np.eye(d), np.zeros(d)
    flat = draws.reshape(-1, d)
    root = _sqrtm(np.atleast_2d(np.cov(flat, rowvar=False)))
    inv_root = np.linalg.pinv(root)
    target = LedoitWolf().fit(scores).covariance_
    matrix = inv_root @ _sqrtm(root @ target @ root) @ inv_root
    return matrix, scores.mean(axis=0) - flat.mean(axis=0) @ matrix


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    eigval, eigvec = np.linalg.eigh((a + a.T) / 2)
    return (eigvec * np.sqrt(np.clip(eigval, 0.0, None))) @ eigvec.T


def with_site_uncertainty(
    scores: np.ndarray, codes: np.ndarray, seed: int, adapted: Sequence[AdaptedLevel]
) -> np.ndarray:
    """Draws of rows at an adapted site, from that site's posterior predictive.

    Why: a site adapted from n controls has its mean and spread estimated from n people,
    and bands that treat them as known are too narrow for its next people
    (benchmarks/RESULTS.md, site adaptation). `LocationScale.with_level`'s shrinkage is a
    normal-inverse-chi-squared prior worth `adapt.PRIOR_N` pseudo-controls at the
    reference (Gelman et al., Bayesian Data Analysis, 3rd ed., section 3.3), so with
    m = n + PRIOR_N each draw gets its own spread factor sqrt(m / chi2_m) and a mean error
    N(0, 1/m), per IDP: Student-t-like bands, wide with 5 controls and close to the
    plug-in ones with 50.
    """
    if not adapted:
        return scores
    rng = np.random.default_rng([seed, 7])
    out = scores.copy()
    for k, code, m in adapted:
        rows = np.flatnonzero(codes[:, k] == code)
        shape = (len(rows), scores.shape[1])
        spread = np.sqrt(m / rng.chisquare(m, size=shape))
        out[rows] = spread * (scores[rows] + rng.standard_normal(shape) / np.sqrt(m))
    return out
