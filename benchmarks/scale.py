"""Scaling evidence: fit time and calibration as people and IDPs grow; scoring time and
peak memory as cohorts grow; throughput figures for extrapolating to UK-Biobank sizes.

Every measurement runs in its own subprocess (so peak memory, VmHWM from
/proc/self/status, is that run's alone) with one torch thread (NORMCORE_THREADS=1), one
at a time, because the machine is a shared 2-core CPU.

    python benchmarks/scale.py fit    [--people 1000,5000,20000,50000] [--idps 2,20,100,200]
    python benchmarks/scale.py score  [--cohorts 1000,10000,100000]
    python benchmarks/scale.py report          # markdown from benchmarks/results/scale.json

Fits are bounded (`--steps` optimiser steps, `--reference-samples` per level combination)
so the grid completes; the default network (FiLM-MLP), batch and sampling steps are kept,
so the measured throughputs are those of a real fit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "results" / "scale.json"
N_SITES = 3
TEST_PEOPLE = 2_000


def peak_mb() -> float:
    """This process's peak resident memory (VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _spec(n_idps: int):
    from normcore.synthetic import SyntheticSpec

    return SyntheticSpec(n_idps=n_idps, n_sites=N_SITES)


def _flops_per_row(net) -> tuple[float, float]:
    """Multiply-add FLOPs per row of one denoiser forward: (per sampling step, covariates).

    The covariate embedding is computed once per person and sampling run, the rest at
    every step; training pays both plus about twice as much again for the backward pass.
    """
    from torch import nn

    def linear_flops(module) -> float:
        return sum(2.0 * m.in_features * m.out_features for m in module.modules()
                   if isinstance(m, nn.Linear))  # fmt: skip

    embed = linear_flops(net.cond.age)
    return linear_flops(net) - embed, embed


def one_fit(people: int, idps: int, steps: int, reference_samples: int) -> dict:
    from normcore.model import NormativeModel
    from normcore.synthetic import simulate, true_cdf

    spec = _spec(idps)
    train, test = simulate(spec, people, seed=1), simulate(spec, TEST_PEOPLE, seed=2)
    model = NormativeModel(reference_samples=reference_samples)
    cfg = model.config
    model.config = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, max_steps=steps, patience_steps=steps)
    )
    start = time.perf_counter()
    model.fit(train)
    fit_s = time.perf_counter() - start
    loop_s = model.history[-1]["seconds"]
    done = model.history[-1]["step"]
    batch = min(cfg.train.batch_size, people)
    start = time.perf_counter()
    centiles = model.score(test)["centile"].to_numpy().reshape(len(test), -1) / 100
    score_s = time.perf_counter() - start
    err = np.abs(centiles - true_cdf(spec, test))
    n_combo = int(np.prod(model.encoder_.n_levels))
    sample_rows = n_combo * reference_samples
    reference_s = fit_s - model.train_seconds_
    step_flops, _ = _flops_per_row(model.joint_.net)
    return {
        "people": people,
        "idps": idps,
        "steps": done,
        "batch": batch,
        "fit_s": fit_s,
        "train_loop_s": loop_s,
        "train_row_steps_per_s": done * batch / loop_s,
        "reference_s": reference_s,
        "level_combinations": n_combo,
        "reference_samples": reference_samples,
        "sample_row_steps_per_s": sample_rows * cfg.sampling_steps / reference_s,
        "flops_per_row_step": step_flops,
        "score_s_per_1k_people": 1000 * score_s / len(test),
        "mean_abs_centile_error": float(err.mean()),
        "p95_abs_centile_error": float(np.quantile(err, 0.95)),
        "val_loss": model.history[-1]["val_loss"],
        "peak_mb": peak_mb(),
    }


def one_score(model_path: str, table: str, mode: str, chunk_rows: int) -> dict:
    from normcore.data import read_table
    from normcore.model import NormativeModel
    from normcore.stream import score_file

    model = NormativeModel.load(model_path, device="cpu")
    out = Path(tempfile.mkdtemp()) / "scores.csv"
    start = time.perf_counter()
    if mode == "stream":
        rows = score_file(model, table, out, chunk_rows=chunk_rows).rows
    else:
        df = read_table(table)
        model.score(df).to_csv(out, index=False)
        rows = len(df)
    seconds = time.perf_counter() - start
    size = out.stat().st_size
    out.unlink()
    return {"people": rows, "mode": mode, "seconds": seconds, "peak_mb": peak_mb(),
            "out_mb": size / 1e6, "idps": len(model.idps)}  # fmt: skip


