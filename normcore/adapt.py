"""Adapting a fitted model to one site from a few of its healthy controls.

One plan (`plan_adaptation`) decides, before anything is learned, what an adaptation to
a table of controls will do: which categorical column names the site, which site it is
(exactly one), whether it is new or re-adapted, how many controls there are per level of
the other covariates, and whether they are enough. The model, the CLI and the dashboard
all use it, so they agree on every check and every message.

What is learned (the "transfer" of PCNtoolkit; site effects as random effects, as in Kia
et al.'s federated hierarchical Bayesian regression, PLoS ONE 2022): the site's mean and log-spread
effects in the first stage, shrunk towards their start by a prior worth PRIOR_N controls,
then the site's embedding row of the denoiser (`learn_level`), pulled towards its start;
everything else stays frozen so the reference is not forgotten.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from normcore import plausibility
from normcore.diffusion import Schedule
from normcore.errors import DataError, Problem
from normcore.first_stage import FirstStage
from normcore.freesurfer import classify_column
from normcore.joint import JointModel
from normcore.preprocessing import CovariateEncoder
from normcore.schema import Schema, coerce_categories, validate_scoring

if TYPE_CHECKING:
    from torch import nn

MIN_CONTROLS = 3
"""Fewer controls than this cannot estimate a site's mean and spread at all."""
PRIOR = 1e-2
"""Weight of the pull of a site's embedding towards its starting row (a random-effect prior)."""
PRIOR_N = 5.0
"""Prior sample size of a site's first-stage effects: n controls move them n / (n + 5) of
the way from the starting value to the controls' own estimate (half-way with 5 controls)."""
BATCH = 256
"""Controls drawn (with replacement) per learning step of the embedding row."""


def site_column(schema: Schema) -> str:
    """The categorical column an adaptation changes: 'site', else the last categorical."""
    if "site" in schema.categorical:
        return "site"
    if not schema.categorical:
        raise DataError("This model has no categorical covariate (such as site) to adapt.")
    return schema.categorical[-1]


@dataclass(frozen=True)
class AdaptationPlan:
    """What an adaptation to `controls` will do, decided before any learning."""

    controls: pd.DataFrame
    """The controls, 0-based index, with the site column set when a site name was given."""
    column: str
    level: str
    readapted: bool
    """True when the model already knows the site (adapting again refines it)."""
    counts: dict[str, dict[str, int]]
    """Controls per level of every other categorical column, zero for a level the model
    knows that the controls lack (no men, say): `site_advice.adaptation_warnings` reads it."""
    warnings: tuple[Problem, ...] = ()
    """The controls' validation warnings (a new site's own 'unseen level' among them)."""
    age_range: tuple[float, float] | None = None
    """The controls' youngest and oldest age: outside it the site's fans are extrapolated."""

    @property
    def n_controls(self) -> int:
        return len(self.controls)

    @property
    def shortfall(self) -> str | None:
        """Why these controls are too few to adapt, or None when they are enough."""
        if self.n_controls >= MIN_CONTROLS:
            return None
        return (
            f"At least {MIN_CONTROLS} controls are needed to adapt a model to site "
            f"'{self.level}'; the table has {self.n_controls}."
        )

    def require_enough(self) -> None:
        """Raise a DataError naming the shortfall, if there is one."""
        if self.shortfall is not None:
            raise DataError(self.shortfall)

    def record(self, steps: int) -> dict:
        """The entry the adapted model keeps in `adaptations` (saved in its bundle)."""
        return {
            "column": self.column,
            "level": self.level,
            "n_controls": self.n_controls,
            "counts": self.counts,
            "readapted": self.readapted,
            "age_range": list(self.age_range) if self.age_range is not None else None,
            "steps": steps,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        }


