"""Shared helpers of the benchmark scripts: settings, timing, model cache, peers, tables.

Why one module: engine.py, compare.py and adapt.py must report machine, settings and
calibration numbers the same way, fit each normcore model once (a model fitted by
engine.py on the same data and code is reused by compare.py, which halves the full
run), and call the peer runner (peers.py, in its own venv) identically. Every metric
comes from `normcore.metrics`; this file only arranges inputs and formats outputs.

`python benchmarks/common.py assemble` writes benchmarks/RESULTS.md from the sections
the three scripts left in benchmarks/results/ (a section that did not run is named as such).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from normcore import metrics
from normcore.data import read_table
from normcore.model import NormativeModel
from normcore.schema import Schema

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
OUT = BENCH / "out"
"""Caches (fitted models, peer outputs, scratch tables): not tracked, safe to delete."""
RESULTS = BENCH / "results"
"""Each script's section of RESULTS.md and its raw numbers: tracked, so that rerunning one
script on a fresh checkout keeps the other sections."""
MODELS = OUT / "models"
PEER_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
PEERS = BENCH / "peers.py"
FCON_HALVES = (ROOT / "assets" / "demo" / "fcon1000_train.csv",
               ROOT / "assets" / "demo" / "fcon1000_test.csv")

QUICK = os.environ.get("BENCH_QUICK", "") == "1"
"""BENCH_QUICK=1: tiny data, few epochs, small reference tables: an end-to-end check of the
scripts in a few minutes, whose numbers mean nothing."""

SECTIONS = (
    "engine", "draws", "compare", "adapt", "joint", "deviation_by_age", "calibration_rules",
    "site_size", "one_law",
    "fcon_conditional", "conditional_speed", "fit_profile",
    "edges", "startup", "dashboard", "hostile",
)


def model_kwargs() -> dict:
    """NormativeModel settings of the benchmark: the package defaults (the point of the
    benchmark), or tiny ones under BENCH_QUICK."""
    if QUICK:
        return {"max_epochs": 2, "reference_samples": 400, "grid_points": 11}
    return {}


def threads_env() -> dict[str, str]:
    """Environment for child processes: one thread each, the CPU is shared."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("NORMCORE_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


def fcon_table() -> pd.DataFrame:
    """fcon1000's control sites with the demo's 47 IDPs, as one table in the public file's order.

    The repository holds the public fcon1000 table (README: origin, citation, licence) as
    the demo's two halves (normcore/demo.py: NewYork_a_ADHD dropped, the demo IDPs,
    `split_table(df, 0.5, "site", 0)`). Without that site the public file is sorted by
    `sub_id`, so sorting the halves' rows by `sub_id` gives back its rows in their order,
    and the same `split_table` call on the result gives back the two halves.
    """
    halves = [read_table(path) for path in FCON_HALVES]
    return pd.concat(halves, ignore_index=True).sort_values("sub_id", ignore_index=True)


# ---------------------------------------------------------------------------- machine


def machine_info() -> dict:
    """CPU, cores, RAM, OS, Python and key package versions, for the results header."""
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_gb = float("nan")
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gb = int(line.split()[1]) / 1024**2
                break
    import torch

    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "ram_gb": round(ram_gb, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "threads": {k: os.environ.get(k) for k in ("NORMCORE_THREADS", "OMP_NUM_THREADS")},
        "git_head": CODE_AT_START,
    }


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def git_head() -> str:
    """The commit the modelling code is at, marked when normcore/ has uncommitted changes."""
    try:
        head = _git("log", "-1", "--format=%h %s")
        dirty = _git("status", "--porcelain", "normcore")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes to normcore/)" if dirty else "")


CODE_AT_START = git_head()
"""Read when a script starts, so that a commit made while it runs is not credited to it."""


# ----------------------------------------------------------------------------- timing


