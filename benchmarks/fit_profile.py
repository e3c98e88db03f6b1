"""Where a fit's time goes, and what the denoiser's training length buys (issue 19 item 1,
issue 17's conditional-centile target).

A fit is timed by stage (CPU and wall seconds): the first stage (its fits, transforms and
the new-person spread), the denoiser's training, the calibration (the sampler's moment
corrections and the deviation's calibration) and the reference table; the rest (checks,
encoding) is "other". The stages are timed by wrapping the functions `normcore.model`
calls, outermost call only, so a stage nested in another is counted once.

Each run fits one training setting (`TrainConfig`: max_steps, patience, batch) on the
subgroup truth (`SyntheticSpec(n_idps=D, dependence="subgroup")`, 3,000 training people,
seed 1) and measures, on the first `--people` of the 1,000 held-out people (seed 2):
- the conditional centiles given 5 IDPs against the exact conditional CDF, and the
  Gaussian copula's over the model's own z-scores (`joint.conditional`, the joint
  benchmark's own function, so the figures mean the same);
- the plain centiles against the exact marginal CDF (mean |centile - true|, points).
The choice of the default training length is read from these runs (results/fit_profile.md).

    python benchmarks/fit_profile.py run LABEL [--max-steps N] [--patience N] [--batch N]
        [--dims 20] [--truth subgroup|copula] [--people 300] [--code TEXT]
    python benchmarks/fit_profile.py ensemble LABEL [--seeds 0,1,2,3]   # fits' variance
    python benchmarks/fit_profile.py step [--steps 400]   # ms per training step, both backbones
    python benchmarks/fit_profile.py report      # results/fit_profile.md from the runs

Runs accumulate in results/fit_profile.json (one heavy fit per command, so that a CPU
shared with other jobs runs one at a time); `--json` writes elsewhere. In that file,
"profiled" (run labels) chooses the runs of the stage table (default: all) and "notes"
(lines) is the reading of the figures written under the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import common
import joint
import numpy as np
import torch
from common import log

from normcore import model as model_module
from normcore import train as train_module
from normcore.config import ModelConfig, TrainConfig
from normcore.diffusion import Schedule
from normcore.first_stage import FirstStage
from normcore.joint import DenoiserSpec, JointModel
from normcore.model import NormativeModel
from normcore.schema import Schema
from normcore.synthetic import SyntheticSpec, idp_names, simulate, true_conditional_cdf
from normcore.train import train_denoiser, validation_split

N_TRAIN, N_TEST = 3000, 1000
TRAIN_SEED, TEST_SEED = joint.TRAIN_SEED, joint.TEST_SEED
STAGES = ("first stage", "training", "calibration", "reference table")
DEFAULT_JSON = common.RESULTS / "fit_profile.json"


class StageClock:
    """CPU and wall seconds per stage of a fit, from wrapped functions (outermost call only:
    a first-stage fit inside the calibration counts as calibration)."""

    def __init__(self) -> None:
        self.cpu = dict.fromkeys(STAGES, 0.0)
        self.wall = dict.fromkeys(STAGES, 0.0)
        self._depth = 0

    def wrap(self, stage: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            c0, w0 = time.process_time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu[stage] += time.process_time() - c0
                self.wall[stage] += time.perf_counter() - w0
                self._depth -= 1

        return timed


def _patch(clock: StageClock) -> list[tuple[object, str, Callable]]:
    """Wrap what `NormativeModel.fit` calls; returns what to restore."""
    targets = [
        (FirstStage, "fit", "first stage"),
        (FirstStage, "transform", "first stage"),
        (model_module, "fit_model_stages", "first stage"),
        (train_module, "train_denoiser", "training"),  # imported by fit when it runs
        (JointModel, "calibrate", "calibration"),
        (model_module, "_calibrate_deviation", "calibration"),
        (model_module, "build_reference", "reference table"),
    ]
    saved = []
    for owner, name, stage in targets:
        original = owner.__dict__[name]
        saved.append((owner, name, original))
        fn = original.__func__ if isinstance(original, classmethod) else original
        wrapped = clock.wrap(stage, fn)
        setattr(owner, name, classmethod(wrapped) if isinstance(original, classmethod) else wrapped)
    return saved


def timed_fit(model: NormativeModel, train, schema: Schema, keep_outliers: bool) -> dict:
    """Fit `model` and return its CPU/wall seconds in total and by stage."""
    clock = StageClock()
    saved = _patch(clock)
    try:
        c0, w0 = time.process_time(), time.perf_counter()
        model.fit(train, schema, keep_outliers=keep_outliers)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
    stages = {s: {"cpu": clock.cpu[s], "wall": clock.wall[s]} for s in STAGES}
    stages["other"] = {
        "cpu": cpu - sum(clock.cpu.values()),
        "wall": wall - sum(clock.wall.values()),
    }
    return {"fit_cpu": cpu, "fit_wall": wall, "stages": stages}


def _settings(text: str) -> dict:
    """'name=value,...' as a dict of numbers (TrainConfig fields or network sizes)."""
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    return {k: int(v) if v.lstrip("-").isdigit() else float(v) for k, v in pairs}


def _data(args: argparse.Namespace) -> tuple:
    """The truth, its training people, the first `--people` held-out people and the schema."""
    spec = SyntheticSpec(n_idps=args.dims, dependence=args.truth)
    train = simulate(spec, N_TRAIN, seed=TRAIN_SEED)
    test = simulate(spec, N_TEST, seed=TEST_SEED).iloc[: args.people].reset_index(drop=True)
    return spec, train, test, Schema("age", ("sex", "site"), tuple(idp_names(spec)), "subject_id")


def run(args: argparse.Namespace) -> dict:
    spec, train, test, schema = _data(args)
    model = NormativeModel(backbone=args.backbone, seed=args.seed, gaussian_prior=args.prior)
    defaults = model.config.train
    settings = dataclasses.replace(
        defaults,
        max_steps=args.max_steps or defaults.max_steps,
        patience_steps=args.patience or defaults.patience_steps,
        batch_size=args.batch or defaults.batch_size,
        **_settings(args.train),
    )
    network = {**model.config.network, **_settings(args.network)}
    model.config = dataclasses.replace(model.config, train=settings, network=network)
    log(f"{args.label}: fit {args.dims} IDPs ({args.truth}), {settings}")
    out = {
        "label": args.label,
        "code": args.code,
        "backbone": args.backbone,
        "gaussian_prior": args.prior,
        "seed": args.seed,
        "dims": args.dims,
        "truth": args.truth,
        "people": len(test),
        "train": settings.to_dict(),
        "network": network,
        "keep_outliers": args.keep_outliers,
        **timed_fit(model, train, schema, args.keep_outliers),
    }
    history = model.history_
    best = min(history, key=lambda h: h["val_loss"])
    out |= {"steps": history[-1]["step"], "best_step": best["step"]}
    out["val_loss"] = best["val_loss"]
    out["history"] = [{"step": h["step"], "val_loss": h["val_loss"]} for h in history]
    log(f"{args.label}: fitted, {out['fit_cpu']:.0f} s CPU, {out['steps']} steps")
    pit = common.pit_matrix(model.score(test), model.idps, len(test))
    truth = true_conditional_cdf(spec, test, [])
    out["plain_err"] = 100 * float(np.nanmean(np.abs(pit - truth)))
    if model.joint_.conditional:
        train_z = joint._z(model, train)
        cond = joint.conditional(model, spec, test, train_z)
        out["given"] = cond["given"]
        out["cond_seconds"] = cond["seconds"]
        out["cond_err"] = cond["rows"][0]["centile_err"]
        out["cond_pit_ks"] = cond["rows"][0]["pit_ks"]
        out["copula_err"] = cond["rows"][1]["centile_err"]
    log(f"{args.label}: {json.dumps({k: v for k, v in out.items() if 'err' in k})}")
    return out


def ensemble(args: argparse.Namespace) -> dict:
    """Conditional error of default fits with each of `--seeds`, and of the mixture of the
    first k of them (the average of their conditional CDFs, which is what a k-network
    ensemble sharing the draws would give): how much of the error is one fit's variance,
    which averaging removes, and how much is left in every fit."""
    spec, train, test, schema = _data(args)
    given = joint.given_idps(idp_names(spec))
    truth = true_conditional_cdf(spec, test, given)
    free = ~np.isin(np.array(idp_names(spec)), given)

    def error(p: np.ndarray) -> float:
        return 100 * float(np.nanmean(np.abs(p[:, free] - truth[:, free])))

    seeds = [int(s) for s in args.seeds.split(",")]
    pits = []
    for seed in seeds:
        model = NormativeModel(backbone=args.backbone, seed=seed)
        model.fit(train, schema, keep_outliers=args.keep_outliers)
        pits.append(common.pit_matrix(model.score(test, given=given), model.idps, len(test)))
        log(f"{args.label}: seed {seed}: {error(pits[-1]):.2f}")
    return {
        "label": args.label,
        "code": args.code,
        "backbone": args.backbone,
        "dims": args.dims,
        "truth": args.truth,
        "people": len(test),
        "seeds": seeds,
        "single": [error(p) for p in pits],
        "mixture": [error(np.mean(pits[:k], axis=0)) for k in range(1, len(pits) + 1)],
    }


def step_cost(backbone: str, steps: int, dims: int = 20, n: int = 3000) -> dict:
    """CPU ms per optimiser step of `train_denoiser` (validation included) on random scores:
    the loop's own cost, whatever the data, with early stopping off, on one thread as a fit,
    for the network a fit of the model's default settings builds."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    y = rng.normal(size=(n, dims))
    age, codes = rng.normal(size=n), np.stack([rng.integers(1, 3, n), rng.integers(1, 4, n)], 1)
    config = TrainConfig(max_steps=steps, patience_steps=steps)
    val_rows, train_rows = validation_split(n, config, 0)
    cost = {}
    for label, count in (("warm-up", 20), ("timed", steps)):
        torch.manual_seed(0)
        net = DenoiserSpec.of(ModelConfig(backbone=backbone), dims, [3, 4]).untrained()
        c0 = time.process_time()
        train_denoiser(
            net, Schedule("cosine", 1000), y, age, codes,
            dataclasses.replace(config, max_steps=count), val_rows, train_rows,
        )  # fmt: skip
        cost[label] = time.process_time() - c0
    ms = 1000 * cost["timed"] / steps
    log(f"{backbone}: {ms:.1f} ms CPU per step over {steps} steps")
    return {"backbone": backbone, "dims": dims, "steps": steps, "ms_per_step": ms}