def _child(*args: str) -> dict:
    env = {**os.environ, "NORMCORE_THREADS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "_child", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _load() -> dict:
    return json.loads(OUT.read_text()) if OUT.exists() else {}


def _save(results: dict) -> None:
    """The raw numbers and their markdown section (read by `common.assemble`)."""
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1))
    OUT.with_suffix(".md").write_text(report(results).rstrip() + "\n")


def run_fits(people: list[int], idps: list[int], steps: int, ref: int, base: tuple) -> None:
    results = _load()
    grid = [(n, base[1]) for n in people] + [(base[0], d) for d in idps if d != base[1]]
    fits = {(r["people"], r["idps"]): r for r in results.get("fits", [])}
    for n, d in grid:
        print(f"fit {n} people x {d} IDPs ...", file=sys.stderr, flush=True)
        fits[(n, d)] = _child("fit", str(n), str(d), str(steps), str(ref))
        print(f"  {fits[(n, d)]['fit_s']:.0f}s", file=sys.stderr, flush=True)
        results["fits"] = sorted(fits.values(), key=lambda r: (r["idps"], r["people"]))
        results["fit_settings"] = {"steps": steps, "reference_samples": ref,
                                   **_default_settings(), "sites": N_SITES,
                                   "threads": 1, "test_people": TEST_PEOPLE}  # fmt: skip
        _save(results)


def _default_settings() -> dict:
    """The package defaults a fit here runs with (network, batch, sampling steps)."""
    import inspect

    from normcore.denoisers.film_mlp import FiLMMLP
    from normcore.model import ModelConfig

    net = inspect.signature(FiLMMLP).parameters
    config = ModelConfig()
    return {
        "network": f"film width {net['width'].default} depth {net['depth'].default}",
        "batch": config.train.batch_size,
        "sampling_steps": config.sampling_steps,
    }


def run_scores(cohorts: list[int], idps: int, chunk_rows: int) -> None:
    from normcore.model import NormativeModel
    from normcore.synthetic import simulate

    results = _load()
    spec = _spec(idps)
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "m.normcore"
        small = dict(reference_samples=2000, network=dict(width=64, depth=2), max_epochs=5)
        NormativeModel(**small).fit(simulate(spec, 2000, seed=1)).save(model_path)
        rows = []
        for n in cohorts:
            table = Path(tmp) / f"cohort_{n}.csv"
            simulate(spec, n, seed=5).to_csv(table, index=False)
            for mode in ("stream", "whole"):
                print(f"score {n} people ({mode}) ...", file=sys.stderr, flush=True)
                rows.append(_child("score", str(model_path), str(table), mode, str(chunk_rows)))
                rows[-1]["input_mb"] = table.stat().st_size / 1e6
            table.unlink()
    results["scores"] = rows
    results["score_settings"] = {"idps": idps, "chunk_rows": chunk_rows, "threads": 1}
    _save(results)


GPU_FLOPS = 10e12
"""Assumed sustained FLOP/s of one A100-class GPU on these matmuls at sampling batch sizes
(8,192 rows; TF32/bf16 peak is 156/312 TFLOP/s, so this is deliberately modest)."""
GPU_STEP_S = 0.004
"""Assumed wall time of one training step at batch 256 on a GPU: about 60 small kernels
(forward, backward, AdamW, EMA), latency-bound; the arithmetic itself is ~0.2 ms."""
STARTUP_S = 10.0
"""Assumed start-up per fit: imports, CUDA context, process group."""