@contextmanager
def timed(store: dict, key: str) -> Iterator[None]:
    """Wall time of the block into store[key] (seconds)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        store[key] = time.perf_counter() - t0


def log(msg: str) -> None:
    """Progress to stderr with a timestamp (runs are long; the log says where they are)."""
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------ model cache


NOT_MODEL_CODE = (
    "cli.py", "commands.py", "demo.py", "evaluate.py", "explore.py", "export.py", "figures",
    "idp_groups.py", "launch.py", "metrics.py", "report.py", "site_advice.py", "stream.py",
    "units.py", "__main__.py",
)  # fmt: skip
"""The normcore modules a fitted model does not depend on (the dashboard's, the CLI's and
the reports'). Every other module counts: listing the modules that do count once left
out joint.py, whose change did not invalidate the cached fits."""


def _code_hash() -> str:
    """Hash of the modelling sources: a cached model is reused only if that code is the
    same (the lead may change defaults in code, not only in ModelConfig)."""
    h = hashlib.sha256()
    package = ROOT / "normcore"
    for path in sorted(package.rglob("*.py")):
        if path.relative_to(package).parts[0] in NOT_MODEL_CODE:
            continue
        h.update(path.relative_to(ROOT).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _data_hash(df: pd.DataFrame, schema: Schema) -> str:
    cols = [schema.age, *schema.categorical, *schema.idps]
    h = hashlib.sha256(pd.util.hash_pandas_object(df[cols], index=False).to_numpy().tobytes())
    h.update(json.dumps(schema.to_dict(), sort_keys=True).encode())
    return h.hexdigest()[:16]


def fit_or_load(
    name: str, backbone: str, train: pd.DataFrame, schema: Schema, seed: int = 0,
    keep_outliers: bool = False, settings: dict | None = None,
) -> FitResult:  # fmt: skip
    """A fitted model for (data, schema, backbone, settings, code): loaded from
    out/models/ when an identical fit exists, else fitted and saved.

    Fit times were measured when the model was fitted: wall time is the model's own
    `fit_seconds_` (training + reference table); CPU time is this process's CPU seconds
    over the fit, which on a CPU shared with other jobs is the better estimate of the
    wall time the fit would take alone (one thread). `keep_outliers` is `fit`'s: a synthetic
    truth's far draws are real, not entry errors (it turns refusals into warnings only, so
    the fitted model, and the cache key, are the same). `settings` are NormativeModel
    settings on top of the benchmark's (a script measuring the demo's own, say).
    """
    kwargs = {**model_kwargs(), **(settings or {})}
    probe = NormativeModel(backbone=backbone, seed=seed, **kwargs)
    key = hashlib.sha256(
        json.dumps(
            {
                "data": _data_hash(train, schema),
                "config": probe.config.to_dict(),
                "code": _code_hash(),
            },
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()[:12]
    MODELS.mkdir(parents=True, exist_ok=True)
    path = MODELS / f"{name}_{backbone}_{key}.normcore"
    sidecar = path.with_suffix(".json")
    if path.exists() and sidecar.exists():
        model = NormativeModel.load(path)
        cpu = json.loads(sidecar.read_text())["fit_cpu_seconds"]
        return FitResult(model, model.fit_seconds, cpu, True, path)
    log(f"fit {name} {backbone} ({len(train)} rows x {len(schema.idps)} IDPs)")
    cpu0 = time.process_time()
    model = probe.fit(train, schema, keep_outliers=keep_outliers)
    cpu = time.process_time() - cpu0
    model.save(path)
    sidecar.write_text(json.dumps({"fit_cpu_seconds": cpu, "fit_seconds": model.fit_seconds}))
    log(f"fitted {name} {backbone} in {model.fit_seconds:.0f}s wall, {cpu:.0f}s CPU")
    return FitResult(model, model.fit_seconds, cpu, False, path)


@dataclass
class FitResult:
    model: NormativeModel
    fit_seconds: float
    fit_cpu_seconds: float
    reused: bool
    path: Path


# ------------------------------------------------------------------------ calibration


def pit_matrix(scores: pd.DataFrame, idps: Sequence[str], n: int) -> np.ndarray:
    """A long `score()`-style table (row, idp, centile) as an (n, D) PIT matrix (centile/100)."""
    wide = scores.pivot(index="row", columns="idp", values="centile")
    return wide.reindex(index=range(n), columns=list(idps)).to_numpy(dtype=float) / 100.0


def z_matrix(scores: pd.DataFrame, idps: Sequence[str], n: int) -> np.ndarray:
    """The same table's normal scores z as an (n, D) matrix."""
    wide = scores.pivot(index="row", columns="idp", values="z")
    return wide.reindex(index=range(n), columns=list(idps)).to_numpy(dtype=float)