def plan_adaptation(
    controls: pd.DataFrame,
    schema: Schema,
    levels: Mapping[str, Sequence[str]],
    age_range: tuple[float, float],
    site: str | None = None,
    column: str | None = None,
    idp_centre: Sequence[float] | None = None,
) -> AdaptationPlan:
    """Check `controls` against a model (its schema, category `levels`, training
    `age_range`) and plan the adaptation: a DataError lists every problem of the table
    (column and rows), or says the controls come from more than one site. Too few
    controls do not raise here (the dashboard shows the plan anyway): see `shortfall`.

    Values no real person has (`plausibility.implausible_cells`; `idp_centre`, the
    model's training means, adds the x100 rule) are errors here, not flags: the site is
    learned from these values, and a 0 mm3 thalamus would teach it that zeros are normal.

    `site` names the site for every row (a table without a site column); `column`
    defaults to `site_column(schema)`.
    """
    column = column or site_column(schema)
    controls = controls.reset_index(drop=True)
    if site is not None:
        controls = controls.assign(**{column: site})
    report = validate_scoring(controls, schema, age_range, levels)
    report.raise_for_errors()
    _refuse_unusable(controls, schema, idp_centre)
    sites = coerce_categories(controls[column]).dropna().unique().tolist()
    if len(sites) != 1:
        raise DataError(
            f"Adaptation needs controls from one site, but column '{column}' holds "
            f"{len(sites)}: {', '.join(map(str, sites[:5]))}. Filter the table or name "
            "the site."
        )
    counts: dict[str, dict[str, int]] = {}
    for col in schema.categorical:
        if col == column or col not in controls.columns:
            continue
        found = coerce_categories(controls[col]).value_counts()
        counts[col] = {str(lv): int(found.get(str(lv), 0)) for lv in levels.get(col, [])}
        counts[col].update({str(k): int(v) for k, v in found.items()})
    level = str(sites[0])
    known = [str(lv) for lv in levels.get(column, [])]
    ages = pd.to_numeric(controls[schema.age], errors="coerce")
    return AdaptationPlan(
        controls, column, level, level in known, counts, tuple(report.warnings),
        (float(ages.min()), float(ages.max())),
    )


def _refuse_unusable(
    controls: pd.DataFrame, schema: Schema, idp_centre: Sequence[float] | None
) -> None:
    """DataError naming every IDP column the controls lack, every blank IDP cell and
    every implausible value (scoring reports these as information; adaptation learns
    from them), with the likely cause: for a column constant or zero, the column of the
    table that is the same region under another FreeSurfer version's name, if any."""
    idps = list(schema.idps)
    absent = [
        Problem("error", name, (), "this brain measure is not in the controls' table.")
        for name in idps if name not in controls.columns
    ]
    blank = [
        Problem("error", name, tuple(int(i) for i in np.flatnonzero(empty)), "blank cells.")
        for name in idps if name in controls.columns
        and (empty := pd.to_numeric(controls[name], errors="coerce").isna().to_numpy()).any()
    ]
    if absent or blank:
        raise DataError(
            "Adaptation learns the site from every brain measure of every control: fill "
            "in or remove these.",
            problems=absent + blank,
        )
    values = controls[idps].apply(pd.to_numeric).to_numpy(dtype=np.float64)
    _, found = plausibility.implausible_cells(
        values, idps, None if idp_centre is None else np.asarray(idp_centre)
    )
    if not found:
        return
    problems = []
    for problem in found:
        region = classify_column(problem.column)
        same = [
            str(c) for c in controls.columns
            if region is not None and str(c) != problem.column
            and (other := classify_column(str(c))) is not None
            and other.identity == region.identity
        ]
        renamed = (
            " (FreeSurfer 7 renamed Thalamus-Proper to Thalamus)"
            if "thalamus" in problem.column.lower() else ""
        )
        advice = (
            f" The table's column '{same[0]}' is the same region under another FreeSurfer "
            f"version's name{renamed}: map that column to '{problem.column}' (rename it) "
            "and adapt again."
            if same
            else " The site is learned from these values, so they must be real: correct "
            "them, remove these rows, or map the column that holds this region."
        )
        problems.append(Problem("error", problem.column, problem.rows, problem.message + advice))
    raise DataError(
        f"The controls hold values no real person has, in {len(problems)} brain "
        f"measure{'s' if len(problems) != 1 else ''}; adaptation would learn them as "
        "normal:",
        problems=problems,
    )


def adapted_levels(
    adaptations: Sequence[Mapping], levels: Mapping[str, Sequence[str]]
) -> list[tuple[int, int, float]]:
    """(categorical index, level code, prior + controls) of every level that only
    adaptation has seen (a site with training rows is known well enough): the sites whose
    draws get a posterior-predictive spread (joint.with_site_uncertainty)."""
    names = list(levels)
    totals: dict[tuple[int, int], float] = {}
    for record in adaptations:
        column = record["column"]
        key = (names.index(column), list(levels[column]).index(record["level"]) + 1)
        if key in totals or not record["readapted"]:
            totals[key] = totals.get(key, PRIOR_N) + record["n_controls"]
    return [(k, code, n) for (k, code), n in totals.items()]


