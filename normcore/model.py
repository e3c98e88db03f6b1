"""NormativeModel: the steps of the method in order, each done by its own module.

A first stage per IDP (normcore.first_stage) maps raw values to normal scores; one
conditional denoiser over all IDPs (normcore.joint, trained by normcore.train) models
their joint law given the covariates; a reference table (normcore.reference) tabulates
its quantiles over the covariates once, so that scoring is a lookup. Adaptation to a new
site is normcore.adapt, the file format normcore.bundle.

The estimator follows scikit-learn's contract: `__init__` stores settings only; `fit`
validates, learns and returns self; learned attributes end in `_`; every other method
checks that the model is fitted. Nothing here writes files or prints, except `save`.

Torch is imported only where a network trains or draws (inside those methods, or when a
loaded model's network is first built, normcore.joint): loading a model and scoring,
centiles and deviations of people who have every IDP read the reference table only, and
start without torch's seconds of import.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from normcore import adapt as adaptation
from normcore import bundle, conditional, outputs, plausibility, provenance
from normcore.config import BACKBONE_LR, ModelConfig, TrainConfig
from normcore.diffusion import Schedule
from normcore.errors import DataError
from normcore.first_stage import (
    FirstStage,
    NewPeopleStage,
    NewPersonSpread,
    fit_model_stages,
    level_counts,
)
from normcore.joint import CHUNK, DenoiserSpec, JointModel
from normcore.model_views import FittedViews
from normcore.options import DEFAULT_QUANTILES
from normcore.preprocessing import CovariateEncoder
from normcore.reference import (
    PROBABILITY_LEVELS,
    Z_LEVELS,
    DeviationCalibration,
    ReferenceTable,
    Rescorer,
    Sampler,
    build_reference,
    corrected_calibration,
    deviation_calibration,
    deviation_over_present,
    deviation_site_shifts,
    scores_at,
    with_level,
    z_of_scores,
)
from normcore.schema import (
    Schema,
    ValidationReport,
    coerce_categories,
    validate_scoring,
    validate_training,
)

__version__ = "0.1.0"
__all__ = ["DEFAULT_QUANTILES", "ModelConfig", "NormativeModel", "torch_threads"]

MIN_DEVIATION_ROWS = 60
"""Fewer validation rows than this leave the deviation centile's shift and spread
uncalibrated: a mean and a standard deviation from fewer people are too loose to correct
anything."""


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Bound torch's intra-op threads for the duration of a call, then restore them.

    The default is one thread: our tensors are small, and on a shared CPU (a dashboard
    serving several people, CI) OpenMP threads that spin waiting for a busy core slow
    sampling down several-fold. NORMCORE_THREADS raises it.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n or int(os.environ.get("NORMCORE_THREADS", 0)) or 1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class NormativeModel(FittedViews):
    """Conditional DDPM p(IDPs | age, sex, site, ...) with a precomputed centile table.

    Parameters mirror `ModelConfig`; `max_epochs` and `max_seconds` bound training,
    `threads` bounds CPU threads (default: NORMCORE_THREADS or 1). `device` is where the
    network trains and samples: "auto" (a GPU when torch sees one), "cpu" or "cuda"; it is
    not saved (see normcore.device). Under torchrun, `fit` trains with several processes
    (see normcore.distributed).
    """

    def __init__(
        self, backbone: str = "film", max_epochs: int | None = None, seed: int = 0, *,
        schedule: str = "cosine", diffusion_steps: int = 1000, sampling_steps: int = 20,
        eta: float = 1.0, reference_samples: int = 10_000, grid_points: int = 41,
        max_seconds: float | None = None, network: dict | None = None,
        threads: int | None = None, device: str = "auto", gaussian_prior: bool = False,
    ) -> None:  # fmt: skip
        self.config = ModelConfig(
            backbone=backbone, schedule=schedule, diffusion_steps=diffusion_steps,
            sampling_steps=sampling_steps, eta=eta, network=dict(network or {}),
            train=TrainConfig(
                lr=BACKBONE_LR.get(backbone, TrainConfig.lr), max_epochs=max_epochs,
                max_seconds=max_seconds,
            ),
            reference_samples=reference_samples, grid_points=grid_points, seed=seed,
            gaussian_prior=gaussian_prior,
        )  # fmt: skip
        self.threads = threads
        self.device = device

    # ------------------------------------------------------------------ fitting
    def fit(
        self, df: pd.DataFrame, schema: Schema | None = None,
        progress: Callable[[dict], None] | None = None,
        should_stop: Callable[[], bool] | None = None, keep_outliers: bool = False,
    ) -> NormativeModel:  # fmt: skip
        """Validate `df`, fit the first stage, train the denoiser, tabulate the reference.

        Values that cannot be real (schema.validate_training) are refused unless
        `keep_outliers`; a numeric failure they cause is a DataError naming them."""
        import torch

        from normcore.device import resolve_device
        from normcore.distributed import current as current_parallel
        from normcore.train import train_denoiser, validation_split

        schema = schema or Schema.infer(df)
        validate_training(df, schema, keep_outliers).raise_for_errors()
        cfg, start, parallel = self.config, time.perf_counter(), current_parallel()
        device = resolve_device(self.device, parallel.local_rank if parallel else None)
        failures = plausibility.numeric_failures(_idp_values(df, schema), schema.idps)
        with torch_threads(self.threads), failures:
            torch.manual_seed(cfg.seed)  # the network's initial weights
            encoder = CovariateEncoder.fit(df, schema)
            n_levels = encoder.n_levels
            values = _idp_values(df, schema)
            ages = df[schema.age].to_numpy(dtype=np.float64)
            age_z, (codes, _) = encoder.encode_age(ages), encoder.encode_categories(df)
            val_rows, train_rows = validation_split(len(values), cfg.train, cfg.seed)
            # The network, the sampler's corrections and the deviation calibration are
            # measured on validation rows through a first stage that has not seen them, so
            # that those estimates are not optimistic (benchmarks/RESULTS.md).
            split_stage, stage, spread, new_scores = fit_model_stages(
                values, age_z, codes, n_levels, train_rows, cfg.seed
            )
            split_scores = split_stage.transform(values, age_z, codes)
            val_rows, train_rows = _scored_rows(split_scores, val_rows, train_rows)
            schedule = Schedule(cfg.schedule, cfg.diffusion_steps)
            net = DenoiserSpec.of(cfg, len(schema.idps), n_levels).untrained().to(device)
            if net.prior is not None:
                from normcore.denoisers.gaussian_prior import prior_covariances

                net.prior.set_covariance(
                    *prior_covariances(split_scores[train_rows], age_z[train_rows])
                )
            net, history = train_denoiser(
                net, schedule, split_scores, age_z, codes, cfg.train, val_rows, train_rows,
                seed=cfg.seed, progress=progress, should_stop=should_stop, device=device,
                parallel=parallel,
            )  # fmt: skip
            scores = stage.transform(values, age_z, codes)
            joint = JointModel.calibrate(
                net, schedule, sampling_steps=cfg.sampling_steps, eta=cfg.eta, device=device,
                seed=cfg.seed, split_scores=split_scores, kept_scores=scores, age_z=age_z,
                codes=codes, val_rows=val_rows, train_rows=train_rows, spread=spread,
            )  # fmt: skip
            train_seconds = time.perf_counter() - start
            reference = build_reference(
                _sampler(joint, encoder, adapted=()), _age_range(ages), n_levels,
                joint.spread.quantiles(PROBABILITY_LEVELS),
                samples_per_combination=cfg.reference_samples, grid_points=cfg.grid_points,
                seed=cfg.seed, parallel=parallel, first_stage_margins=_known(n_levels),
                people=codes, closed_columns=_closed_columns(schema),
                rescore=_rescorer(stage, encoder),
                progress=None if progress is None
                else lambda f: progress({"phase": "reference", "fraction": f}),
            )  # fmt: skip
            calibration = _calibrate_deviation(
                reference, schema, split_scores, new_scores, ages, codes, train_rows, val_rows,
                joint.spread, n_levels,
            )  # fmt: skip
        self.schema_, self.encoder_, self.first_stage_, self.joint_ = schema, encoder, stage, joint
        self.reference_, self.deviation_calibration_ = reference, calibration
        self.training_, self.history_, self.adaptations_ = _summary(df, schema), history, []
        self.train_seconds_ = train_seconds
        self.fit_seconds_ = time.perf_counter() - start
        self.created_ = datetime.now(UTC).isoformat(timespec="seconds")
        self.origin_ = None
        return self

    # ----------------------------------------------------------------- sampling
    def _sample_scores(
        self, ages: np.ndarray, codes: np.ndarray, seed: int | None = None
    ) -> np.ndarray:
        """One draw per row of the normal scores at ages (years) and category codes."""
        adapted = adaptation.adapted_levels(self.adaptations_, self.encoder_.levels)
        seed = self.config.seed + 1 if seed is None else seed
        return _sampler(self.joint_, self.encoder_, adapted)(ages, codes, seed)

    @property
    def _new_people(self) -> NewPeopleStage:
        """The first stage as it maps people it was not fitted on (their level's site
        factor included): every score, centile, draw and band of the model goes through it."""
        return NewPeopleStage(self.first_stage_, self.joint_.spread)

    def _to_values(self, scores: np.ndarray, ages: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return self._new_people.inverse(scores, self.encoder_.encode_age(ages), codes)

    def sample(self, covariates: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
        """Draw `n` IDP vectors from the model at each row's exact covariates (wide table).

        These are the denoiser's draws, less its error in the mean where `centiles` and
        `score` take each IDP's margins from the first stage (a sex and site seen in
        training; `ReferenceTable.draw_offset`), so that draws plotted over the fans
        follow them. What is left between the two is the denoiser's error in the spread
        and shape (benchmarks/RESULTS.md, "One law")."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a whole number of draws of at least 1, not {n!r}")
        ages, codes, _ = _covariates(covariates, self.schema, self.encoder_)
        rows = np.repeat(np.arange(len(covariates)), n)
        with torch_threads(self.threads):
            scores = self._sample_scores(ages[rows], codes[rows], seed=seed)
            scores = scores - self.reference_.draw_offset(codes[rows], ages[rows])
            y = self._to_values(scores, ages[rows], codes[rows])
        return outputs.sample_table(covariates, self.schema_, rows, y)

    def centiles(
        self, covariates: pd.DataFrame, quantiles: Sequence[float] = DEFAULT_QUANTILES
    ) -> pd.DataFrame:
        """Model quantiles of every IDP at each covariate row (long table).

        Columns: the covariate columns given, `idp`, `quantile` (0-1), `value`.
        """
        ages, codes, _ = _covariates(covariates, self.schema, self.encoder_)
        probs = _probabilities(quantiles)
        q, _ = self.reference_.lookup(codes, ages, _rescorer(self.first_stage_, self.encoder_))
        scores = scores_at(q, probs)  # (n, P, D)
        n, p, d = scores.shape
        at = np.repeat(np.arange(n), p)
        vals = self._to_values(scores.reshape(n * p, d), ages[at], codes[at]).reshape(n, p, d)
        return outputs.centile_table(covariates, self.schema_, probs, vals)

    # ----------------------------------------------------------------- scoring
    def check(self, df: pd.DataFrame) -> ValidationReport:
        """Validate a table for scoring: errors block it, warnings are flagged per row."""
        return validate_scoring(
            df, self.schema, self.age_range, self.encoder_.levels,
            idp_centre=self.first_stage_.transform_.centre, site_ages=self._site_ages(),
            site_factors=self._site_factors(),
        )  # fmt: skip

    def _site_factors(self) -> tuple[str, dict[str, tuple[int, float]]] | None:
        """The site column and, for each site learned from few enough training people that
        its new people's bands are widened (`NewPersonSpread.site_factor`), those people
        and the factor."""
        spread = self.joint_.spread
        if not self.schema.categorical or spread.site_term <= 0.0:
            return None
        column = adaptation.site_column(self.schema_)
        k = self.schema.categorical.index(column)
        counts = spread.level_counts[k]
        levels = list(self.encoder_.levels[column])[: len(counts)]
        factors = {
            level: (n, float(spread.factor_at(1.0 / n)))
            for level, n in zip(levels, counts, strict=True)
            if n > 0
        }
        return column, factors

    def _site_ages(self) -> tuple[str, dict[str, tuple[float, float]]] | None:
        """The site column and the ages each site was seen at (training and adaptation)."""
        if not self.schema.categorical:
            return None
        column = adaptation.site_column(self.schema_)
        return column, plausibility.site_age_ranges(self.training_, self.adaptations_, column)

    def _place(self, df: pd.DataFrame) -> outputs.PlacedRows:
        """Check a table, then place its people in the reference table (z per IDP)."""
        self.check(df).raise_for_errors()
        ages, codes, unseen = _covariates(df, self.schema_, self.encoder_)
        y = _idp_values(df, self.schema_)
        centre = self.first_stage_.transform_.centre
        implausible, _ = plausibility.implausible_cells(y, self.schema_.idps, centre)
        usable = np.where(implausible, centre, y)  # placeholders: their z is set to NaN
        z, n_eff = self._reference_z_of(usable, ages, codes)
        # Far out whatever the age: the age-extrapolated first stage can take a value 100
        # SDs out at 120 years for an ordinary one, so it is also placed at the nearest
        # training age.
        lo, hi = self.age_range
        nearest = np.clip(ages, lo, hi)
        beyond = np.abs(z) > Z_LEVELS[-1]
        out = nearest != ages
        if out.any():
            z_near, _ = self._reference_z_of(usable[out], nearest[out], codes[out])
            beyond[out] |= np.abs(z_near) > Z_LEVELS[-1]
        z[implausible], beyond[implausible] = np.nan, False
        site_ages = self._site_ages()
        out_of_site = np.zeros(len(df), dtype=bool)
        if site_ages is not None and site_ages[0] in df.columns:
            sites = coerce_categories(df[site_ages[0]]).tolist()
            out_of_site = plausibility.outside_site_ages(ages, sites, site_ages[1])
        return outputs.PlacedRows(
            y, ages, z, n_eff, codes, out_of_age_range=out,
            unseen_levels=outputs.unseen_text(list(self.encoder_.levels), unseen),
            out_of_site_age_range=out_of_site, beyond_reference=beyond, implausible=implausible,
        )  # fmt: skip

    def _reference_z_of(
        self, values: np.ndarray, ages: np.ndarray, codes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """z (n, D) of raw `values` within the reference table at `ages` (years) and
        `codes`, and the table's effective sample sizes there."""
        scores = self._new_people.transform(values, self.encoder_.encode_age(ages), codes)
        rescore = _rescorer(self.first_stage_, self.encoder_)
        return _reference_z(self.reference_, scores, ages, codes, rescore)

    def score(self, df: pd.DataFrame, given: Sequence[str] | str | None = None) -> pd.DataFrame:
        """Centile (0-100), z and Monte-Carlo standard error of the centile, per person and IDP.

        Long table: `row` (0-based input row), the id column if any, `idp`, `value`,
        `centile`, `z` (clipped to +-6), `centile_se`, the flags (`outputs.score_table`),
        then `given`, `missing` and `imputed_q02` .. `imputed_q98`. `given` (IDP names):
        centiles conditional on the covariates *and* these IDPs' values, their own rows
        left out. An IDP a person lacks (blank, no column, or implausible) has no centile
        but its conditional quantiles given the IDPs the person has, in the table's units
        (`conditional.score_table_given`).
        """
        placed = self._place(df)
        chosen = conditional.given_set(self.idps, given)
        ages, codes = placed.ages, placed.codes
        lacking = placed.implausible | ~np.isfinite(placed.values)
        # Only a given set or a missing IDP draws from the network; everyone else is
        # scored from the reference table, without torch.
        drawing = chosen.any() or lacking.any()
        with torch_threads(self.threads) if drawing else contextlib.nullcontext():
            return conditional.score_table_given(
                outputs.score_table(df, self.schema_, placed), self.idps, self.joint_,
                self._new_people, self.encoder_.encode_age(ages), codes, placed.values,
                placed.implausible, chosen, np.asarray(DEFAULT_QUANTILES), self.config.seed + 2,
            )  # fmt: skip

    def deviation(self, df: pd.DataFrame) -> pd.DataFrame:
        """One multivariate deviation per person: how unusual the whole IDP profile is.

        `mahalanobis`: the squared Mahalanobis distance of the person's z under the model's
        IDP correlation at their age; `deviation_centile` ranks it among model samples of
        the same levels and age (100 = more unusual than every sample), recalibrated at fit
        time (per site, and in age; `reference.DeviationCalibration`). A person lacking
        IDPs is measured over the `n_idps` they have (`missing` names the others;
        `reference.deviation_over_present`).
        """
        placed = self._place(df)
        d2, centile = deviation_over_present(
            self.reference_, placed.codes, placed.ages, placed.z, np.isfinite(placed.values),
            self.deviation_calibration_,
        )  # fmt: skip
        return outputs.deviation_table(df, self.schema_, placed, d2, centile)

    # -------------------------------------------------------------- adaptation
    def adapt(
        self, controls: pd.DataFrame, site: str | None = None, column: str | None = None,
        steps: int = 400, progress: Callable[[dict], None] | None = None,
    ) -> NormativeModel:  # fmt: skip
        """A copy of this model adapted to one site from a table of its healthy controls
        (see normcore.adapt: what is checked, what is learned, what stays frozen). That
        site's share of the reference table is then rebuilt; the copy records the
        adaptation in `adaptations`."""
        plan = adaptation.plan_adaptation(
            controls, self.schema, self.encoder_.levels, self.age_range, site, column,
            idp_centre=self.first_stage_.transform_.centre,
        )  # fmt: skip
        plan.require_enough()
        new = copy.deepcopy(self)
        new.adaptations_ = [*self.adaptations_, plan.record(steps)]
        new.origin_ = None
        with torch_threads(self.threads):
            k, code, new.first_stage_ = adaptation.learn_site(
                plan, self.schema_, new.encoder_, new.first_stage_, new.joint_, steps,
                self.config.seed, progress,
            )  # fmt: skip
            new.reference_ = with_level(
                new.reference_, new._sample_scores, column=k, code=code,
                prior=new.joint_.spread.quantiles(PROBABILITY_LEVELS),
                samples_per_combination=self.config.reference_samples,
                seed=self.config.seed + len(self.adaptations_) + 1,
                people=_site_codes(new.encoder_, plan.controls, k, code),
                rescore=_rescorer(new.first_stage_, new.encoder_),
            )  # fmt: skip
        return new

    # ------------------------------------------------------------- persistence
    def to_bytes(self) -> bytes:
        """The model as one bundle (see normcore.bundle)."""
        self._fitted()
        parts = {name: getattr(self, f"{name}_") for name in bundle.SavedModel.fitted_fields()}
        return bundle.pack(bundle.SavedModel(__version__, self.config, **parts))

    def save(self, path: str | os.PathLike) -> None:
        """Write the model bundle to `path` (a single file)."""
        bundle.write(path, self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, device: str = "auto") -> NormativeModel:
        """Rebuild a model from bundle bytes, its network on `device` when something first
        draws from it (see normcore.joint); never unpickles anything."""
        saved, origin = bundle.unpack(data, device)
        model = cls.__new__(cls)
        model.config, model.threads, model.device = saved.config, None, device
        for name in bundle.SavedModel.fitted_fields():
            setattr(model, f"{name}_", getattr(saved, name))
        model.origin_ = origin
        return model

    def check_network(self) -> None:
        """Build the denoiser from its stored weights now, so weights that do not fit the
        file's network settings are a BundleError here rather than at the first draw.

        Why: reading a file builds no network (scoring a complete table needs no torch);
        a program about to draw anyway, such as the dashboard after an upload, calls this
        to refuse such a file while it can still say which file it was."""
        self._fitted()
        self.joint_.net  # noqa: B018 (building it is the check)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto") -> NormativeModel:
        """Load a model saved with `save`, its network on `device` (see normcore.device)."""
        return cls.from_bytes(bundle.read(path), device=device)


def _covariates(
    df: pd.DataFrame, schema: Schema, encoder: CovariateEncoder
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ages (years), category codes and unseen-level mask of a covariate table."""
    if schema.age not in df.columns:
        raise DataError(f"The table has no '{schema.age}' column, which this model needs.")
    ages = pd.to_numeric(df[schema.age], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(ages))
    if len(bad):
        raise DataError(
            f"Column '{schema.age}' has missing or non-numeric values in rows "
            f"{', '.join(map(str, bad[:10]))}{' ...' if len(bad) > 10 else ''}."
        )
    codes, unseen = encoder.encode_categories(df)
    return ages, codes, unseen


def _scored_rows(
    split_scores: np.ndarray, val_rows: np.ndarray, train_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(validation rows, training rows) without the people of whom the split first stage
    could not score every IDP.

    Why: a value kept with `keep_outliers` that cannot be real (a negative volume) gets no
    score from a first stage that did not see it (its IDP is log-transformed), and one nan
    in a validation row makes the validation loss, the sampler's x0 covariance and the
    moment matching nan: training would run to its cap and the fit end in a linear-algebra
    failure. The person still counts for the kept first stage; the validation report has
    already named the value.
    """
    scored = np.isfinite(split_scores).all(axis=1)
    return val_rows[scored[val_rows]], train_rows[scored[train_rows]]


def _idp_values(df: pd.DataFrame, schema: Schema) -> np.ndarray:
    """(n, D) raw values of the schema's IDPs in a validated table; nan where a cell is
    blank or the IDP has no column (a missing IDP)."""
    values = df.reindex(columns=list(schema.idps)).apply(pd.to_numeric, errors="coerce")
    return values.to_numpy(dtype=np.float64)


def _probabilities(quantiles: Sequence[float]) -> np.ndarray:
    """`quantiles` as probability levels, refused unless all lie strictly inside (0, 1)."""
    probs = np.asarray(quantiles, dtype=np.float64)
    if probs.size == 0 or np.any((probs <= 0) | (probs >= 1)):
        raise ValueError("quantiles must lie strictly between 0 and 1, e.g. 0.02,0.5,0.98")
    return probs


def _sampler(
    joint: JointModel, encoder: CovariateEncoder, adapted: Sequence[tuple[int, int, float]]
) -> Sampler:
    """The reference table's sampler: ages in years -> the joint model's normal scores."""
    return lambda ages, codes, seed: joint.draw(encoder.encode_age(ages), codes, seed, adapted)


def _rescorer(stage: FirstStage, encoder: CovariateEncoder) -> Rescorer:
    """Normal scores at one level combination -> the same raw values' scores at another,
    through the first stage at each row's age (see `reference.Rescorer`)."""

    def rescore(
        scores: np.ndarray, codes_from: np.ndarray, codes_to: np.ndarray, ages: np.ndarray
    ) -> np.ndarray:
        n, p, d = scores.shape
        at = np.repeat(np.arange(n), p)
        age_z = encoder.encode_age(ages)[at]
        raw = stage.inverse(scores.reshape(n * p, d), age_z, codes_from[at])
        return stage.transform(raw, age_z, codes_to[at]).reshape(n, p, d)

    return rescore


def _site_codes(encoder: CovariateEncoder, controls: pd.DataFrame, k: int, code: int) -> np.ndarray:
    """Codes of an adapted site's controls, column `k` set to the site's `code`."""
    codes = encoder.encode_categories(controls)[0]
    codes[:, k] = code
    return codes


def _closed_columns(schema: Schema) -> np.ndarray:
    """(K,) bool: the categorical columns other than the site (`adapt.site_column`), whose
    unknown level is one of the known ones (see `reference.ReferenceTable.closed_columns`)."""
    site = adaptation.site_column(schema) if schema.categorical else None
    return np.array([column != site for column in schema.categorical], dtype=bool)


def _reference_z(
    reference: ReferenceTable, scores: np.ndarray, ages: np.ndarray, codes: np.ndarray,
    rescore: Rescorer | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """z within the reference table, and its effective sample sizes, of first-stage
    `scores` (n, D) at each row's age (years) and levels, in chunks of bounded memory
    (`rescore`: for rows read as mixtures, see `ReferenceTable.lookup`)."""
    z, n_eff = np.empty_like(scores), np.empty(len(scores))
    for s in range(0, len(scores), CHUNK):
        q, n_eff[s : s + CHUNK] = reference.lookup(
            codes[s : s + CHUNK], ages[s : s + CHUNK], rescore
        )
        z[s : s + CHUNK] = z_of_scores(q, scores[s : s + CHUNK])
    return z, n_eff


def _calibrate_deviation(
    reference: ReferenceTable, schema: Schema, split_scores: np.ndarray,
    new_scores: np.ndarray | None, ages: np.ndarray, codes: np.ndarray,
    train_rows: np.ndarray, val_rows: np.ndarray, spread: NewPersonSpread, n_levels: list[int],
) -> DeviationCalibration:  # fmt: skip
    """The deviation centile's correction (`reference.DeviationCalibration`): the two
    measurements of `deviation_measurements`, the first moved towards the second by as
    much as the second's noise allows (`reference.corrected_calibration`); the first alone
    from too few validation people."""
    start, measured = deviation_measurements(
        reference, schema, split_scores, new_scores, ages, codes, train_rows, val_rows,
        spread, n_levels,
    )  # fmt: skip
    return start if measured is None else corrected_calibration(start, measured, ages[val_rows])


def deviation_measurements(
    reference: ReferenceTable, schema: Schema, split_scores: np.ndarray,
    new_scores: np.ndarray | None, ages: np.ndarray, codes: np.ndarray,
    train_rows: np.ndarray, val_rows: np.ndarray, spread: NewPersonSpread, n_levels: list[int],
) -> tuple[DeviationCalibration, DeviationCalibration | None]:  # fmt: skip
    """The deviation centile's shift and spread measured twice, each as measured (not
    tested against none):

    1. On every training person, scored by a first stage fitted without them
       (`new_scores`): the site shifts (`reference.deviation_site_shifts`; a site's
       shift needs that site's people, and the validation people are a few per site),
       then the shift and spread in age (`reference.deviation_calibration`; hundreds of
       people). Most of these people trained the network, which can make them look more
       typical than new people.
    2. On the validation people, whom the network did not train on, scored by the split
       stage that has not seen them and read as a new person's are (the site factor with
       the training split's counts), after the same site shifts; None from too few."""
    start = DeviationCalibration()
    age_range = _age_range(ages)
    rows = np.flatnonzero(np.isfinite(new_scores).all(axis=1)) if new_scores is not None else []
    if len(rows) >= MIN_DEVIATION_ROWS:
        z, _ = _reference_z(reference, new_scores[rows], ages[rows], codes[rows])
        if schema.categorical:
            column = schema.categorical.index(adaptation.site_column(schema))
            start = deviation_site_shifts(reference, codes[rows], ages[rows], z, column)
        start = deviation_calibration(
            reference, codes[rows], ages[rows], z, start, age_range, beyond_noise=0.0
        )
    if len(val_rows) < MIN_DEVIATION_ROWS:
        return start, None
    v = val_rows
    counts = level_counts(codes[train_rows], n_levels) if spread.site_term else ()
    factor = spread._replace(level_counts=counts).site_factor(codes[v])
    z, _ = _reference_z(reference, split_scores[v] / factor[:, None], ages[v], codes[v])
    measured = deviation_calibration(
        reference, codes[v], ages[v], z, start, age_range, beyond_noise=0.0
    )
    return start, measured


def _known(n_levels: list[int]) -> np.ndarray:
    """(C,) bool: level combinations with no 'unknown' level, whose margins the first stage
    learned from training people (see `reference.build_reference`)."""
    if not n_levels:
        return np.ones(1, dtype=bool)
    return np.all(np.indices(n_levels).reshape(len(n_levels), -1) > 0, axis=0)


def _age_range(ages: np.ndarray) -> tuple[float, float]:
    return float(ages.min()), float(ages.max())


def _summary(df: pd.DataFrame, schema: Schema) -> dict:
    """What the model was trained on, for flags, the model card and the sidebar."""
    ages = pd.to_numeric(df[schema.age]).to_numpy(dtype=np.float64)
    summary: dict = {
        "n": int(len(df)),
        "age_range": list(_age_range(ages)),
        "idps": list(schema.idps),
        "level_counts": {},
        "level_age_ranges": {},
        "table_sha256": provenance.table_digest(df, schema),
    }
    for col in schema.categorical:
        cats = coerce_categories(df[col])
        counts = cats.value_counts().sort_index()
        summary["level_counts"][col] = {str(k): int(v) for k, v in counts.items()}
        summary["level_age_ranges"][col] = {
            str(k): list(_age_range(ages[cats.to_numpy() == k])) for k in cats.unique()
        }
    return summary