def _stage_rows(runs: list[dict]) -> list[dict]:
    rows = []
    for r in runs:
        row = {"run": r["label"], "steps": r["steps"]}
        for stage in (*STAGES, "other"):
            row[stage] = f"{r['stages'][stage]['cpu']:.1f} ({r['stages'][stage]['wall']:.1f})"
        row["fit"] = f"{r['fit_cpu']:.1f} ({r['fit_wall']:.1f})"
        rows.append(row)
    return rows


def _network(run: dict) -> str:
    """The run's backbone and the sizes it set ('saint: width 16, heads 2')."""
    sizes = ", ".join(f"{k} {v}" for k, v in run.get("network", {}).items())
    return f"{run.get('backbone', 'film')}" + (f": {sizes}" if sizes else "")


def _sweep_rows(runs: list[dict]) -> list[dict]:
    return [
        {
            "run": r["label"],
            "code": r["code"],
            "network": _network(r),
            "truth": f"{r['truth']} {r['dims']}",
            "max_steps": r["train"]["max_steps"],
            "patience": r["train"]["patience_steps"],
            "batch": r["train"]["batch_size"],
            "final_lr": r["train"].get("final_lr_fraction", 1.0),
            "steps": r["steps"],
            "best_step": r["best_step"],
            "cond_err": r.get("cond_err", float("nan")),
            "copula_err": r.get("copula_err", float("nan")),
            "cond_pit_ks": r.get("cond_pit_ks", float("nan")),
            "plain_err": r["plain_err"],
            "train_cpu": r["stages"]["training"]["cpu"],
            "fit_cpu": r["fit_cpu"],
        }
        for r in runs
    ]


