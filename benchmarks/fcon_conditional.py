"""Conditional centiles on real people: are they calibrated where nobody knows the truth?

On fcon1000 there is no exact conditional law to compare with, but held-out people's
conditional centiles must still be uniform: each IDP's conditional PIT (the centile
given the covariates and the given IDPs) of people the model never saw follows U(0, 1)
if the conditional law is right (issue 17: "conditional centiles at least as well
calibrated as the copula's"). The shipped demo model (assets/demo/fcon1000.normcore,
fitted on fcon1000_train.csv) scores the held-out half (fcon1000_test.csv) given each
set below; beside it, the Gaussian copula over the same model's z-scores (R of the
training half's z, as in the joint benchmark) and the plain centiles (nothing given).
Per set: the mean over the IDPs not given of the one-sample KS statistic, how many are
beyond the 5 % critical value, and the standard deviation of the conditional z over the
plain z's (about 1 when the conditional law is as wide as the people are spread; above 1,
too narrow). `--model FILE --label TEXT` measures another model fitted on the same half
(its entry replaces one of the same label).

    python benchmarks/fcon_conditional.py [--model FILE --label TEXT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import common
import joint
import numpy as np
from scipy import stats

from normcore import metrics
from normcore.demo import MODEL_PATH, TEST_PATH, TRAIN_PATH
from normcore.model import NormativeModel

GIVEN_SETS = (
    ("eTIV",),
    ("eTIV", "Left-Hippocampus", "lh_G_front_sup_thickness", "Right-Lateral-Ventricle"),
)
"""Head size alone (the clinician's "small for a brain of this size?"), and head size with
a volume, a thickness and a ventricle from across the brain."""


def _row(label: str, pit: np.ndarray, z: np.ndarray, plain_z: np.ndarray, n: int) -> dict:
    ks = metrics.ks_uniform(pit)["statistic"]
    keep = np.isfinite(z) & np.isfinite(plain_z)
    spread = [np.std(z[keep[:, j], j]) / np.std(plain_z[keep[:, j], j]) for j in range(z.shape[1])]
    return {
        "model": label,
        "mean_ks": float(np.nanmean(ks)),
        "beyond": int(np.sum(ks > common.ks_critical(n))),
        "idps": int(pit.shape[1]),
        "z_sd": float(np.nanmean(spread)),
    }


def measure(model: NormativeModel, train, test, given: tuple[str, ...]) -> dict:
    names = model.idps
    free = ~np.isin(np.array(names), given)
    plain = model.score(test)
    plain_pit = common.pit_matrix(plain, names, len(test))[:, free]
    plain_z = common.z_matrix(plain, names, len(test))
    t0 = time.perf_counter()
    scored = model.score(test, given=list(given))
    seconds = time.perf_counter() - t0
    pit = common.pit_matrix(scored, names, len(test))[:, free]
    z = common.z_matrix(scored, names, len(test))[:, free]
    known = np.broadcast_to(~free, plain_z.shape)
    mean, sd = joint.copula_conditional(plain_z, joint._copula_corr(joint._z(model, train)), known)
    cop_z = ((plain_z - mean) / sd)[:, free]
    base, n = plain_z[:, free], len(test)
    return {
        "given": list(given),
        "people": n,
        "seconds": seconds,
        "critical": common.ks_critical(n),
        "rows": [
            _row("plain centiles (nothing given)", plain_pit, base, base, n),
            _row("normcore model.score(given=...)", pit, z, base, n),
            _row("Gaussian copula over the model's z", stats.norm.cdf(cop_z), cop_z, base, n),
        ],  # fmt: skip
    }


def markdown(entries: list[dict]) -> str:
    parts = [
        "## Conditional centiles on fcon1000 (`benchmarks/fcon_conditional.py`, issue 17)",
        "",
        "Each model, fitted on the demo's training half with the demo's settings, scores the "
        "held-out half (530 people, 47 IDPs) given each set; beside it a Gaussian copula "
        "over the same model's z-scores (R of the training half's) and the plain centiles. "
        "*Mean KS*: one-sample KS of the conditional PIT of each IDP not given, averaged; "
        "*beyond*: IDPs beyond the 5 % critical value; *z sd*: the conditional z's standard "
        "deviation over the plain z's (about 1 when the conditional law is as wide as the "
        "people are spread; above 1, too narrow). Command: "
        "`python benchmarks/fcon_conditional.py [--model FILE --label TEXT]`.",
    ]
    for entry in entries:
        parts += ["", f"### {entry['label']}", "", f"*Code `{entry['code']}`.*"]
        for r in entry["results"]:
            parts += [
                "",
                f"**Given {', '.join(r['given'])}** ({r['people']} people, critical KS "
                f"{r['critical']:.3f}; `model.score(given=...)` {r['seconds']:.0f} s wall)",
                "",
                common.markdown_table(
                    r["rows"],
                    [("model", "centiles"), ("mean_ks", "mean KS"), ("beyond", "beyond"),
                     ("idps", "IDPs"), ("z_sd", "z sd")],
                ),  # fmt: skip
            ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=MODEL_PATH)
    p.add_argument("--label", default="the shipped demo model (FiLM)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    model = NormativeModel.load(args.model)
    train, test = common.read_table(TRAIN_PATH), common.read_table(TEST_PATH)
    results = []
    for given in GIVEN_SETS:
        common.log(f"{args.label}: given {', '.join(given)}")
        results.append(measure(model, train, test, given))
    path = common.RESULTS / "fcon_conditional.json"
    entries = json.loads(path.read_text())["entries"] if path.exists() else []
    entry = {"label": args.label, "code": common.git_head().split()[0], "results": results}
    entries = [e for e in entries if e["label"] != args.label] + [entry]
    common.write_section("fcon_conditional", markdown(entries), {"entries": entries})
    return 0


if __name__ == "__main__":
    sys.exit(main())
