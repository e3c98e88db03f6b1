"""CLI start-up and scoring, whole process (issue 19 item 2).

What a user waits for when typing a command: from the process starting to it exiting,
imports included. Each command runs `--runs` times after one warm-up run, the versions
interleaved run by run so a busy spell on the shared CPU falls on all of them alike;
medians with min-max, wall and CPU (user + system) seconds and peak memory, read from
the child's resource usage (`os.wait4`).

Versions: the working tree ("now") and, with `--before COMMIT`, that commit's `normcore/`
(unpacked with `git archive`, first on PYTHONPATH; same venv, same files).

Commands: `normcore --help`, `normcore score --help`, and `normcore score` of
- a synthetic table, 1,000 people x 20 IDPs, against a model fitted once to 3,000 people
  of the same law (a few epochs: scoring time does not depend on what it learned),
  every IDP present and every age inside the training range;
- the demo's held-out table (530 people x 47 IDPs) against the demo model.

    python benchmarks/startup.py --before 6bb4591
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common
from common import ROOT, log

OUT = ROOT / "benchmarks" / "out" / "startup"
DEMO_MODEL = ROOT / "assets" / "demo" / "fcon1000.normcore"
DEMO_TABLE = ROOT / "assets" / "demo" / "fcon1000_test.csv"


def synthetic_fixture() -> tuple[Path, Path]:
    """(model file, table) for the 1,000 x 20 scoring run, built once into benchmarks/out."""
    model_path, table_path = OUT / "synthetic20.normcore", OUT / "synthetic20.csv"
    if model_path.exists() and table_path.exists():
        return model_path, table_path
    OUT.mkdir(parents=True, exist_ok=True)
    log("fitting the scoring fixture (synthetic, 20 IDPs, 3,000 people)")
    code = (
        "from normcore.model import NormativeModel\n"
        "from normcore.synthetic import SyntheticSpec, simulate\n"
        "spec = SyntheticSpec(n_idps=20)\n"
        "model = NormativeModel(max_epochs=2, reference_samples=2000)\n"
        "model.fit(simulate(spec, 3000, seed=1), keep_outliers=True)\n"
        f"model.save({str(model_path)!r})\n"
        f"simulate(spec, 1000, seed=2).to_csv({str(table_path)!r}, index=False)\n"
    )
    # in a child, so this process stays small for the timed runs it starts
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    return model_path, table_path


def run_once(argv: list[str], pythonpath: Path, cwd: Path) -> dict:
    """Wall, CPU seconds and peak MB of `python -m normcore argv` as a new process, read by
    GNU time (a forked child's own resource usage would carry this process's peak)."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    report = cwd / "time.txt"
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%e %U %S %M", "-o", str(report),
         sys.executable, "-m", "normcore", *argv],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"normcore {' '.join(argv)} failed:\n{done.stderr}")
    wall, user, system, peak_kb = report.read_text().split()[-4:]
    return {"wall": float(wall), "cpu": float(user) + float(system), "peak_mb": int(peak_kb) / 1024}


def summary(runs: list[dict]) -> dict:
    out = {}
    for key in ("wall", "cpu", "peak_mb"):
        values = [r[key] for r in runs]
        out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def unpacked(commit: str, into: Path) -> Path:
    """`commit`'s normcore/ unpacked under `into`, for PYTHONPATH."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "normcore"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def markdown(rows: list[dict], runs: int, before: str | None) -> str:
    versions = ["before", "now"] if before else ["now"]
    lines = [
        "## CLI start-up and scoring (`benchmarks/startup.py`, issue 19 item 2)",
        "",
        f"Whole process, start to exit, imports included; median of {runs} runs after one "
        "warm-up, min-max in brackets; the versions interleaved run by run. "
        + (f"*before*: `normcore/` at `{before}`; *now*: the code named above. " if before else "")
        + "Synthetic: 1,000 people x 20 IDPs (every IDP present, ages inside the training "
        "range); demo: `assets/demo/fcon1000_test.csv`, 530 people x 47 IDPs, against the "
        "demo model. Targets (issue 19): `--help` under 0.5 s, the synthetic score under "
        "1.5 s wall.",
        "",
        "| command | version | wall s | CPU s | peak MB |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        for version in versions:
            s = row[version]

            def cell(key: str, digits: int = 2, s: dict = s) -> str:
                v = s[key]
                return f"{v['median']:.{digits}f} ({v['min']:.{digits}f}-{v['max']:.{digits}f})"

            lines.append(
                f"| {row['command']} | {version} | {cell('wall')} | {cell('cpu')} | "
                f"{s['peak_mb']['median']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", help="a commit whose normcore/ to time beside the working tree's")
    p.add_argument("--runs", type=int, default=10)
    args = p.parse_args(argv)
    model, table = synthetic_fixture()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = {"now": ROOT}
        if args.before:
            (tmp / "before").mkdir()
            paths["before"] = unpacked(args.before, tmp / "before")
        out = str(tmp / "scores.csv")
        commands = {
            "`normcore --help`": ["--help"],
            "`normcore score --help`": ["score", "--help"],
            "`normcore score`, synthetic 1,000 x 20": [
                "score", str(model), str(table), "--out", out,
            ],
            "`normcore score`, demo 530 x 47": [
                "score", str(DEMO_MODEL), str(DEMO_TABLE), "--out", out,
            ],
        }  # fmt: skip
        rows = []
        for name, command in commands.items():
            log(name)
            runs: dict[str, list[dict]] = {version: [] for version in paths}
            for i in range(args.runs + 1):
                for version, path in paths.items():
                    result = run_once(command, path, tmp)
                    if i:  # the first round warms the file cache
                        runs[version].append(result)
            rows.append({"command": name, **{v: summary(r) for v, r in runs.items()}})
    common.write_section(
        "startup", markdown(rows, args.runs, args.before),
        {"rows": rows, "runs": args.runs, "before": args.before, "load": os.getloadavg()},
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
