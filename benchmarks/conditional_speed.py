"""How long conditional scoring takes (issue 17, "Speed"): 1,000 people x 20 IDPs with 5
given, and one person's conditional profile, at one and two torch threads.

The time of a conditional score is the masked denoiser's passes (`conditional.DRAWS`
draws x the model's sampling steps per person), whatever the network learned, so the model
is trained briefly (300 optimiser steps) on the subgroup truth with the package's default
network and sampler; its accuracy is measured by benchmarks/joint.py, not here.

Command: `python benchmarks/conditional_speed.py` (writes results/conditional_speed.md
and .json). Wall time is what a user waits; CPU time is this process's CPU seconds, the
better estimate of the time alone on a CPU shared with other jobs, as in every section.
"""

from __future__ import annotations

import dataclasses
import time

import common
import numpy as np

from normcore import conditional
from normcore.model import NormativeModel
from normcore.schema import Schema
from normcore.synthetic import SyntheticSpec, idp_names, simulate
from normcore.train import TrainConfig

N_IDPS = 20
PEOPLE = 100 if common.QUICK else 1000
GIVEN_EVERY = 4
"""IDPs 0, 4, 8, 12 and 16 are given: 5 of 20, as in the issue's target."""
TRAIN_STEPS = 300
THREADS = (1, 2)
ONE_PERSON_REPEATS = 3


def fit_model() -> NormativeModel:
    """A masked FiLM model with the package's default network and sampler, briefly trained."""
    spec = SyntheticSpec(n_idps=N_IDPS, dependence="subgroup")
    schema = Schema(age="age", categorical=("sex", "site"), idps=tuple(idp_names(spec)))
    model = NormativeModel(seed=0, reference_samples=1000, grid_points=11)
    model.config = dataclasses.replace(model.config, train=TrainConfig(max_steps=TRAIN_STEPS))
    return model.fit(simulate(spec, 3000, seed=1), schema)


def timed_score(model: NormativeModel, people, given: list[str]) -> tuple[float, float, object]:
    """(wall s, CPU s, scores) of one conditional score of `people`."""
    wall, cpu = time.perf_counter(), time.process_time()
    scores = model.score(people, given=given)
    return time.perf_counter() - wall, time.process_time() - cpu, scores


def main() -> None:
    common.log("fitting the model")
    model = fit_model()
    spec = SyntheticSpec(n_idps=N_IDPS, dependence="subgroup")
    people = simulate(spec, PEOPLE, seed=2)
    given = model.idps[::GIVEN_EVERY]
    rows = []
    for threads in THREADS:
        model.threads = threads
        common.log(f"{PEOPLE} people, {threads} thread(s)")
        wall, cpu, scores = timed_score(model, people, given)
        one = [timed_score(model, people.iloc[[k]], given)[:2] for k in range(ONE_PERSON_REPEATS)]
        rows.append(
            {
                "threads": threads,
                "people": PEOPLE,
                "wall_s": wall,
                "cpu_s": cpu,
                "one_person_wall_s": float(np.median([w for w, _ in one])),
                "one_person_cpu_s": float(np.median([c for _, c in one])),
                "mean_centile_se": float(scores["centile_se"].mean()),
                "max_centile_se": float(scores["centile_se"].max()),
            }
        )
    columns = [
        ("threads", "torch threads"),
        ("people", "people"),
        ("wall_s", "wall s"),
        ("cpu_s", "CPU s"),
        ("one_person_wall_s", "one person wall s"),
        ("one_person_cpu_s", "one person CPU s"),
        ("mean_centile_se", "mean centile_se"),
        ("max_centile_se", "max centile_se"),
    ]
    markdown = "\n".join(
        [
            "## Conditional scoring speed (issue 17)",
            "",
            f"`model.score(people, given=...)`: {PEOPLE} held-out people x {N_IDPS} IDPs of "
            f"the subgroup truth (`SyntheticSpec(n_idps={N_IDPS}, dependence='subgroup')`), "
            f"IDPs {', '.join(given)} given, {conditional.DRAWS} conditional draws per person "
            f"x {model.config.sampling_steps} sampling steps, default FiLM network (trained "
            f"{TRAIN_STEPS} steps: the time does not depend on what it learned). One person: "
            f"median of {ONE_PERSON_REPEATS} calls. Target: 1,000 people within 120 s, one "
            "person within 2 s. Command: `python benchmarks/conditional_speed.py`.",
            "",
            common.markdown_table(rows, columns),
            "",
            "- *CPU s*: this process's CPU seconds; with 2 threads it counts both cores, so "
            "wall time alone on the machine is about CPU s / threads at best.",
            "- *centile_se*: the conditional centile's Monte-Carlo standard error "
            "(`conditional.smoothed_cdf`), centile points.",
        ]
    )
    common.write_section("conditional_speed", markdown, {"rows": rows, "given": given})
    print(markdown)


if __name__ == "__main__":
    main()
