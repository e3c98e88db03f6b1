#!/usr/bin/env bash
# Reproduce every benchmark figure and write benchmarks/RESULTS.md.
#
#   bash benchmarks/run_all.sh              # full run (~45 min on a 2-core CPU)
#   BENCH_QUICK=1 bash benchmarks/run_all.sh  # tiny end-to-end check (numbers meaningless)
#
# Needs the app venv (.venv, `make venv`) and the peer venv (.venv-bench, see
# benchmarks/README.md). One heavy job at a time, one thread each: the CPU is shared.
# A step that fails does not stop the others; RESULTS.md says which section did not run.
# Fitted models and peer outputs are cached in benchmarks/out/ (keyed by data, settings
# and code), so a rerun after an interruption resumes instead of starting over.
set -u
cd "$(dirname "$0")/.."

export NORMCORE_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
export PYTHONHASHSEED=0
PY=.venv/bin/python
BENCH_STARTED="$(date -u '+%Y-%m-%d %H:%M')"
export BENCH_STARTED

# Order = priority: engine figures and their spread over training draws, the side-by-side
# at 20 IDPs (reusing the engine's fits), 2 IDPs and fcon1000, site adaptation, then the
# side-by-side at 100 and 200 IDPs.
# HBR runs on fcon1000 only (one IDP): minutes per IDP at 3,000 rows.
STEPS=(
  "benchmarks/engine.py"
  "benchmarks/draws.py"
  "benchmarks/compare.py --datasets synth20,synth2,fcon --fcon-idps demo --hbr-max-idps 1 --hbr-datasets fcon"
  "benchmarks/adapt.py --sites ICBM,Cambridge_Buckner --repeats 1 --blr-repeats 1"
  "benchmarks/edges.py --label after --ablation"
  "benchmarks/compare.py --append --datasets synth100,synth200 --models film,saint,blr,gamlss"
)
if [ -n "${BENCH_STEPS:-}" ]; then
  IFS=$'\n' read -r -d '' -a STEPS <<<"$BENCH_STEPS"
fi

COMMANDS=""
status=0
for step in "${STEPS[@]}"; do
  echo "=== $step" >&2
  # shellcheck disable=SC2086
  if ! $PY $step; then
    echo "!!! failed: $step" >&2
    status=1
  fi
  COMMANDS+="NORMCORE_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python $step"$'\n'
done
export BENCH_COMMANDS="$COMMANDS"
$PY benchmarks/common.py assemble
exit $status
