"""The bundled demo: a model of real fcon1000 data that the dashboard opens on.

`make demo` (`python -m normcore.demo`) refits the model on assets/demo's train half and
writes its bundle and its held-out calibration (the model card's numbers). With
`--source fcon1000.csv` it first re-creates both halves from the public fcon1000 table
(see README for its origin and licence): control sites only, the IDPs below, a 50/50
split stratified by site with a fixed seed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from normcore.data import read_table, split_table
from normcore.model import NormativeModel
from normcore.schema import Schema

DEMO_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo"
MODEL_PATH = DEMO_DIR / "fcon1000.normcore"
TRAIN_PATH = DEMO_DIR / "fcon1000_train.csv"
TEST_PATH = DEMO_DIR / "fcon1000_test.csv"
CARD_PATH = DEMO_DIR / "model_card.json"

EXCLUDED_SITES = ("NewYork_a_ADHD",)
"""Probably an adult ADHD sample (data README); a reference model wants controls."""

_HEMI_THICKNESS = (
    "MeanThickness",
    "G_front_sup",
    "G_precentral",
    "G_postcentral",
    "G_precuneus",
    "G_cuneus",
    "G_temp_sup-Lateral",
    "G_oc-temp_med-Parahip",
    "Pole_temporal",
)
_BILATERAL = ("Thalamus-Proper", "Caudate", "Putamen", "Pallidum", "Hippocampus", "Amygdala",
              "Accumbens-area", "VentralDC", "Lateral-Ventricle", "Cerebellum-Cortex")  # fmt: skip
IDPS = (
    ("eTIV", "BrainSegVolNotVent", "TotalGrayVol", "CortexVol", "CerebralWhiteMatterVol")
    + ("SubCortGrayVol",)
    + tuple(f"{side}-{name}" for name in _BILATERAL for side in ("Left", "Right"))
    + ("3rd-Ventricle", "4th-Ventricle", "Brain-Stem")
    + tuple(f"{h}_{name}_thickness" for name in _HEMI_THICKNESS for h in ("lh", "rh"))
)
"""Global volumes, subcortical structures, ventricles and regional cortical thickness:
measures clinicians read, few enough to keep the bundle small (see README)."""

SCHEMA = Schema(age="age", categorical=("sex", "site"), idps=IDPS, id="sub_id")
SETTINGS = {"grid_points": 31, "reference_samples": 10_000}
"""The demo model's settings beyond the package defaults (FiLM, seed 0)."""


def split_source(source: str | Path, out_dir: Path = DEMO_DIR, seed: int = 0) -> None:
    """Write the demo's train/test halves from the public fcon1000 table."""
    df = read_table(source)
    df = df[~df["site"].isin(EXCLUDED_SITES)]
    df = df[["sub_id", "age", "sex", "site", *IDPS]].reset_index(drop=True)
    train, test = split_table(df, 0.5, "site", seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    train.to_csv(out_dir / TRAIN_PATH.name, index=False)
    test.to_csv(out_dir / TEST_PATH.name, index=False)


def build(out_dir: Path = DEMO_DIR, seed: int = 0) -> dict:
    """Fit the demo model on the train half in `out_dir`; write it and its model card."""
    from normcore.evaluate import evaluate

    train = read_table(out_dir / TRAIN_PATH.name)
    test = read_table(out_dir / TEST_PATH.name)
    model = NormativeModel(backbone="film", seed=seed, **SETTINGS)
    start = time.perf_counter()
    model.fit(train, SCHEMA, progress=_progress)
    print(file=sys.stderr)
    model.save(out_dir / MODEL_PATH.name)
    held_out = test[test["site"].isin(train["site"].unique())]
    result = evaluate(model, held_out)
    card = {
        "data": "fcon1000 (1000 Functional Connectomes Project; PCNtoolkit-demo copy)",
        "n_train": len(train),
        "n_test": len(held_out),
        "fit_seconds": round(time.perf_counter() - start, 1),
        "held_out_calibration": result.metrics,
    }
    (out_dir / CARD_PATH.name).write_text(json.dumps(card, indent=2, allow_nan=False, default=str))
    return card


def _progress(p: dict) -> None:
    label = f"epoch {p['epoch']} val {p['val_loss']:.4f}" if p["phase"] == "train" else "reference"
    print(f"\r{label}: {100 * p['fraction']:.0f}%   ", end="", file=sys.stderr, flush=True)


def main(argv: list[str]) -> None:
    """`python -m normcore.demo [OUT_DIR] [--source FCON1000_CSV]`."""
    args = list(argv)
    source = None
    if "--source" in args:
        i = args.index("--source")
        source = args[i + 1]
        del args[i : i + 2]
    out_dir = Path(args[0]) if args else DEMO_DIR
    if source is not None:
        split_source(source, out_dir)
    print(json.dumps(build(out_dir)["held_out_calibration"].get("coverage_error"), indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