def calibration(pit: np.ndarray, ages: np.ndarray) -> dict:
    """Marginal calibration of held-out PIT values, with normcore.metrics:
    ace (paper's ACE, equal-count age bins), cov95 (mean over IDPs of empirical - 0.95
    coverage of the central 95% interval), cov95_abs (mean over IDPs of its absolute
    value), ks (mean over IDPs of the one-sample KS statistic vs U(0,1)).
    IDPs without values (a peer's failed IDP) are left out."""
    keep = np.isfinite(pit).any(axis=0)
    pit = pit[:, keep]
    if pit.shape[1] == 0:
        return {"ace": np.nan, "cov95": np.nan, "cov95_abs": np.nan, "ks": np.nan, "n_idps": 0}
    cov = metrics.coverage(pit, nominal=(0.95,))
    return {
        "ace": metrics.ace_summary(pit, ages),
        "cov95": float(cov["error"].mean()),
        "cov95_abs": float(cov["error"].abs().mean()),
        "ks": float(metrics.ks_uniform(pit)["statistic"].mean()),
        "n_idps": int(pit.shape[1]),
    }


def ks_noise(n: int) -> float:
    """Expected one-sample KS statistic of n uniform values (the sampling noise of n):
    the mean of the Kolmogorov distribution / sqrt(n) = sqrt(pi/2) ln 2 / sqrt(n)."""
    return math.sqrt(math.pi / 2) * math.log(2) / math.sqrt(n)


def ks_critical(n: int, alpha: float = 0.05) -> float:
    """The KS statistic a uniform sample of n exceeds with probability alpha."""
    return float(stats.kstwo.ppf(1 - alpha, n))


# ------------------------------------------------------------------------------ peers


def run_peer(
    model: str,
    train_csv: Path,
    test_csv: Path,
    idps: Sequence[str],
    out_csv: Path,
    extra: Sequence[str] = (),
    timeout: float | None = None,
) -> dict:
    """Run peers.py in the benchmark venv (one subprocess, one thread) and return its
    JSON summary, or {"error": ...} if it could not run. Reuses an existing output whose
    JSON records the same inputs (a resumed run does not refit peers)."""
    summary_path = out_csv.with_suffix(".json")
    args = [
        str(PEER_PYTHON),
        str(PEERS),
        "--model",
        model,
        "--train",
        str(train_csv),
        "--test",
        str(test_csv),
        "--idps",
        ",".join(idps),
        "--out",
        str(out_csv),
        *extra,
    ]
    signature = hashlib.sha256(
        "\0".join(
            [*args[2:], _file_hash(train_csv), _file_hash(test_csv), _file_hash(PEERS)]
        ).encode()
    ).hexdigest()[:16]
    stamp = out_csv.with_suffix(".signature")
    if summary_path.exists() and stamp.exists() and stamp.read_text() == signature:
        return json.loads(summary_path.read_text())
    if not PEER_PYTHON.exists():
        return {"error": f"benchmark venv missing ({PEER_PYTHON}); see benchmarks/README.md"}
    log(f"peer {model} on {train_csv.parent.name} ({len(idps)} IDPs) {' '.join(extra)}")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            args, env=threads_env(), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    log(f"peer {model} done in {time.perf_counter() - t0:.0f}s (exit {proc.returncode})")
    (out_csv.parent / f"{out_csv.stem}.log").write_text(proc.stderr)
    if not summary_path.exists():
        return {"error": f"peers.py exit {proc.returncode}: {proc.stderr.strip()[-300:]}"}
    stamp.write_text(signature)
    return json.loads(summary_path.read_text())


