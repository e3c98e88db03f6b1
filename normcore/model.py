"""NormativeModel: one conditional diffusion model over all IDPs, with centiles and z.

The estimator follows scikit-learn's contract: `__init__` stores settings only; `fit`
validates, learns and returns self; learned attributes end in `_`; every other method
checks that the model is fitted. Nothing here writes files or prints, except `save`.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import torch
from scipy import stats
from sklearn.covariance import LedoitWolf

from normcore import bundle, first_stage
from normcore.denoisers import build_denoiser
from normcore.device import generator, resolve_device
from normcore.diffusion import (
    Schedule,
    ddim_timesteps,
    generate,
    q_sample,
    v_target,
    x0_covariance,
)
from normcore.distributed import Parallel
from normcore.distributed import current as current_parallel
from normcore.errors import BundleError, DataError, NotFittedError
from normcore.preprocessing import AgeShape, CovariateEncoder, IDPTransform, LocationScale
from normcore.reference import (
    LEVELS,
    ReferenceTable,
    build_reference,
    deviation_calibration,
    mahalanobis_centile,
    normal_scores,
    values_at,
    with_level,
)
from normcore.schema import (
    Schema,
    ValidationReport,
    coerce_categories,
    validate_scoring,
    validate_training,
)
from normcore.train import TrainConfig, train_denoiser, validation_split

__version__ = "0.1.0"

DEFAULT_QUANTILES = (0.02, 0.25, 0.5, 0.75, 0.98)
_CHUNK = 8192
VALIDATION_DRAWS = 100
"""Model draws per validation row when measuring the moment matching."""
MAX_VALIDATION_ROWS = 256
"""Validation rows drawn at for the moment matching: enough per IDP, and fit stays fast."""
MIN_VALIDATION_ROWS = 30
"""Fewer validation rows than this leave the draws unmatched (too noisy to trust)."""
MIN_DEVIATION_ROWS = 60
"""Fewer validation rows than this leave the deviation centile uncalibrated: a mean and a
standard deviation from fewer people are too loose to correct anything."""


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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["train"] = self.train.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**{**d, "train": TrainConfig(**d["train"])})


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Bound torch's intra-op threads for the duration of a call, then restore them.

    The default is one thread: our tensors are small, and on a shared CPU (a dashboard
    serving several people, CI) OpenMP threads that spin waiting for a busy core made
    sampling 4-70x slower with two threads than with one. NORMCORE_THREADS raises it.
    """
    before = torch.get_num_threads()
    n = n or int(os.environ.get("NORMCORE_THREADS", 0)) or 1
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class NormativeModel:
    """Conditional DDPM p(IDPs | age, sex, site, ...) with a precomputed centile table.

    Parameters mirror `ModelConfig`; `max_epochs` and `max_seconds` bound training,
    `threads` bounds CPU threads (default: NORMCORE_THREADS or 1). `device` is where the
    network trains and samples: "auto" (a GPU when torch sees one), "cpu" or "cuda"; it is
    not saved (see normcore.device). Under torchrun, `fit` trains with several processes
    (see normcore.distributed).
    """

    def __init__(
        self,
        backbone: str = "film",
        max_epochs: int | None = None,
        seed: int = 0,
        *,
        schedule: str = "cosine",
        diffusion_steps: int = 1000,
        sampling_steps: int = 20,
        eta: float = 1.0,
        reference_samples: int = 10_000,
        grid_points: int = 41,
        max_seconds: float | None = None,
        network: dict | None = None,
        threads: int | None = None,
        device: str = "auto",
    ) -> None:
        self.config = ModelConfig(
            backbone=backbone,
            schedule=schedule,
            diffusion_steps=diffusion_steps,
            sampling_steps=sampling_steps,
            eta=eta,
            network=dict(network or {}),
            train=TrainConfig(max_epochs=max_epochs, max_seconds=max_seconds),
            reference_samples=reference_samples,
            grid_points=grid_points,
            seed=seed,
        )
        self.threads = threads
        self.device = device

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        df: pd.DataFrame,
        schema: Schema | None = None,
        progress: Callable[[dict], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> NormativeModel:
        """Validate `df`, train the denoiser, and build the reference table."""
        schema = schema or Schema.infer(df)
        validate_training(df, schema).raise_for_errors()
        cfg = self.config
        start = time.perf_counter()
        parallel = current_parallel()
        self.device_ = resolve_device(self.device, parallel.local_rank if parallel else None)
        with torch_threads(self.threads):
            torch.manual_seed(cfg.seed)
            values = df[list(schema.idps)].apply(pd.to_numeric).to_numpy(dtype=np.float64)
            self.schema_ = schema
            self.encoder_ = CovariateEncoder.fit(df, schema)
            self.training_ = _training_summary(df, schema)
            self.schedule_ = Schedule(cfg.schedule, cfg.diffusion_steps)
            codes, _ = self.encoder_.encode_categories(df)
            age_z = self.encoder_.encode_age(df[schema.age].to_numpy(dtype=np.float64))
            # The network, and the sampler covariance and deviation calibration measured
            # on the validation rows, see a first stage fitted without those rows, so
            # those estimates are not optimistic (fcon1000: 18.5 % of held-out people
            # were above the 95th deviation centile when those rows were in it).
            _, fit_rows = validation_split(len(values), cfg.train, cfg.seed)
            y = self._fit_first_stage(values, age_z, codes, fit_rows)
            net = build_denoiser(
                cfg.backbone,
                len(schema.idps),
                self.encoder_.n_levels,
                cfg.diffusion_steps,
                **cfg.network,
            ).to(self.device_)
            self.net_, self.history_, val_idx = train_denoiser(
                net,
                self.schedule_,
                y,
                age_z,
                codes,
                cfg.train,
                seed=cfg.seed,
                progress=progress,
                should_stop=should_stop,
                device=self.device_,
                parallel=parallel,
            )
            rows = val_idx if len(val_idx) >= 100 else np.arange(len(y))
            self.x0_cov_ = self._estimate_x0_covariance(y[rows], age_z[rows], codes[rows])
            some = val_idx[:MAX_VALIDATION_ROWS]
            draws = self._draws_at(age_z[some], codes[some])
            # The margins the model keeps are then refitted on every row: the network has
            # learned near-standard-normal scores and their dependence, which a first stage
            # fitted on 15 % more people leaves as they were, while its estimates of each
            # IDP's mean, spread and shape gain (synthetic, 4 IDPs: first-stage centile
            # error 2.47 from the training split, 2.09 from every row).
            scores = self._fit_first_stage(values, age_z, codes, np.arange(len(values)))
            # The covariance the draws are matched to leaves the validation people out, so
            # that the deviation calibration measured on them sees them as new people: a
            # covariance estimated from n people makes those people look more typical
            # than new ones, by about D / n in the squared distance (synthetic, 100 IDPs:
            # held-out people's shift 0.42; the validation people's was 0.15 with them in
            # the target, 0.40 without, and the held-out deviation KS went from 0.10 to
            # 0.028).
            self.moment_map_ = moment_match(
                draws, scores[fit_rows], enough=len(some) >= MIN_VALIDATION_ROWS
            )
            self.predictive_ = first_stage.predictive(
                values, age_z, codes, self.encoder_.n_levels, cfg.seed, inside=scores
            )
            self.train_seconds_ = time.perf_counter() - start
            self.adaptations_: list[dict] = []
            self._build_reference(progress, parallel)
            ages = df[schema.age].to_numpy(dtype=np.float64)
            self.deviation_calibration_ = self._estimate_deviation_calibration(
                y[val_idx], ages[val_idx], codes[val_idx]
            )
        self.fit_seconds_ = time.perf_counter() - start
        self.created_ = datetime.now(UTC).isoformat(timespec="seconds")
        return self

    def _build_reference(
        self, progress: Callable[[dict], None] | None, parallel: Parallel | None = None
    ) -> None:
        def report(fraction: float) -> None:
            if progress is not None:
                progress({"phase": "reference", "fraction": fraction})

        self.reference_ = build_reference(
            self._sample_scores,
            tuple(self.training_["age_range"]),
            self.encoder_.n_levels,
            self._table_prior(),
            samples_per_combination=self.config.reference_samples,
            grid_points=self.config.grid_points,
            seed=self.config.seed,
            progress=report,
            parallel=parallel,
            first_stage_margins=self._known_combinations(),
        )

    def _known_combinations(self) -> np.ndarray:
        """(C,) bool: level combinations with no 'unknown' level, every level of which the
        first stage learned from training people (see `reference.build_reference`)."""
        n_levels = self.encoder_.n_levels
        if not n_levels:
            return np.ones(1, dtype=bool)
        return np.all(np.indices(n_levels).reshape(len(n_levels), -1) > 0, axis=0)

    def _table_prior(self) -> np.ndarray:
        """The margins of known combinations, and what the rest of the reference table
        shrinks towards: the quantiles at its LEVELS that the model's draws would have if
        the denoiser drew exactly N(0, 1)."""
        return first_stage.predictive_quantiles(self.predictive_, LEVELS)

    def _fit_first_stage(
        self, values: np.ndarray, age_z: np.ndarray, codes: np.ndarray, rows: np.ndarray
    ) -> np.ndarray:
        """Fit scaling, location-scale and shape on `rows`; every row in network units."""
        stage = first_stage.fit(values, age_z, codes, self.encoder_.n_levels, rows)
        self.transform_, self.location_scale_, self.shape_ = stage
        return first_stage.scores(stage, values, age_z, codes)

    # ----------------------------------------------------------------- sampling
    def _to_network(self, values: np.ndarray, age_z: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """User units -> the residual units the denoiser models."""
        stage = (self.transform_, self.location_scale_, self.shape_)
        return first_stage.scores(stage, values, age_z, codes)

    @torch.inference_mode()
    def _estimate_x0_covariance(
        self, y: np.ndarray, age_z: np.ndarray, codes: np.ndarray
    ) -> torch.Tensor:
        """Per-step covariance of x0 given x_t over the IDPs, which the sampler adds back
        (see diffusion.sampler)."""
        dev = self.device_
        h = self.net_.embed(
            torch.as_tensor(age_z).to(dev), torch.as_tensor(codes, dtype=torch.long).to(dev)
        )
        return x0_covariance(
            lambda xt, t: self.net_(xt, t, h),
            torch.as_tensor(y, dtype=torch.float32).to(dev),
            self.schedule_,
            ddim_timesteps(self.schedule_, self.config.sampling_steps),
            generator=generator(dev, self.config.seed + 2),
        ).cpu()

    def _check_fitted(self) -> None:
        if not hasattr(self, "reference_"):
            raise NotFittedError(
                "This model is not fitted yet: call fit() or NormativeModel.load() first."
            )

    @torch.inference_mode()
    def _sample_residuals(
        self, age_z: np.ndarray, codes: np.ndarray, g: torch.Generator
    ) -> np.ndarray:
        """One draw per row from the denoiser, in its residual units, before `moment_map_`
        and `predictive_`."""
        cfg = self.config
        steps = ddim_timesteps(self.schedule_, cfg.sampling_steps)
        age_t = torch.as_tensor(age_z).to(self.device_)
        codes_t = torch.as_tensor(codes, dtype=torch.long).to(self.device_)
        out = np.empty((len(age_z), len(self.schema_.idps)))
        self.net_.eval()
        for s in range(0, len(age_z), _CHUNK):
            a, c = age_t[s : s + _CHUNK], codes_t[s : s + _CHUNK]
            h = self.net_.embed(a, c)
            x = generate(
                lambda xt, t, h=h: self.net_(xt, t, h),
                len(a),
                out.shape[1],
                self.schedule_,
                steps,
                eta=cfg.eta,
                generator=g,
                x0_cov=self.x0_cov_,
            )
            out[s : s + _CHUNK] = x.cpu().numpy()
        return out

    def _sample_scores(
        self, ages: np.ndarray, codes: np.ndarray, seed: int | None = None
    ) -> np.ndarray:
        """One draw per row at the given ages (years) and category codes, in the normal-score
        units of `_to_network`: what the reference table tabulates."""
        seed = self.config.seed + 1 if seed is None else seed
        age_z = self.encoder_.encode_age(ages)
        resid = self._sample_residuals(age_z, codes, generator(self.device_, seed))
        resid = self._predictive(self._matched(resid), seed)
        return self._with_site_uncertainty(resid, codes, seed)

    def _from_network(self, scores: np.ndarray, ages: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Normal-score units -> user units at each row's own age and levels (monotone per
        IDP, so quantiles map to quantiles)."""
        age_z = self.encoder_.encode_age(ages)
        resid = self.location_scale_.inverse(self.shape_.inverse(scores, age_z), age_z, codes)
        return self.transform_.inverse(resid)

    def _adapted_levels(self) -> list[tuple[int, int, float]]:
        """(categorical index, level code, prior + controls) of every level that only
        adaptation has seen (a site with training rows is known well enough)."""
        names = list(self.encoder_.levels)
        totals: dict[tuple[int, int], float] = {}
        for record in self.adaptations_:
            key = (
                names.index(record["column"]),
                self.encoder_.levels[record["column"]].index(record["level"]) + 1,
            )
            if key in totals or not record["readapted"]:
                totals[key] = totals.get(key, ADAPT_PRIOR_N) + record["n_controls"]
        return [(k, code, n) for (k, code), n in totals.items()]

    def _with_site_uncertainty(self, resid: np.ndarray, codes: np.ndarray, seed: int) -> np.ndarray:
        """Residuals of rows at an adapted site, drawn from the posterior predictive.

        Why: a site adapted from n controls has its mean and spread estimated from n
        people, and bands that treat them as known are too narrow for its next people
        (benchmarks/RESULTS.md, site adaptation). `LocationScale.with_level`'s shrinkage
        is a normal-inverse-chi-squared prior worth ADAPT_PRIOR_N pseudo-controls at the
        reference, so with m = n + ADAPT_PRIOR_N each draw gets its own spread factor
        sqrt(m / chi2_m) and a mean error N(0, 1/m), per IDP: Student-t-like bands that
        are wide with 5 controls and close to the plug-in ones with 50.
        """
        levels = self._adapted_levels()
        if not levels:
            return resid
        rng = np.random.default_rng([seed, 7])
        out = resid.copy()
        for k, code, m in levels:
            rows = np.flatnonzero(codes[:, k] == code)
            shape = (len(rows), resid.shape[1])
            spread = np.sqrt(m / rng.chisquare(m, size=shape))
            out[rows] = spread * (resid[rows] + rng.standard_normal(shape) / np.sqrt(m))
        return out

    def _estimate_deviation_calibration(
        self, scores: np.ndarray, ages: np.ndarray, codes: np.ndarray
    ) -> tuple[float, float]:
        """`reference.deviation_calibration` on held-out validation rows (none if too few).

        `scores` are what the training-split first stage gave them: the refitted first
        stage has seen these people, and their distances through it came out too typical
        (fcon1000 demo: 21 % of held-out people above the 95th deviation centile).
        """
        if len(scores) < MIN_DEVIATION_ROWS:
            return (0.0, 1.0)
        z, _ = self._reference_z(scores, ages, codes)
        return deviation_calibration(self.reference_, codes, z)

    def _reference_z(
        self, scores: np.ndarray, ages: np.ndarray, codes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Normal scores within the reference table, and its effective sample sizes, of
        first-stage `scores` (n, D) at each row's age (years) and levels."""
        z = np.empty_like(scores)
        n_eff = np.empty(len(scores))
        for s in range(0, len(scores), _CHUNK):
            q, n_eff[s : s + _CHUNK] = self.reference_.lookup(
                codes[s : s + _CHUNK], ages[s : s + _CHUNK]
            )
            z[s : s + _CHUNK] = normal_scores(q, scores[s : s + _CHUNK])
        return z, n_eff

    def _draws_at(self, age_z: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """VALIDATION_DRAWS raw denoiser draws at each row's covariates (rows, draws, D)."""
        reps = np.repeat(np.arange(len(age_z)), VALIDATION_DRAWS)
        g = generator(self.device_, self.config.seed + 3)
        draws = self._sample_residuals(age_z[reps], codes[reps], g)
        return draws.reshape(len(age_z), VALIDATION_DRAWS, -1)

    def _matched(self, draws: np.ndarray) -> np.ndarray:
        """Denoiser draws with `moment_map_` applied (an affine map: mean and covariance)."""
        matrix, offset = self.moment_map_
        return draws @ matrix + offset

    def _predictive(self, draws: np.ndarray, seed: int) -> np.ndarray:
        """Draws spread as the first stage's scores of new people are (`predictive_`): a
        scale, and for heavy tails a Student-t scale mixture, per draw and IDP."""
        scale, dof = self.predictive_
        if dof is None:
            return draws * scale
        rng = np.random.default_rng([seed, 5])
        return draws * scale * np.sqrt(dof / rng.chisquare(dof, size=draws.shape))

    def _covariates(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ages (years), category codes and unseen-level mask of a covariate table."""
        if self.schema_.age not in df.columns:
            raise DataError(
                f"The table has no '{self.schema_.age}' column, which this model needs."
            )
        ages = pd.to_numeric(df[self.schema_.age], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(ages))
        if len(bad):
            raise DataError(
                f"Column '{self.schema_.age}' has missing or non-numeric values in rows "
                f"{', '.join(map(str, bad[:10]))}{' ...' if len(bad) > 10 else ''}."
            )
        codes, unseen = self.encoder_.encode_categories(df)
        return ages, codes, unseen

    def sample(self, covariates: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
        """Draw `n` IDP vectors from the model at each row's exact covariates (wide table).

        These are the denoiser's own draws. For a sex and site seen in training,
        `centiles` and `score` take each IDP's margins from the first stage instead (see
        `reference.build_reference`), so per-IDP quantiles of many draws can differ from
        `centiles` by the denoiser's error (engine benchmark, 4 IDPs: about 1 centile
        point; the first stage's were the closer to the truth)."""
        self._check_fitted()
        ages, codes, _ = self._covariates(covariates)
        rows = np.repeat(np.arange(len(covariates)), n)
        with torch_threads(self.threads):
            y = self._from_network(
                self._sample_scores(ages[rows], codes[rows], seed=seed), ages[rows], codes[rows]
            )
        cov_cols = [c for c in self.schema_.covariates if c in covariates.columns]
        out = covariates[cov_cols].iloc[rows].reset_index(drop=True)
        out.insert(0, "grid_row", rows)
        return pd.concat([out, pd.DataFrame(y, columns=list(self.schema_.idps))], axis=1)

    # ---------------------------------------------------------------- centiles
    def centiles(
        self, covariates: pd.DataFrame, quantiles: Sequence[float] = DEFAULT_QUANTILES
    ) -> pd.DataFrame:
        """Model quantiles of every IDP at each covariate row (long table).

        Columns: the covariate columns given, `idp`, `quantile` (0-1), `value`.
        """
        self._check_fitted()
        probs = np.asarray(quantiles, dtype=np.float64)
        if probs.size == 0 or np.any((probs <= 0) | (probs >= 1)):
            raise ValueError("quantiles must lie strictly between 0 and 1, e.g. 0.02,0.5,0.98")
        ages, codes, _ = self._covariates(covariates)
        q, _ = self.reference_.lookup(codes, ages)
        scores = values_at(q, probs)  # (n, P, D)
        n, p, d = scores.shape
        at = np.repeat(np.arange(n), p)
        vals = self._from_network(scores.reshape(n * p, d), ages[at], codes[at]).reshape(n, p, d)
        cov_cols = [c for c in self.schema_.covariates if c in covariates.columns]
        base = covariates[cov_cols].reset_index(drop=True)
        long = base.iloc[np.repeat(np.arange(n), d * p)].reset_index(drop=True)
        long["idp"] = np.tile(np.repeat(np.array(self.schema_.idps, dtype=object), p), n)
        long["quantile"] = np.tile(probs, n * d)
        long["value"] = vals.transpose(0, 2, 1).reshape(-1)
        return long

    # ----------------------------------------------------------------- scoring
    def check(self, df: pd.DataFrame) -> ValidationReport:
        """Validate a table for scoring: errors block it, warnings are flagged per row."""
        self._check_fitted()
        return validate_scoring(
            df, self.schema_, tuple(self.training_["age_range"]), self.encoder_.levels
        )

    def _normal_scores(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        self.check(df).raise_for_errors()
        ages, codes, unseen = self._covariates(df)
        y = df[list(self.schema_.idps)].apply(pd.to_numeric).to_numpy(dtype=np.float64)
        z, n_eff = self._reference_z(
            self._to_network(y, self.encoder_.encode_age(ages), codes), ages, codes
        )
        lo, hi = self.training_["age_range"]
        names = np.array(list(self.encoder_.levels), dtype=object)
        unseen_txt = (
            np.array([",".join(names[m]) for m in unseen], dtype=object)
            if len(names)
            else np.full(len(y), "")
        )
        return {
            "y": y,
            "z": z,
            "n_eff": n_eff,
            "codes": codes,
            "ages": ages,
            "out_of_age_range": (ages < lo) | (ages > hi),
            "unseen": unseen_txt,
        }

    def score(self, df: pd.DataFrame) -> pd.DataFrame:
        """Centile (0-100), z and Monte-Carlo standard error of the centile, per person and IDP.

        Long table: `row` (0-based input row), the id column if any, `idp`, `value`,
        `centile`, `z`, `centile_se`, and flags `out_of_age_range`, `unseen_levels`
        (categorical covariates scored with the 'unknown' level), `beyond_reference`
        (|z| > 3: an extrapolated tail). z is clipped to +-6.
        """
        self._check_fitted()
        r = self._normal_scores(df)
        n, d = r["z"].shape
        p = stats.norm.cdf(r["z"])
        out = pd.DataFrame({"row": np.repeat(np.arange(n), d)})
        if self.schema_.id and self.schema_.id in df.columns:
            out[self.schema_.id] = np.repeat(df[self.schema_.id].astype(str).to_numpy(), d)
        out["idp"] = np.tile(np.array(self.schema_.idps, dtype=object), n)
        out["value"] = r["y"].reshape(-1)
        out["centile"] = 100.0 * p.reshape(-1)
        out["z"] = r["z"].reshape(-1)
        out["centile_se"] = (100.0 * np.sqrt(p * (1 - p) / r["n_eff"][:, None])).reshape(-1)
        out["out_of_age_range"] = np.repeat(r["out_of_age_range"], d)
        out["unseen_levels"] = np.repeat(r["unseen"], d)
        out["beyond_reference"] = (np.abs(r["z"]) > 3.0).reshape(-1)
        return out

    def deviation(self, df: pd.DataFrame) -> pd.DataFrame:
        """One multivariate deviation per person: how unusual the whole IDP profile is.

        `mahalanobis` is the squared Mahalanobis distance of the person's normal scores
        under the model's IDP correlation; `deviation_centile` ranks it among model
        samples with the same categorical covariates (100 = more unusual than every
        sample), recalibrated by the model's `deviation_calibration_` (measured on
        validation rows at fit time).
        """
        self._check_fitted()
        r = self._normal_scores(df)
        d2, centile = mahalanobis_centile(
            self.reference_, r["codes"], r["z"], self.deviation_calibration_
        )
        out = pd.DataFrame({"row": np.arange(len(d2))})
        if self.schema_.id and self.schema_.id in df.columns:
            out[self.schema_.id] = df[self.schema_.id].astype(str).to_numpy()
        out["n_idps"] = r["z"].shape[1]
        out["mahalanobis"] = d2
        out["deviation_centile"] = centile
        out["out_of_age_range"] = r["out_of_age_range"]
        out["unseen_levels"] = r["unseen"]
        return out

    # -------------------------------------------------------------- adaptation
    def adapt(
        self,
        controls: pd.DataFrame,
        site: str | None = None,
        column: str | None = None,
        steps: int = 400,
        progress: Callable[[dict], None] | None = None,
    ) -> NormativeModel:
        """A copy of this model adapted to one site from a table of its healthy controls.

        Two things are learned, everything else stays frozen so the reference is not
        forgotten: the site's mean and log-spread effect per IDP in the first stage
        (`LocationScale.with_level`, shrunk by n / (n + ADAPT_PRIOR_N)), then the site's
        embedding row of the denoiser, started from and pulled towards the 'unknown site'
        level (or the site's current row when re-adapting), so few controls move it little.
        That site's share of the reference table is then rebuilt. The returned model
        records the adaptation in `adaptations_`.
        """
        self._check_fitted()
        column = column or _site_column(self.schema_)
        controls = controls.reset_index(drop=True)
        if site is not None:
            controls = controls.assign(**{column: site})
        report = validate_scoring(controls, self.schema_, tuple(self.training_["age_range"]), {})
        report.raise_for_errors()
        levels_seen = coerce_categories(controls[column]).unique().tolist()
        if len(levels_seen) != 1:
            raise DataError(
                f"Adaptation needs controls from one site, but column '{column}' holds "
                f"{len(levels_seen)}: {', '.join(map(str, levels_seen[:5]))}. "
                "Filter the table or pass site=."
            )
        level = str(levels_seen[0])
        if len(controls) < MIN_ADAPT_CONTROLS:
            raise DataError(
                f"Adapting to site '{level}' needs at least {MIN_ADAPT_CONTROLS} controls; "
                f"the table has {len(controls)}."
            )
        new = copy.deepcopy(self)
        new.net_.cpu()  # one embedding row is learned: the CPU is enough (see _learn_level)
        k = list(new.encoder_.levels).index(column)
        known = new.encoder_.levels[column]
        readapted = level in known
        if not readapted:
            known.append(level)
        code = known.index(level) + 1
        values = new.transform_.transform(
            controls[list(self.schema_.idps)].apply(pd.to_numeric).to_numpy(dtype=np.float64)
        )
        age_z = new.encoder_.encode_age(controls[self.schema_.age].to_numpy(dtype=np.float64))
        codes = new.encoder_.encode_categories(controls)[0]
        codes[:, k] = code
        new.location_scale_ = new.location_scale_.with_level(
            k, code, values, age_z, codes, prior_n=ADAPT_PRIOR_N
        )
        y = new.shape_.transform(new.location_scale_.transform(values, age_z, codes), age_z)
        counts = {}
        for col in self.schema_.categorical:
            if col != column and col in controls.columns:
                counts[col] = {
                    str(a): int(b)
                    for a, b in coerce_categories(controls[col]).value_counts().items()
                }
        new.adaptations_ = [
            *self.adaptations_,
            {
                "column": column,
                "level": level,
                "n_controls": int(len(controls)),
                "counts": counts,
                "readapted": readapted,
                "steps": steps,
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        ]
        with torch_threads(self.threads):
            _learn_level(new, y, age_z, codes, k, code, readapted, steps, progress)
            new.net_.to(new.device_)
            new.reference_ = with_level(
                new.reference_,
                new._sample_scores,
                column=k,
                code=code,
                prior=new._table_prior(),
                samples_per_combination=self.config.reference_samples,
                seed=self.config.seed + len(self.adaptations_) + 1,
            )
        return new

    # ------------------------------------------------------------- persistence
    def to_bytes(self) -> bytes:
        """The model as one bundle (weights + reference table + JSON metadata)."""
        self._check_fitted()
        state = self.net_.state_dict()
        tensors = {f"net.{k}": v.detach().cpu().clone() for k, v in state.items()}
        tensors.update(self.reference_.to_arrays())
        tensors["sampler.x0_cov"] = self.x0_cov_.clone()
        tensors["sampler.moment_map"] = torch.as_tensor(self.moment_map_[0], dtype=torch.float64)
        meta = {
            "normcore_version": __version__,
            "created": self.created_,
            "config": self.config.to_dict(),
            "schema": self.schema_.to_dict(),
            "transform": self.transform_.to_dict(),
            "location_scale": self.location_scale_.to_dict(),
            "shape": self.shape_.to_dict(),
            "encoder": self.encoder_.to_dict(),
            "training": self.training_,
            "history": self.history_,
            "train_seconds": self.train_seconds_,
            "fit_seconds": self.fit_seconds_,
            "reference_bandwidth": self.reference_.bandwidth,
            "moment_map_offset": self.moment_map_[1].tolist(),
            "predictive": {"scale": self.predictive_[0], "dof": self.predictive_[1]},
            "deviation_calibration": list(self.deviation_calibration_),
            "adaptations": self.adaptations_,
        }
        return bundle.to_bytes(tensors, meta)

    def save(self, path: str | os.PathLike) -> None:
        """Write the model bundle to `path` (a single file)."""
        bundle.write(path, self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, device: str = "auto") -> NormativeModel:
        """Rebuild a model from bundle bytes on `device`; never unpickles anything."""
        tensors, meta = bundle.from_bytes(data)
        try:
            cfg = ModelConfig.from_dict(meta["config"])
            model = cls.__new__(cls)
            model.config = cfg
            model.threads = None
            model.device, model.device_ = device, resolve_device(device)
            model.schema_ = Schema.from_dict(meta["schema"])
            model.transform_ = IDPTransform.from_dict(meta["transform"])
            model.location_scale_ = LocationScale.from_dict(meta["location_scale"])
            model.shape_ = AgeShape.from_dict(meta["shape"])
            model.encoder_ = CovariateEncoder.from_dict(meta["encoder"])
            model.training_ = meta["training"]
            model.history_ = meta["history"]
            model.train_seconds_ = float(meta["train_seconds"])
            model.fit_seconds_ = float(meta["fit_seconds"])
            model.created_ = meta["created"]
            model.adaptations_ = list(meta.get("adaptations", []))
            dof = meta["predictive"]["dof"]
            model.predictive_ = (
                float(meta["predictive"]["scale"]),
                None if dof is None else float(dof),
            )
            model.moment_map_ = (
                tensors["sampler.moment_map"].double().numpy(),
                np.asarray(meta["moment_map_offset"], dtype=np.float64),
            )
            shift, spread = meta["deviation_calibration"]
            model.deviation_calibration_ = (float(shift), float(spread))
            model.schedule_ = Schedule(cfg.schedule, cfg.diffusion_steps)
            net = build_denoiser(
                cfg.backbone,
                len(model.schema_.idps),
                model.encoder_.n_levels,
                cfg.diffusion_steps,
                **cfg.network,
            )
            net.load_state_dict(
                {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, strict=True
            )
            model.net_ = net.to(model.device_).eval()
            model.x0_cov_ = tensors["sampler.x0_cov"].float()
            arrays = {k: v.numpy() for k, v in tensors.items() if k.startswith("reference.")}
            model.reference_ = ReferenceTable.from_arrays(
                arrays, model.encoder_.n_levels, meta["reference_bandwidth"]
            )
            _check_shapes(model)
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise BundleError(f"This model file is inconsistent and cannot be used: {err}") from err
        return model

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto") -> NormativeModel:
        """Load a model saved with `save`, its network on `device` (see normcore.device)."""
        return cls.from_bytes(bundle.read(path), device=device)

    @property
    def idps(self) -> list[str]:
        self._check_fitted()
        return list(self.schema_.idps)


def moment_match(
    draws: np.ndarray, scores: np.ndarray, enough: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, offset) such that `draws @ matrix + offset` have the mean and covariance
    of the first stage's `scores` (n, D) of the training people.

    Why: the first stage maps every training person to near-standard-normal scores, so
    their mean, spread and correlations are what the denoiser's draws over the same
    people's covariates should have. A denoiser that regresses a little to the mean
    draws too narrow ones (synthetic, 20 IDPs: SD 0.96, 95 % bands covering 93.7 %), and
    one that under-learns the dependence draws too weak correlations (synthetic, 2 IDPs:
    0.44 against 0.48), which makes real people look more typical than the model's own
    samples. The matrix is the optimal-transport map between the two covariances (the
    symmetric one closest to the identity), so draws move no more than needed; the
    scores' covariance is Ledoit-Wolf-shrunk so that it stays well-conditioned with many
    IDPs. Measured on the validation draws, so it costs no sampling. `draws` (rows,
    draws, D) are at validation people's covariates; with too few of them (`enough`
    False) it is the identity.
    """
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


MIN_ADAPT_CONTROLS = 3
ADAPT_PRIOR = 1e-2
"""Weight of the pull of a site's embedding towards its starting row (a random-effect prior)."""
ADAPT_PRIOR_N = 5.0
"""Prior sample size of a site's first-stage effects: n controls move them n / (n + 5) of
the way from the starting value to the controls' own estimate (half-way with 5 controls)."""


def _site_column(schema: Schema) -> str:
    if "site" in schema.categorical:
        return "site"
    if not schema.categorical:
        raise DataError("This model has no categorical covariate (such as site) to adapt.")
    return schema.categorical[-1]


def _learn_level(
    model: NormativeModel,
    y_net: np.ndarray,
    age_z: np.ndarray,
    codes: np.ndarray,
    k: int,
    code: int,
    readapted: bool,
    steps: int,
    progress: Callable[[dict], None] | None,
) -> None:
    """Fit one embedding row of categorical `k` to the controls, all else frozen.

    The controls come in the denoiser's units (`y_net`), with standardised ages and
    category codes whose column `k` already holds `code`.

    A new level's row starts at the 'unknown' row; a gradient mask lets only that row
    move, and an L2 pull towards its start acts as a prior that dominates with few controls.
    """
    table = model.net_.cond.categories[k]
    start_row = table.weight[code if readapted else 0].detach().clone()
    if not readapted:
        grown = torch.nn.Embedding(table.num_embeddings + 1, table.embedding_dim)
        with torch.no_grad():
            grown.weight[:-1] = table.weight
            grown.weight[-1] = start_row
        model.net_.cond.categories[k] = table = grown
    for p in model.net_.parameters():
        p.requires_grad_(False)
    table.weight.requires_grad_(True)
    only_row = torch.zeros(table.num_embeddings, 1)
    only_row[code] = 1.0
    hook = table.weight.register_hook(lambda grad: grad * only_row)
    y = torch.as_tensor(y_net, dtype=torch.float32)
    age, codes = torch.as_tensor(age_z), torch.as_tensor(codes)
    alpha_bar = torch.as_tensor(model.schedule_.alpha_bar, dtype=torch.float32)
    g = torch.Generator().manual_seed(model.config.seed + 11)
    opt = torch.optim.Adam([table.weight], lr=1e-2)
    batch = 256
    model.net_.eval()
    try:
        for step in range(steps):
            idx = torch.randint(0, len(y), (batch,), generator=g)
            t = torch.randint(0, model.schedule_.steps, (batch,), generator=g)
            noise = torch.randn(batch, y.shape[1], generator=g)
            h = model.net_.embed(age[idx], codes[idx])
            v = model.net_(q_sample(y[idx], t, noise, alpha_bar), t, h)
            prior = torch.sum((table.weight[code] - start_row) ** 2) / len(y)
            target = v_target(y[idx], t, noise, alpha_bar)
            loss = torch.mean((v - target) ** 2) + ADAPT_PRIOR * prior
            opt.zero_grad()
            loss.backward()
            opt.step()
            if progress is not None and (step + 1) % 20 == 0:
                fraction = (step + 1) / steps
                progress(
                    {"phase": "adapt", "step": step + 1, "loss": loss.item(), "fraction": fraction}
                )
    finally:
        hook.remove()
        for p in model.net_.parameters():
            p.requires_grad_(True)


def _check_shapes(model: NormativeModel) -> None:
    """Reject bundles whose pieces disagree (e.g. a table built for other IDPs)."""
    ref, d = model.reference_, len(model.schema_.idps)
    n_combo = int(np.prod(model.encoder_.n_levels)) if model.encoder_.n_levels else 1
    if ref.quantiles.ndim != 4 or ref.quantiles.shape[0] != n_combo or ref.quantiles.shape[3] != d:
        raise BundleError(
            f"This model file is inconsistent: its reference table has shape {ref.quantiles.shape} "
            f"but the model has {n_combo} covariate combinations and {d} IDPs."
        )
    steps = len(ddim_timesteps(model.schedule_, model.config.sampling_steps))
    if (
        ref.precision.shape != (d, d)
        or len(model.transform_.loc) != d
        or model.moment_map_[0].shape != (d, d)
        or tuple(model.x0_cov_.shape) != (steps, d, d)
    ):
        raise BundleError(
            "This model file is inconsistent: its IDP transforms do not match its IDPs."
        )


def _training_summary(df: pd.DataFrame, schema: Schema) -> dict:
    """What the model was trained on, for flags, the model card and the sidebar."""
    ages = pd.to_numeric(df[schema.age]).to_numpy(dtype=np.float64)
    summary: dict = {
        "n": int(len(df)),
        "age_range": [float(ages.min()), float(ages.max())],
        "idps": list(schema.idps),
        "level_counts": {},
        "level_age_ranges": {},
    }
    for col in schema.categorical:
        cats = coerce_categories(df[col])
        summary["level_counts"][col] = {
            str(k): int(v) for k, v in cats.value_counts().sort_index().items()
        }
        summary["level_age_ranges"][col] = {
            str(k): [
                float(ages[cats.to_numpy() == k].min()),
                float(ages[cats.to_numpy() == k].max()),
            ]
            for k in cats.unique()
        }
    return summary