def estimate(results: dict) -> list[str]:
    """UK-Biobank-sized fit costs from the measured throughputs (see the assumptions)."""
    wide = max(results["fits"], key=lambda r: (r["idps"], r["people"]))
    train_rate, sample_rate = wide["train_row_steps_per_s"], wide["sample_row_steps_per_s"]
    flops = wide["flops_per_row_step"]
    combos = 3 * 5  # sex (2 + unknown) x site (4 assessment centres + unknown)
    steps, batch = 8000, 256  # the default step cap: training does not grow with people
    lines = [
        f"Measured at {wide['people']:,} people x {wide['idps']} IDPs, one CPU thread: "
        f"training {train_rate:,.0f} row-steps/s, sampling {sample_rate:,.0f} row-steps/s "
        f"({flops / 1e6:.2f} MFLOP per row and sampling step, about "
        f"{sample_rate * flops / 1e9:.0f} GFLOP/s sustained).",
        "",
        "| fit | stage | work (row-steps) | 1 CPU thread (measured rate) | 1 GPU (est.) "
        "| 4 GPUs (est.) |",
        "|---|---|---|---|---|---|",
    ]
    for people in (40_000, 100_000):
        stages = {
            "training": (steps * batch, steps * batch / train_rate, steps * GPU_STEP_S, 1),
            "sampler variance": ((x0 := 0.15 * people * 50 * 4), x0 / sample_rate,
                                 x0 * flops / GPU_FLOPS, 1),
            "reference table": ((ref := combos * 20_000 * 50), ref / sample_rate,
                                ref * flops / GPU_FLOPS, -(-combos // 4) / combos),
        }  # fmt: skip
        total = [STARTUP_S, STARTUP_S, STARTUP_S]
        for name, (work, cpu, gpu, share) in stages.items():
            total = [total[0] + cpu, total[1] + gpu, total[2] + gpu * share]
            lines.append(
                f"| {people:,} x {wide['idps']} | {name} | {work / 1e6:.1f} M | "
                f"{cpu / 60:.1f} min | {gpu:.0f} s | {gpu * share:.0f} s |"
            )
        lines.append(
            f"| {people:,} x {wide['idps']} | **total** | | **{total[0] / 3600:.1f} h** | "
            f"**{total[1] / 60:.1f} min** | **{total[2] / 60:.1f} min** |"
        )
    return lines


def report(results: dict) -> str:
    s = results["fit_settings"]
    out = [
        "## Scale (`benchmarks/scale.py`, issue 7)",
        "",
        f"Shared 2-core CPU, one torch thread per run, one run at a time. Fits are bounded to "
        f"{s['steps']} optimiser steps (batch {s['batch']}) and {s['reference_samples']:,} "
        f"reference samples per level combination ({s['sites']} sites x 2 sexes, unknown "
        f"levels included); the network is the default ({s['network']}, "
        f"{s['sampling_steps']} sampling steps). Calibration: mean |centile - true centile| "
        f"(0-1 scale) on {s['test_people']:,} new synthetic people, at this fixed step "
        "budget (an undertrained model: compare rows, not with full fits).",
        "",
        "| people | IDPs | fit s | train loop s | reference s | train row-steps/s | "
        "sample row-steps/s | mean abs centile err | peak MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["fits"]:
        out.append(
            f"| {r['people']:,} | {r['idps']} | {r['fit_s']:.0f} | {r['train_loop_s']:.0f} | "
            f"{r['reference_s']:.0f} | {r['train_row_steps_per_s']:,.0f} | "
            f"{r['sample_row_steps_per_s']:,.0f} | {r['mean_abs_centile_error']:.3f} | "
            f"{r['peak_mb']:.0f} |"
        )
    if "scores" in results:
        c = results["score_settings"]
        out += [
            "",
            f"Scoring {c['idps']} IDPs (CSV in, long CSV out; `stream` = "
            f"`normcore.stream.score_file` in chunks of {c['chunk_rows']:,} rows, `whole` = "
            "read_table + score + to_csv). Peak memory is the process's VmHWM, "
            "Python and torch included.",
            "",
            "| people | mode | seconds | peak MB | input MB | output MB |",
            "|---|---|---|---|---|---|",
        ]
        for r in results["scores"]:
            out.append(
                f"| {r['people']:,} | {r['mode']} | {r['seconds']:.1f} | {r['peak_mb']:.0f} | "
                f"{r['input_mb']:.0f} | {r['out_mb']:.0f} |"
            )
    if results.get("fits"):
        out += ["", "### What a UK-Biobank-sized fit costs (extrapolated)", ""]
        out += estimate(results)
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("fit", "score", "report", "_child"))
    parser.add_argument("rest", nargs="*")
    parser.add_argument("--people", default="1000,5000,20000,50000")
    parser.add_argument("--idps", default="2,20,100,200")
    parser.add_argument("--base", default="5000,20", help="people,IDPs held fixed")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--reference-samples", type=int, default=1000)
    parser.add_argument("--cohorts", default="1000,10000,100000")
    parser.add_argument("--chunk-rows", type=int, default=10_000)
    args = parser.parse_args()
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    if args.part == "_child":
        kind, *rest = args.rest
        if kind == "fit":
            result = one_fit(*map(int, rest))
        else:
            result = one_score(rest[0], rest[1], rest[2], int(rest[3]))
        print(json.dumps(result))
    elif args.part == "fit":
        run_fits(ints(args.people), ints(args.idps), args.steps, args.reference_samples,
                 tuple(ints(args.base)))  # fmt: skip
    elif args.part == "score":
        run_scores(ints(args.cohorts), 20, args.chunk_rows)
    else:
        print(report(_load()))


if __name__ == "__main__":
    main()