def _file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def peer_centiles(out_csv: Path, idps: Sequence[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(PIT, z) matrices (n, D) from a peers.py prediction file (NaN for failed IDPs)."""
    table = pd.read_csv(out_csv)
    return pit_matrix(table, idps, n), z_matrix(table, idps, n)


# ----------------------------------------------------------------------------- tables


def fmt(value: object) -> str:
    """A table cell: floats with 3-4 significant digits, NaN/None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return "—"
        for bound, spec in ((100, ".0f"), (10, ".1f"), (1, ".2f"), (1e-3, ".3f")):
            if abs(v) >= bound:
                return format(v, spec)
        return "0" if v == 0 else f"{v:.1e}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """A GitHub markdown table: `columns` are (key, header) pairs; cells via `fmt`
    (a str cell is written as is)."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def provenance() -> str:
    """One line saying when, where and with which code a section ran.

    Why per section: sections are rerun independently, possibly on other machines, so a
    single header for RESULTS.md would misdate the ones that were not rerun.
    """
    info = machine_info()
    threads = ", ".join(f"{k}={v}" for k, v in info["threads"].items())
    return (
        f"*Ran {datetime.now(UTC).strftime('%Y-%m-%d %H:%M')} UTC on {info['cpu']} "
        f"({info['nproc']} cores, {info['ram_gb']} GB), Python {info['python']}, "
        f"torch {info['torch']}, {threads}; code `{info['git_head']}`.*"
    )


def write_section(name: str, markdown: str, data: dict) -> None:
    """Save one script's markdown section (with its `provenance` line under the title) and
    raw numbers under results/ for `assemble`."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    title, _, body = markdown.strip().partition("\n")
    text = f"{title}\n\n{provenance()}\n\n{body.strip()}\n"
    (RESULTS / f"{name}.md").write_text(text)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, default=_json_default))


def _json_default(value: object) -> object:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if not math.isfinite(value) else float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _scale_and_load() -> list[str]:
    """The scale and load sections (issues 7 and 6), from their scripts' last outputs.

    They are run on their own (`scale.py fit|score`, `load.py`), not by run_all.sh, and
    measure costs rather than accuracy, so their last results are kept as they are.
    """
    lines = []
    if (RESULTS / "scale.md").exists():
        lines += [(RESULTS / "scale.md").read_text(), ""]
    if (RESULTS / "load.md").exists():
        lines += ["## Load (`benchmarks/load.py`, issues 6 and 19)", "",
                  (RESULTS / "load.md").read_text(), ""]
    if (RESULTS / "load_browser.md").exists():
        lines += ["### Load with ten browsers on the server's CPU (`load.py --client browser`)",
                  "", (RESULTS / "load_browser.md").read_text()]
    return lines


def assemble(commands: Sequence[str], started: str | None = None) -> Path:
    """Write benchmarks/RESULTS.md: header (date, machine, settings, commands), the
    operator's note on what did not run (results/gaps.md, if written) and the engine, compare
    and adapt sections; a section without output is listed as not run."""
    lines = [
        "# normcore benchmarks",
        "",
        "Assembled by `python benchmarks/common.py assemble` (do not edit by hand) on "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M')} UTC"
        + (f"; last full run started {started}" if started else "")
        + ". Each section is rerun on its own (`benchmarks/run_all.sh` runs them all) and "
        "says under its title when, on which machine and with which code it ran. One heavy "
        "job at a time, one thread each (NORMCORE_THREADS=1, OMP_NUM_THREADS=1); the CPU "
        "was shared with other work, so wall times are upper bounds. normcore settings: "
        "package defaults (`NormativeModel(backbone=..., seed=0)`); peers in `.venv-bench` "
        "(benchmarks/requirements-peers.txt)."
        + (" — **BENCH_QUICK=1: tiny settings, numbers meaningless**" if QUICK else ""),
        "",
        "Commands of the last full run:",
        "",
        "```bash",
        *commands,
        "```",
        "",
    ]
    gaps = RESULTS / "gaps.md"
    if gaps.exists():
        lines += ["## What did not run, and why", "", gaps.read_text().strip(), ""]
    for name in SECTIONS:
        part = RESULTS / f"{name}.md"
        if part.exists():
            lines.append(part.read_text())
        else:
            lines += [f"## {name}", "", f"Not run: `benchmarks/{name}.py` left no output.", ""]
    lines += _scale_and_load()
    path = BENCH / "RESULTS.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "assemble":
        started = os.environ.get("BENCH_STARTED")
        cmds = [c for c in os.environ.get("BENCH_COMMANDS", "").split("\n") if c.strip()]
        print(assemble(cmds or ["bash benchmarks/run_all.sh"], started))
    else:
        raise SystemExit("usage: python benchmarks/common.py assemble")