def _ensemble_part(entries: list[dict]) -> list[str]:
    """The ensemble runs' table (nothing without runs)."""
    if not entries:
        return []
    rows = [
        {
            "run": e["label"],
            "code": e["code"],
            "fits": f"{e['backbone']}, {e['truth']} {e['dims']}, seeds "
            + ", ".join(map(str, e["seeds"])),
            "single": ", ".join(f"{v:.2f}" for v in e["single"]),
            "mixture": ", ".join(f"{v:.2f}" for v in e["mixture"]),
        }
        for e in entries
    ]
    return [
        "### Fits of several seeds, and their mixtures",
        "",
        "`fit_profile.py ensemble`: the conditional error (`cond_err`) of default fits with "
        "each seed, and of the mixture of the first 1, 2, ... of them (their conditional "
        "CDFs averaged, each from its own 400 draws).",
        "",
        common.markdown_table(
            rows,
            [("run", "run"), ("code", "code"), ("fits", "fits"), ("single", "each fit"),
             ("mixture", "mixture of the first 1, 2, ...")],
        ),  # fmt: skip
        "",
    ]


def markdown(data: dict) -> str:
    runs = data["runs"]
    people = sorted({r["people"] for r in runs})
    notes = data.get("notes", [])
    profiled = data.get("profiled")
    parts = [
        "## Fit profile (`benchmarks/fit_profile.py`, issue 19 item 1)",
        "",
        "Where a fit's time goes, by stage, in CPU seconds (wall in brackets), one thread, "
        "on the CPU shared by the team; the subgroup truth, 3,000 training people. "
        f"Errors are on the first {', '.join(map(str, people))} of the 1,000 held-out people "
        "(seed 2), in centile points: `cond_err` is mean |conditional centile - exact| "
        "given idp_000, 004, 008, 012, 016 (the joint benchmark's function), `copula_err` "
        "the same for a Gaussian copula over the model's z-scores, `plain_err` mean "
        "|centile - exact| with nothing given.",
        "",
        "### Time by stage",
        "",
        common.markdown_table(
            _stage_rows([r for r in runs if profiled is None or r["label"] in profiled]),
            [("run", "run"), ("steps", "steps")]
            + [(s, s) for s in (*STAGES, "other")]
            + [("fit", "fit")],
        ),
        "",
        "### Per training step",
        "",
        common.markdown_table(
            [{"dims": 20, **row} for row in data.get("per_step", [])],
            [
                ("code", "code"),
                ("backbone", "backbone"),
                ("dims", "IDPs"),
                ("steps", "steps timed"),
                ("ms_per_step", "CPU ms per step"),
            ],
        ),  # fmt: skip
        "",
        "### Training length",
        "",
        common.markdown_table(
            _sweep_rows(runs),
            [
                ("run", "run"),
                ("code", "code"),
                ("network", "network (sizes set)"),
                ("truth", "truth, IDPs"),
                ("max_steps", "max_steps"),
                ("patience", "patience"),
                ("batch", "batch"),
                ("final_lr", "final lr"),
                ("steps", "steps run"),
                ("best_step", "best step"),
                ("cond_err", "cond_err"),
                ("copula_err", "copula_err"),
                ("cond_pit_ks", "cond PIT KS"),
                ("plain_err", "plain_err"),
                ("train_cpu", "training CPU s"),
                ("fit_cpu", "fit CPU s"),
            ],
        ),
        "",
        *_ensemble_part(data.get("ensembles", [])),
        *notes,
        "",
        "Commands: " + "; ".join(f"`{c}`" for c in data.get("commands", [])),
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("run", "ensemble", "step", "report"))
    p.add_argument("--steps", type=int, default=400, help="step: FiLM steps (SAINT: a quarter)")
    p.add_argument("label", nargs="?", default="")
    p.add_argument("--max-steps", type=int, default=0, help="0 = the package default")
    p.add_argument("--patience", type=int, default=0, help="0 = the package default")
    p.add_argument("--batch", type=int, default=0, help="0 = the package default")
    p.add_argument("--train", default="", help="other TrainConfig fields: name=value,...")
    p.add_argument("--network", default="", help="network sizes: width=64,dropout=0.1,...")
    p.add_argument("--dims", type=int, default=20)
    p.add_argument("--truth", default="subgroup")
    p.add_argument("--backbone", default="film")
    p.add_argument("--prior", action="store_true", help="run: with the Gaussian prior")
    p.add_argument("--seed", type=int, default=0, help="run: the model's seed")
    p.add_argument("--seeds", default="0,1,2,3", help="ensemble: the fits' seeds")
    p.add_argument("--people", type=int, default=300)
    p.add_argument(
        "--keep-outliers",
        action="store_true",
        help="fit on simulated values the training checks call far out (they are the truth's)",
    )
    p.add_argument("--code", default="", help="what code the run measured (commit)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = p.parse_args(argv)
    data = json.loads(args.json.read_text()) if args.json.exists() else {"runs": []}
    if args.command == "run":
        if not args.label:
            p.error("run needs a LABEL")
        result = run(args)
        data["runs"] = [r for r in data["runs"] if r["label"] != args.label] + [result]
        data.setdefault("commands", []).append("fit_profile.py " + shlex.join(argv))
        args.json.write_text(json.dumps(data, indent=2, default=common._json_default))
        return 0
    if args.command == "ensemble":
        if not args.label:
            p.error("ensemble needs a LABEL")
        result = ensemble(args)
        kept = [e for e in data.get("ensembles", []) if e["label"] != args.label]
        data["ensembles"] = kept + [result]
        data.setdefault("commands", []).append("fit_profile.py " + shlex.join(argv))
        args.json.write_text(json.dumps(data, indent=2, default=common._json_default))
        return 0
    if args.command == "step":
        for backbone, steps in (("film", args.steps), ("saint", args.steps // 4)):
            row = {"code": args.code, **step_cost(backbone, steps, args.dims)}
            data.setdefault("per_step", []).append(row)
        args.json.write_text(json.dumps(data, indent=2, default=common._json_default))
        return 0
    common.write_section("fit_profile", markdown(data), data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