def learn_site(
    plan: AdaptationPlan,
    schema: Schema,
    encoder: CovariateEncoder,
    first_stage: FirstStage,
    joint: JointModel,
    steps: int,
    seed: int,
    progress: Callable[[dict], None] | None = None,
) -> tuple[int, int, FirstStage]:
    """Learn the planned site into a model's parts, which must be the adapted copy's own:
    `encoder` gains a new level in place and `joint`'s network its row (`learn_level`,
    on the CPU, which is enough for one embedding row; then back on `joint.device`).
    Returns (categorical index, level code, the first stage with the site's effects)."""
    k = list(encoder.levels).index(plan.column)
    if not plan.readapted:
        encoder.levels[plan.column].append(plan.level)
    code = encoder.levels[plan.column].index(plan.level) + 1
    raw = plan.controls[list(schema.idps)].apply(pd.to_numeric).to_numpy(dtype=np.float64)
    age_z = encoder.encode_age(plan.controls[schema.age].to_numpy(dtype=np.float64))
    codes = encoder.encode_categories(plan.controls)[0]
    codes[:, k] = code
    stage = first_stage.with_level(k, code, raw, age_z, codes, prior_n=PRIOR_N)
    scores = stage.transform(raw, age_z, codes)
    joint.net.cpu()
    learn_level(
        joint.net, joint.schedule, scores, age_z, codes, k, code, plan.readapted, steps, seed,
        progress,
    )  # fmt: skip
    joint.net.to(joint.device)
    return k, code, stage


def learn_level(
    net: nn.Module,
    schedule: Schedule,
    scores: np.ndarray,
    age_z: np.ndarray,
    codes: np.ndarray,
    k: int,
    code: int,
    readapted: bool,
    steps: int,
    seed: int,
    progress: Callable[[dict], None] | None = None,
) -> None:
    """Fit one embedding row of categorical `k` of `net` (in place, on the CPU) to the
    controls' normal `scores`, all else frozen; `codes`' column `k` already holds `code`.

    A new level's row starts at the 'unknown' row (the one covariate dropout trained for
    unseen levels); a gradient mask lets only that row move, and an L2 pull towards its
    start acts as a prior that dominates with few controls.
    """
    import torch  # here only: planning an adaptation and scoring need no torch

    from normcore.diffusion.sampler import q_sample, v_target

    table = net.cond.categories[k]
    start_row = table.weight[code if readapted else 0].detach().clone()
    if not readapted:
        grown = torch.nn.Embedding(table.num_embeddings + 1, table.embedding_dim)
        with torch.no_grad():
            grown.weight[:-1] = table.weight
            grown.weight[-1] = start_row
        net.cond.categories[k] = table = grown
    for p in net.parameters():
        p.requires_grad_(False)
    table.weight.requires_grad_(True)
    only_row = torch.zeros(table.num_embeddings, 1)
    only_row[code] = 1.0
    hook = table.weight.register_hook(lambda grad: grad * only_row)
    y = torch.as_tensor(scores, dtype=torch.float32)
    age, codes_t = torch.as_tensor(age_z), torch.as_tensor(codes)
    alpha_bar = torch.as_tensor(schedule.alpha_bar, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed + 11)
    opt = torch.optim.Adam([table.weight], lr=1e-2)
    net.eval()
    try:
        for step in range(steps):
            idx = torch.randint(0, len(y), (BATCH,), generator=g)
            t = torch.randint(0, schedule.steps, (BATCH,), generator=g)
            noise = torch.randn(BATCH, y.shape[1], generator=g)
            h = net.embed(age[idx], codes_t[idx])
            v = net(q_sample(y[idx], t, noise, alpha_bar), t, h)
            prior = torch.sum((table.weight[code] - start_row) ** 2) / len(y)
            target = v_target(y[idx], t, noise, alpha_bar)
            loss = torch.mean((v - target) ** 2) + PRIOR * prior
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
        for p in net.parameters():
            p.requires_grad_(True)
