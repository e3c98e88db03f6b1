"""Joint-model benchmark (issue 17): what one diffusion model over all IDPs knows that a
Gaussian copula over the same margins does not, on a truth that is not a copula.

Truth: `SyntheticSpec(n_idps=D, dependence="subgroup")` (a latent subgroup shared by all
IDPs, more common with age; coupling that grows with age), 3,000 training and 1,000
held-out people. In every joint comparison the peer is a Gaussian copula over the same
model's margins: z ~ N(0, R), R the correlation of the model's own z-scores of the
training people. Every number comes from `normcore.metrics`, `normcore.synthetic`'s exact
answers or the model's public outputs; the sections:

1. joint draws at old ages (the subgroup common): energy distance to true draws;
2. multivariate deviation of held-out controls per age quintile: ranked among draws
   pooled over ages (before issue 17 item 5) and at the person's own age (now);
   the same on fcon1000's held-out half;
3. atypical combinations (`simulate_atypical`: every margin as the controls'): detection
   rate at a 5 % false-positive rate of Mahalanobis (pooled, per age), a kNN density
   among model draws, the diffusion model's own denoising loss and ELBO, and the exact
   copula log-density (oracle);
4. conditional centiles given 5 of 20 IDPs against the exact conditional CDF;
5. 10 % of held-out cells blanked: imputed bands against the exact conditional law,
   and the deviation over the present IDPs.

    python benchmarks/joint.py [--backbones film,saint] [--dims 20] [--no-fcon]
    python benchmarks/joint.py --append --dims 100 --backbones saint --no-fcon
        # adds or replaces that entry, keeps the others and the fcon part; two such runs
        # may go in parallel (results/joint.json is rewritten under a lock)
    python benchmarks/joint.py --not-run "100,saint,REASON"   # a row saying why not
    BENCH_QUICK=1 python benchmarks/joint.py      # tiny end-to-end check
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import common
import numpy as np
import pandas as pd
import torch
from common import QUICK, log
from scipy import stats
from sklearn.covariance import LedoitWolf

from normcore import metrics
from normcore.data import split_table
from normcore.demo import IDPS as DEMO_IDPS
from normcore.demo import MODEL_PATH as DEMO_MODEL
from normcore.model import NormativeModel
from normcore.numeric import rank_normal_scores
from normcore.reference import PROBABILITY_LEVELS, ReferenceTable, mahalanobis_centile
from normcore.schema import Schema
from normcore.synthetic import (
    ATYPICAL_KINDS,
    SyntheticSpec,
    idp_names,
    simulate,
    simulate_atypical,
    true_conditional_cdf,
    true_log_density,
)

N_TRAIN, N_TEST = (300, 200) if QUICK else (3000, 1000)
TRAIN_SEED, TEST_SEED, OLD_SEED, ATYPICAL_SEED, DRAW_SEED = 1, 2, 4, 5, 7
OLD_SHARE = 0.2
"""Section 1 draws at the oldest fifth of the age range, where the subgroup is common."""
FPR = 0.05
POOLED_DRAWS = 400 if QUICK else 2000
"""Draws per sex x site for the pooled (before) deviation reference, as the code before
issue 17 item 5 kept them (reference._KEEP)."""
KNN_K, KNN_WINDOW = 10, 5.0
DENOISING_STEPS, DENOISING_NOISE = (8, 2) if QUICK else (50, 8)
GIVEN = 5
BLANK_SHARE = 0.10


def _z(model: NormativeModel, df: pd.DataFrame) -> np.ndarray:
    """The model's (marginal) z-scores of a table, (n, D)."""
    return common.z_matrix(model.score(df), model.idps, len(df))


def _finite_rows(z: np.ndarray) -> np.ndarray:
    return z[np.isfinite(z).all(axis=1)]


def _copula_corr(train_z: np.ndarray) -> np.ndarray:
    keep = np.isfinite(train_z).all(axis=1)
    return np.corrcoef(np.clip(train_z[keep], -6, 6), rowvar=False)


# ---------------------------------------------------------------- 1. joint draws


def joint_draws(model: NormativeModel, spec: SyntheticSpec, train_z: np.ndarray) -> dict:
    lo, hi = spec.age_range
    pool = simulate(spec, 6 * N_TEST, seed=OLD_SEED)
    old = pool[pool["age"] >= hi - OLD_SHARE * (hi - lo)].reset_index(drop=True)
    half = len(old) // 2
    truth, truth2 = old.iloc[:half].reset_index(drop=True), old.iloc[half:].reset_index(drop=True)
    covs = ["age", "sex", "site"]
    z_true, z_true2 = _z(model, truth), _z(model, truth2)
    gen = model.sample(truth[covs], 1, seed=DRAW_SEED)
    z_model = _z(model, gen)
    rng = np.random.default_rng(DRAW_SEED)
    d = train_z.shape[1]
    z_cop = rng.multivariate_normal(np.zeros(d), _copula_corr(train_z), size=half)
    old_train = train_z[model_train_ages(model) >= hi - OLD_SHARE * (hi - lo)]
    z_cop_old = rng.multivariate_normal(np.zeros(d), _copula_corr(old_train), size=half)

    def energy(other: np.ndarray) -> float:
        """Over the people whose every z is finite (`correlation_error` drops the others too:
        a truth's draw can leave the IDP's domain, e.g. a negative volume, and is unscored)."""
        return metrics.energy_distance(
            _finite_rows(z_true), _finite_rows(other), max_n=1000, seed=DRAW_SEED
        )

    rows = [
        {
            "draws": "normcore (model.sample)",
            "energy": energy(z_model),
            "corr_err": metrics.correlation_error(z_true, z_model),
        },
        {
            "draws": "Gaussian copula, R of all training people",
            "energy": energy(z_cop),
            "corr_err": metrics.correlation_error(z_true, z_cop),
        },
        {
            "draws": "Gaussian copula, R of training people in the same age band",
            "energy": energy(z_cop_old),
            "corr_err": metrics.correlation_error(z_true, z_cop_old),
        },
        {
            "draws": "true draws (other people; the noise floor)",
            "energy": energy(z_true2),
            "corr_err": metrics.correlation_error(z_true, z_true2),
        },
    ]
    ratio = rows[0]["energy"] / rows[1]["energy"]
    return {
        "n": half,
        "unscored": {
            "truth": int(len(z_true) - len(_finite_rows(z_true))),
            "normcore": int(len(z_model) - len(_finite_rows(z_model))),
            "truth2": int(len(z_true2) - len(_finite_rows(z_true2))),
        },
        "ages": f">= {hi - OLD_SHARE * (hi - lo):.0f}",
        "rows": rows,
        "ratio_model_to_copula": ratio,
    }


_TRAIN_AGES: dict[int, np.ndarray] = {}


def model_train_ages(model: NormativeModel) -> np.ndarray:
    return _TRAIN_AGES[id(model)]


# ------------------------------------------------------------- 2. deviation by age


def pooled_reference(model: NormativeModel, df_levels: pd.DataFrame) -> ReferenceTable:
    """The deviation reference as built before issue 17 item 5, from this model's draws:
    POOLED_DRAWS draws per sex x site spread over the age range, normal scores from their
    ranks per IDP, one Ledoit-Wolf correlation over all of them, and per combination the
    quantiles of the squared distances pooled over ages. Stored in the layout such files
    had ((D, D), (C, Q)), which loads as the same reference at every age."""
    lo, hi = model.age_range
    table = model.reference_
    n_combo = len(table.quantiles)
    zs, combos = [], []
    rng = np.random.default_rng(DRAW_SEED)
    pairs = df_levels[["sex", "site"]].drop_duplicates().reset_index(drop=True)
    for _, pair in pairs.iterrows():
        grid = pd.DataFrame(
            {
                "age": lo
                + (np.arange(POOLED_DRAWS) + rng.random(POOLED_DRAWS)) / POOLED_DRAWS * (hi - lo),
                "sex": pair["sex"],
                "site": pair["site"],
            }
        )
        draws = model.sample(grid, 1, seed=int(rng.integers(2**31)))
        zs.append(rank_normal_scores(draws[model.idps].to_numpy(float)))
        codes, _ = model.encoder_.encode_categories(grid.iloc[:1])
        combos.append(int(table.combo_index(codes)[0]))
    cov = LedoitWolf().fit(np.concatenate(zs)).covariance_
    sd = np.sqrt(np.diag(cov))
    precision = np.linalg.inv(cov / np.outer(sd, sd))
    maha = np.empty((n_combo, len(PROBABILITY_LEVELS)))
    everything = np.concatenate(zs)
    maha[:] = np.quantile(
        np.einsum("ij,jk,ik->i", everything, precision, everything), PROBABILITY_LEVELS
    )
    for c, z in zip(combos, zs):
        maha[c] = np.quantile(np.einsum("ij,jk,ik->i", z, precision, z), PROBABILITY_LEVELS)
    arrays = table.to_arrays()
    arrays["reference.precision"] = precision
    arrays["reference.mahalanobis"] = maha
    return ReferenceTable.from_arrays(arrays, table.n_levels, table.bandwidth)


def raw_deviation(model: NormativeModel, table: ReferenceTable, df: pd.DataFrame) -> np.ndarray:
    """Uncalibrated deviation centiles / 100 of a table's people under `table`."""
    z = _z(model, df)
    codes, _ = model.encoder_.encode_categories(df)
    _, centile = mahalanobis_centile(table, codes, df["age"].to_numpy(float), z)
    return centile / 100.0


def by_age_band(pit: np.ndarray, ages: np.ndarray, label: str) -> list[dict]:
    edges = np.quantile(ages, np.linspace(0, 1, 6))
    band = np.clip(np.searchsorted(edges, ages, side="right") - 1, 0, 4)
    rows = []
    for b in range(5):
        p = pit[band == b]
        p = p[np.isfinite(p)]
        ks = stats.ks_1samp(p, stats.uniform.cdf)
        rows.append(
            {
                "reference": label,
                "band": f"{edges[b]:.0f}-{edges[b + 1]:.0f}",
                "n": len(p),
                "ks": float(ks.statistic),
                "p_value": float(ks.pvalue),
                "ks_critical": common.ks_critical(len(p)),
                "above_95": float(np.mean(p > 0.95)),
                "within_noise": bool(ks.statistic <= common.ks_critical(len(p))),
            }
        )
    return rows


def deviation_by_age(model: NormativeModel, train: pd.DataFrame, test: pd.DataFrame) -> list[dict]:
    ages = test["age"].to_numpy(float)
    pooled = pooled_reference(model, train)
    rows = by_age_band(raw_deviation(model, pooled, test), ages, "pooled over ages (before)")
    rows += by_age_band(
        raw_deviation(model, model.reference_, test),
        ages,
        "at the person's age (now), uncalibrated",
    )
    calibrated = model.deviation(test)["deviation_centile"].to_numpy(float) / 100.0
    rows += by_age_band(calibrated, ages, "at the person's age, model.deviation (calibrated)")
    return rows


# ---------------------------------------------------------- 3. atypical combinations


def denoising_scores(model: NormativeModel, df: pd.DataFrame) -> dict[str, np.ndarray]:
    """The diffusion model's own measures of how typical each person's normal scores are
    at their covariates: the mean training loss (v-prediction error) over DENOISING_STEPS
    noise levels, and the ELBO-weighted x0 error, sum_t (SNR_{t-1} - SNR_t) / 2 ||x0 -
    x0_hat||^2 (Kingma et al. 2021, variational diffusion models), with the same noise
    for every person; and the ELBO with each IDP's standard normal log-density added back,
    which leaves the dependence alone (the margins are the controls' by construction)."""
    joint = model.joint_
    ages = df["age"].to_numpy(float)
    codes, _ = model.encoder_.encode_categories(df)
    age_z = model.encoder_.encode_age(ages)
    x0 = model.first_stage_.transform(df[model.idps].to_numpy(float), age_z, codes)
    ab = np.asarray(joint.schedule.alpha_bar, dtype=np.float64)
    steps = np.unique(np.linspace(0, len(ab) - 1, DENOISING_STEPS).round().astype(int))
    snr = ab / (1 - ab)
    snr_prev = np.concatenate([[snr[0] * 2], snr[:-1]])
    width = len(ab) / len(steps)
    g = torch.Generator().manual_seed(DRAW_SEED)
    noise = torch.randn((DENOISING_NOISE, len(steps), x0.shape[1]), generator=g)
    vloss = np.zeros(len(df))
    elbo = np.zeros(len(df))
    net = joint.net.eval()
    with torch.inference_mode():
        x = torch.as_tensor(x0, dtype=torch.float32)
        h = net.embed(
            torch.as_tensor(age_z, dtype=torch.float32), torch.as_tensor(codes, dtype=torch.long)
        )
        for si, t in enumerate(steps):
            a = float(ab[t])
            tt = torch.full((len(df),), int(t), dtype=torch.long)
            for k in range(DENOISING_NOISE):
                eps = noise[k, si][None, :].expand_as(x)
                xt = a**0.5 * x + (1 - a) ** 0.5 * eps
                v = a**0.5 * eps - (1 - a) ** 0.5 * x
                err = ((net(xt, tt, h) - v) ** 2).sum(dim=1).double().numpy()
                vloss += err / (len(steps) * DENOISING_NOISE)
                elbo += 0.5 * (snr_prev[t] - snr[t]) * (1 - a) * err * width / DENOISING_NOISE
    return {"denoising loss": vloss, "ELBO": elbo, "ELBO less margins": elbo - 0.5 * (x0**2).sum(1)}


def knn_scores(
    z: np.ndarray, ages: np.ndarray, draws_z: np.ndarray, draw_ages: np.ndarray
) -> np.ndarray:
    """Squared distance to the KNN_K-th nearest model draw within KNN_WINDOW years."""
    out = np.empty(len(z))
    for i in range(len(z)):
        near = draws_z[np.abs(draw_ages - ages[i]) <= KNN_WINDOW]
        d = np.sort(((near - z[i]) ** 2).sum(axis=1))
        out[i] = d[min(KNN_K, len(d) - 1)]
    return out


def oracle_scores(spec: SyntheticSpec, df: pd.DataFrame) -> np.ndarray:
    """Minus the exact copula log-density: joint log-density less the margins' ones."""
    full = true_log_density(spec, df)
    margins = sum(true_log_density(spec, df, [name]) for name in idp_names(spec))
    return -(full - margins)


def atypical(
    model: NormativeModel, spec: SyntheticSpec, train: pd.DataFrame, test: pd.DataFrame
) -> list[dict]:
    people = {"controls": test}
    for kind in ATYPICAL_KINDS:
        people[kind] = simulate_atypical(spec, N_TEST, seed=ATYPICAL_SEED, kind=kind)
    pooled = pooled_reference(model, train)
    draws = model.sample(train[["age", "sex", "site"]], 1, seed=DRAW_SEED + 1)
    draws_z, draw_ages = _z(model, draws), draws["age"].to_numpy(float)
    scores: dict[str, dict[str, np.ndarray]] = {}
    timing: dict[str, float] = {}
    for name, df in people.items():
        z, ages = _z(model, df), df["age"].to_numpy(float)
        s = {
            "Mahalanobis, pooled over ages (before)": raw_deviation(model, pooled, df),
            "Mahalanobis at the person's age (now)": raw_deviation(model, model.reference_, df),
            "kNN among model draws": knn_scores(z, ages, draws_z, draw_ages),
        }
        t0 = time.perf_counter()
        s.update(denoising_scores(model, df))
        timing[name] = time.perf_counter() - t0
        s["exact copula log-density (oracle)"] = oracle_scores(spec, df)
        scores[name] = s
    rows = []
    for measure in scores["controls"]:
        # a person with an unscored IDP (outside its domain, e.g. a negative volume) has no
        # score: left out of both the threshold and the share, and counted
        controls = scores["controls"][measure]
        threshold = np.quantile(controls[np.isfinite(controls)], 1 - FPR)
        row = {"measure": measure, "unscored": int((~np.isfinite(controls)).sum())}
        for kind in ATYPICAL_KINDS:
            flagged = scores[kind][measure]
            flagged = flagged[np.isfinite(flagged)]
            row[kind] = float(np.mean(flagged > threshold))
            row["unscored"] += len(scores[kind][measure]) - len(flagged)
        rows.append(row)
    log(f"denoising scores: {timing['controls']:.1f}s per {N_TEST} people")
    return rows


# --------------------------------------------------- 4-5. conditional and missing


def copula_conditional(
    z: np.ndarray, corr: np.ndarray, known: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-copula conditional mean and sd of every unknown z given the known ones,
    one given set per row ((n, D), nan at known cells)."""
    mean = np.full(z.shape, np.nan)
    sd = np.full(z.shape, np.nan)
    sets, inverse = np.unique(known, axis=0, return_inverse=True)
    for s, g in enumerate(sets):
        rows = np.flatnonzero(inverse.reshape(-1) == s)
        u, k = np.flatnonzero(~g), np.flatnonzero(g)
        if len(k) == 0:
            mean[np.ix_(rows, u)], sd[np.ix_(rows, u)] = 0.0, 1.0
            continue
        b = np.linalg.solve(corr[np.ix_(k, k)], corr[np.ix_(k, u)])
        mean[np.ix_(rows, u)] = z[np.ix_(rows, k)] @ b
        sd[np.ix_(rows, u)] = np.sqrt(
            np.clip(1 - np.sum(corr[np.ix_(k, u)] * b, axis=0), 1e-9, None)
        )
    return mean, sd


def given_idps(names: list[str]) -> list[str]:
    """The benchmark's given set: GIVEN IDPs (at most a quarter) spread evenly over `names`."""
    count = min(GIVEN, len(names) // 4)
    return names[:: len(names) // count][:count]


def conditional(
    model: NormativeModel, spec: SyntheticSpec, test: pd.DataFrame, train_z: np.ndarray
) -> dict:
    names = model.idps
    given = given_idps(names)
    truth = true_conditional_cdf(spec, test, given)
    t0, c0 = time.perf_counter(), time.process_time()
    scored = model.score(test, given=given)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    pit = common.pit_matrix(scored, names, len(test))
    free = ~np.isin(np.array(names), given)
    z = _z(model, test)
    known = np.broadcast_to(~free, z.shape)
    mean, sd = copula_conditional(z, _copula_corr(train_z), known)
    cop = stats.norm.cdf((z - mean) / sd)
    true_ks = metrics.ks_uniform(truth[:, free])["statistic"].mean()

    def row(label: str, p: np.ndarray) -> dict:
        return {
            "model": label,
            "centile_err": 100 * float(np.nanmean(np.abs(p[:, free] - truth[:, free]))),
            "pit_ks": float(metrics.ks_uniform(p[:, free])["statistic"].mean()),
        }

    return {
        "given": given,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "people": len(test),
        "true_pit_ks": float(true_ks),
        "rows": [
            row("normcore model.score(given=...)", pit),
            row("Gaussian copula over the model's z", cop),
        ],
    }


def _imputed(scored: pd.DataFrame, names: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    cols = sorted(c for c in scored.columns if c.startswith("imputed_q"))
    probs = np.array([float(c.removeprefix("imputed_q")) / 100 for c in cols])
    out = np.stack(
        [
            scored.pivot(index="row", columns="idp", values=c)
            .reindex(index=range(n), columns=names)
            .to_numpy(float)
            for c in cols
        ],
        axis=-1,
    )
    return probs, out


def blanked(
    model: NormativeModel, spec: SyntheticSpec, test: pd.DataFrame, train_z: np.ndarray
) -> dict:
    names = model.idps
    rng = np.random.default_rng(DRAW_SEED)
    hidden = rng.random((len(test), len(names))) < BLANK_SHARE
    hidden[hidden.all(axis=1), 0] = False
    holey = test.copy()
    values = holey[names].to_numpy(float)
    holey[names] = np.where(hidden, np.nan, values)
    t0, c0 = time.perf_counter(), time.process_time()
    scored = model.score(holey)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    probs, bands = _imputed(scored, names, len(test))
    # exact conditional CDF, given the present cells, at the model's imputed quantiles
    err = []
    for j, p in enumerate(probs):
        at = test.copy()
        at[names] = np.where(hidden, np.nan_to_num(bands[..., j]), values)
        f = true_conditional_cdf(spec, at, ~hidden)
        err.append(np.abs(f[hidden] - p))
    inside = {}
    for lo, hi in ((0.25, 0.75), (0.02, 0.98)):
        i, k = int(np.argmin(np.abs(probs - lo))), int(np.argmin(np.abs(probs - hi)))
        cover = (values >= bands[..., i]) & (values <= bands[..., k])
        inside[f"{hi - lo:.2f}"] = float(cover[hidden].mean())
    z = _z(model, test)
    mean, sd = copula_conditional(z, _copula_corr(train_z), ~hidden)
    cop_pit = stats.norm.cdf((z - mean) / sd)[hidden]
    cop_inside = {
        f"{hi - lo:.2f}": float(np.mean((cop_pit >= lo) & (cop_pit <= hi)))
        for lo, hi in ((0.25, 0.75), (0.02, 0.98))
    }
    out = {
        "cells": int(hidden.sum()),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "probs": probs.tolist(),
        "band_err": 100 * float(np.mean(np.concatenate(err))),
        "coverage_model": inside,
        "coverage_copula": cop_inside,
        "copula_pit_ks": float(stats.ks_1samp(cop_pit, stats.uniform.cdf).statistic),
    }
    try:
        dev = model.deviation(holey)["deviation_centile"].to_numpy(float) / 100.0
        partial = hidden.any(axis=1)
        out["deviation_ks_partial"] = float(
            stats.ks_1samp(dev[partial & np.isfinite(dev)], stats.uniform.cdf).statistic
        )
        out["deviation_n_partial"] = int((partial & np.isfinite(dev)).sum())
    except Exception as err:  # noqa: BLE001 - reported in the results as not available
        out["deviation_error"] = f"{type(err).__name__}: {err}"[:200]
    return out


# -------------------------------------------------------------------------- fcon


def fcon_deviation() -> list[dict]:
    df = common.fcon_table()
    df = df[df["site"] != "NewYork_a_ADHD"].reset_index(drop=True)
    df["sex"] = df["sex"].astype(str)
    idps = [c for c in DEMO_IDPS if c in df.columns]
    if QUICK:
        idps = idps[:6]
    train, test = split_table(df, 0.5, "site", 0)
    schema = Schema("age", ("sex", "site"), tuple(idps), "sub_id")
    fit = common.fit_or_load("joint_fcon_demo", "film", train, schema)
    model = fit.model
    ages = test["age"].to_numpy(float)
    rows = by_age_band(
        raw_deviation(model, pooled_reference(model, train), test),
        ages,
        "pooled over ages (before)",
    )
    rows += by_age_band(
        raw_deviation(model, model.reference_, test),
        ages,
        "at the person's age (now), uncalibrated",
    )
    rows += by_age_band(
        model.deviation(test)["deviation_centile"].to_numpy(float) / 100,
        ages,
        "at the person's age, model.deviation (calibrated)",
    )
    if not QUICK:
        demo = NormativeModel.load(DEMO_MODEL)
        demo_test = common.read_table(common.FCON_HALVES[1])
        rows += by_age_band(
            demo.deviation(demo_test)["deviation_centile"].to_numpy(float) / 100,
            demo_test["age"].to_numpy(float),
            "shipped demo model (assets/demo, the demo's settings)",
        )
    for r in rows:
        r["fit_s"], r["fit_cpu_s"] = fit.fit_seconds, fit.fit_cpu_seconds
    return rows


# ------------------------------------------------------------------------ report


def _commit(code: str) -> str:
    """`common.git_head()` without the commit's subject."""
    dirty = " (with uncommitted changes to normcore/)" if "uncommitted" in code else ""
    return f"`{code.split()[0]}`{dirty}"


def _ran() -> dict[str, str]:
    """When and with which code a part ran: parts of the section are rerun on their own."""
    return {"ran": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "code": common.CODE_AT_START}


def run_synthetic(dims: int, backbone: str) -> dict:
    spec = SyntheticSpec(n_idps=dims, dependence="subgroup")
    train = simulate(spec, N_TRAIN, seed=TRAIN_SEED)
    test = simulate(spec, N_TEST, seed=TEST_SEED)
    schema = Schema("age", ("sex", "site"), tuple(idp_names(spec)), "subject_id")
    # the truth's far draws are real (at 100 IDPs a few fall 10x below the median)
    fit = common.fit_or_load(f"joint_subgroup{dims}", backbone, train, schema, keep_outliers=True)
    model = fit.model
    _TRAIN_AGES[id(model)] = train["age"].to_numpy(float)
    train_z = _z(model, train)
    out = {
        "dims": dims,
        "backbone": backbone,
        "fit_s": fit.fit_seconds,
        "fit_cpu_s": fit.fit_cpu_seconds,
        "reused_fit": fit.reused,
        **_ran(),
    }
    log(f"joint {dims} {backbone}: draws")
    out["draws"] = joint_draws(model, spec, train_z)
    log("deviation by age")
    out["deviation"] = deviation_by_age(model, train, test)
    log("atypical")
    out["atypical"] = atypical(model, spec, train, test)
    if model.joint_.conditional:
        log("conditional")
        out["conditional"] = conditional(model, spec, test, train_z)
        log("blanked")
        try:
            out["blanked"] = blanked(model, spec, test, train_z)
        except Exception as err:  # noqa: BLE001 - reported in the results as not available
            log(f"blanked failed: {type(err).__name__}: {err}")
            out["blanked_error"] = f"{type(err).__name__}: {err}"[:300]
    return out


def _unscored_note(unscored: dict[str, int]) -> str:
    """Section 1's people left out of the energy distance: an IDP outside its domain."""
    counts = ", ".join(f"{k} {v}" for k, v in unscored.items() if v)
    return (
        f" People with an unscored IDP (e.g. a negative volume), left out: {counts}."
        if counts
        else ""
    )


def _shares(coverage: dict[str, float]) -> str:
    return " / ".join(f"{100 * v:.1f} %" for v in coverage.values())


def _worst_band(rows: list[dict]) -> str:
    calibrated = [r for r in rows if "model.deviation" in r["reference"]]
    worst = max(calibrated, key=lambda r: r["ks"] - r["ks_critical"])
    return f"{worst['ks']:.3f} at {worst['band']} (crit. {worst['ks_critical']:.3f})"


def summary_row(r: dict) -> dict:
    """One line of the FiLM-vs-SAINT table: the figures each subsection details."""
    row = {"idps": r["dims"], "backbone": r["backbone"]}
    if "not_run" in r:
        row["fit"] = f"not run: {r['not_run']}"
        return row
    row["fit"] = f"{r['fit_cpu_s']:.0f} ({r['fit_s']:.0f})"
    row["energy_ratio"] = r["draws"]["ratio_model_to_copula"]
    row["deviation"] = _worst_band(r["deviation"])
    maha = next(a for a in r["atypical"] if a["measure"] == "Mahalanobis at the person's age (now)")
    row["atypical"] = " / ".join(f"{maha[k]:.2f}" for k in ATYPICAL_KINDS)
    if "conditional" in r:
        c = r["conditional"]
        model, copula = c["rows"]
        row["cond_err"] = f"{model['centile_err']:.2f} ({copula['centile_err']:.2f})"
        row["cond_ks"] = f"{model['pit_ks']:.3f} ({copula['pit_ks']:.3f})"
        per = 1000 / c.get("people", N_TEST)
        cpu = f"{per * c['cpu_seconds']:.0f} CPU, " if "cpu_seconds" in c else ""
        row["cond_s"] = f"{cpu}{per * c['seconds']:.0f} wall"
    if "blanked" in r:
        row["band_err"] = r["blanked"]["band_err"]
    elif "blanked_error" in r:
        row["band_err"] = "failed (section 5)"
    return row


def summary_table(results: list[dict]) -> str:
    rows = sorted(results, key=lambda r: (r["dims"], r["backbone"] != "film", r["backbone"]))
    return common.markdown_table(
        [summary_row(r) for r in rows],
        [
            ("idps", "IDPs"),
            ("backbone", "backbone"),
            ("fit", "fit CPU s (wall)"),
            ("cond_err", "cond. \\|centile − true\\|, 5 given (copula)"),
            ("cond_ks", "cond. PIT KS (copula)"),
            ("energy_ratio", "energy / copula's"),
            ("deviation", "deviation KS, worst age band"),
            (
                "atypical",
                "atypical detected, Mahalanobis per age (" + " / ".join(ATYPICAL_KINDS) + ")",
            ),
            ("band_err", "imputed-band error, points"),
            ("cond_s", "cond. scoring s per 1,000 people"),
        ],
    )


def markdown(
    results: list[dict], fcon: list[dict] | None, fcon_ran: dict | None, commands: list[str]
) -> str:
    parts = [
        "## Joint model (`benchmarks/joint.py`, issue 17)",
        "",
        "Commands: "
        + "; ".join(f"`python benchmarks/joint.py {c}`".replace(" `", "`") for c in commands)
        + ". Truth: "
        "`SyntheticSpec(n_idps=D, dependence='subgroup')` (a latent subgroup shared by all "
        "IDPs, its share growing with age; coupling growing with age), "
        f"`simulate(spec, {N_TRAIN}, seed={TRAIN_SEED})` for training, seed {TEST_SEED} for "
        f"{N_TEST} held-out controls. normcore: default settings, seed 0, fitted one at a "
        "time with one thread on a CPU shared with other jobs (fit times are upper bounds; "
        "*fit CPU s* is the process's CPU time). The Gaussian copula peer: z ~ N(0, R), R the "
        "correlation of the same model's z-scores of the training people, over the model's "
        "own margins. Each (IDPs, backbone) run is its own process (`--append` adds or "
        "replaces one and keeps the others), so each subsection says when and with which code "
        "it ran (the line under the title: when the section was last written).",
        "",
        "**FiLM vs SAINT** (the figures of the subsections below; in brackets the Gaussian "
        "copula over the same model's margins; deviation: calibrated `model.deviation`, the "
        "age quintile furthest above its 5 % critical value; atypical: share detected at a 5 % "
        "false-positive rate; imputed-band error: mean |F_true(imputed q_p) - p| with 10 % of "
        "cells blanked; scoring: `model.score(given=5 IDPs)`).",
        "",
        summary_table(results),
        "",
    ]
    for r in results:
        if "not_run" in r:
            continue
        head = (
            f"### {r['dims']} IDPs, {r['backbone']} (fit {r['fit_s']:.0f} s wall, "
            f"{r['fit_cpu_s']:.0f} s CPU{', cached' if r['reused_fit'] else ''})"
        )
        if "ran" in r:
            head += f"\n\n*Ran {r['ran']}; code {_commit(r['code'])}.*"
        dr = r["draws"]
        parts += [
            head,
            "",
            f"**1. Joint draws at ages {dr['ages']}** ({dr['n']} true draws; energy "
            "distance `metrics.energy_distance` and correlation error on the model's "
            "z-scale). normcore / copula energy ratio: "
            f"{dr['ratio_model_to_copula']:.2f} (target <= 0.6)."
            + _unscored_note(dr.get("unscored", {})),
            "",
            common.markdown_table(
                dr["rows"], [("draws", "draws"), ("energy", "energy"), ("corr_err", "corr. err")]
            ),
            "",
            "**2. Deviation of held-out controls by age quintile** (one-sample KS of "
            "deviation centiles vs U(0, 1); *crit.*: the 5 % critical value at that n). "
            "*pooled*: ranked among the model's draws of every age, one correlation "
            "(the reference before issue 17 item 5, rebuilt from this model's draws as "
            "it was built); *now*: per grid age.",
            "",
            common.markdown_table(
                r["deviation"],
                [
                    ("reference", "reference"),
                    ("band", "ages"),
                    ("n", "n"),
                    ("ks", "KS"),
                    ("ks_critical", "crit."),
                    ("above_95", "share > 95th"),
                    ("within_noise", "within noise"),
                ],
            ),
            "",
            "**3. Atypical combinations** (`simulate_atypical`, every margin the "
            f"controls'; {N_TEST} each): share flagged at the threshold that flags 5 % "
            "of the held-out controls. The denoising loss and ELBO are the diffusion "
            f"model's own, over {DENOISING_STEPS} noise levels x {DENOISING_NOISE} "
            "noise draws; kNN: squared distance to the "
            f"{KNN_K}th nearest of one model draw per training person within "
            f"{KNN_WINDOW:.0f} years. *Without a score*: a person with an IDP outside its "
            "domain (e.g. a negative volume), which normcore leaves unscored (—: not counted "
            "in that run).",
            "",
            common.markdown_table(
                r["atypical"],
                [("measure", "measure")]
                + [(k, k) for k in ATYPICAL_KINDS]
                + [("unscored", "people without a score (left out)")],
            ),
            "",
        ]
        if "conditional" in r:
            c = r["conditional"]
            parts += [
                f"**4. Conditional centiles given {', '.join(c['given'])}** "
                f"(`model.score(test, given=...)`, {c['seconds']:.0f} s wall"
                + (f", {c['cpu_seconds']:.0f} s CPU" if "cpu_seconds" in c else "")
                + f" for {c.get('people', N_TEST)} people): mean |centile - exact "
                "conditional centile| and mean PIT KS over the other IDPs; the exact "
                "conditional CDF's own PIT KS "
                f"(noise): {c['true_pit_ks']:.3f}.",
                "",
                common.markdown_table(
                    c["rows"],
                    [
                        ("model", "model"),
                        ("centile_err", "\\|centile − true\\|"),
                        ("pit_ks", "PIT KS"),
                    ],
                ),
                "",
            ]
        if "blanked" in r:
            b = r["blanked"]
            dev = (
                f"deviation KS over present IDPs, {b['deviation_n_partial']} people with a "
                f"blank: {b['deviation_ks_partial']:.3f}"
                if "deviation_ks_partial" in b
                else f"deviation over present IDPs not available ({b.get('deviation_error')})"
            )
            parts += [
                f"**5. {BLANK_SHARE:.0%} of held-out cells blanked** ({b['cells']} cells, "
                f"`model.score` {b['seconds']:.0f} s wall"
                + (f", {b['cpu_seconds']:.0f} s CPU" if "cpu_seconds" in b else "")
                + "): imputed quantiles "
                f"{b['probs']} against the exact conditional law given the present "
                f"cells, mean |F_true(imputed q_p) - p| = {b['band_err']:.1f} centile "
                f"points; hidden values inside the 50 % / 96 % bands: model "
                f"{_shares(b['coverage_model'])}, Gaussian copula "
                f"{_shares(b['coverage_copula'])} "
                f"(copula PIT KS {b['copula_pit_ks']:.3f}); {dev}.",
                "",
            ]
        if "blanked_error" in r:
            parts += [
                f"**5. {BLANK_SHARE:.0%} of held-out cells blanked**: `model.score` of the "
                f"table with blank cells failed: `{r['blanked_error']}`.",
                "",
            ]
    if fcon:
        parts += [
            "### fcon1000 (demo IDPs, held-out half): deviation by age quintile",
            "",
            f"*Ran {fcon_ran['ran']}; code {_commit(fcon_ran['code'])}.*" if fcon_ran else "",
            "",
            f"normcore film fitted on the demo's training half ({fcon[0]['fit_s']:.0f} s "
            "wall, the package defaults); beside it the shipped demo model, fitted on the same "
            "half with the demo's settings.",
            "",
            common.markdown_table(
                fcon,
                [
                    ("reference", "reference"),
                    ("band", "ages"),
                    ("n", "n"),
                    ("ks", "KS"),
                    ("ks_critical", "crit."),
                    ("above_95", "share > 95th"),
                    ("within_noise", "within noise"),
                ],
            ),
            "",
        ]
    return "\n".join(parts)


def _save(
    results: list[dict], fcon: list[dict] | None, fcon_ran: dict | None, commands: list[str]
) -> None:
    common.write_section(
        "joint",
        markdown(results, fcon, fcon_ran, commands),
        {
            "synthetic": results,
            "fcon": fcon,
            "fcon_ran": fcon_ran,
            "quick": QUICK,
            "commands": commands,
        },
    )


@contextmanager
def _section_lock() -> Iterator[None]:
    """Held while results/joint.json is read and rewritten, so that two `--append` runs in
    parallel each keep the other's entry."""
    common.OUT.mkdir(parents=True, exist_ok=True)
    with open(common.OUT / "joint.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _store(entry: dict | None, fcon: list[dict] | None, command: str, append: bool) -> None:
    """Write the section with `entry` (a synthetic run) and/or `fcon` added. With `append`,
    the entries of results/joint.json for other (IDPs, backbone) and its fcon part (unless
    `fcon` is given) are kept; otherwise this process's own results replace them."""
    with _section_lock():
        path = common.RESULTS / "joint.json"
        previous = json.loads(path.read_text()) if append and path.exists() else {}
        results = previous.get("synthetic") or []
        if entry is not None:
            key = (entry["dims"], entry["backbone"])
            results = [r for r in results if (r["dims"], r["backbone"]) != key] + [entry]
        commands = list(previous.get("commands") or [])
        if command not in commands:
            commands.append(command)
        if fcon is None:
            fcon, fcon_ran = previous.get("fcon"), previous.get("fcon_ran")
        else:
            fcon_ran = _ran()
        _save(results, fcon, fcon_ran, commands)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", default="film")
    p.add_argument("--dims", default="20")
    p.add_argument("--no-fcon", action="store_true")
    p.add_argument(
        "--fcon-only",
        action="store_true",
        help="rerun the fcon1000 part only, keeping the synthetic results of results/joint.json",
    )
    p.add_argument(
        "--append",
        action="store_true",
        help="keep results/joint.json's other (IDPs, backbone) entries and its fcon part "
        "unless rerun; safe with another --append run in parallel",
    )
    p.add_argument(
        "--not-run",
        metavar="IDPS,BACKBONE,REASON",
        help="record an entry that was not run, with the measured reason (implies --append)",
    )
    args = p.parse_args(argv)
    command = " ".join(shlex.quote(a) for a in argv)
    append = args.append or args.fcon_only or args.not_run is not None
    if args.not_run is not None:
        dims, backbone, reason = args.not_run.split(",", 2)
        # the reason is the table's cell; the command names the row only
        command = f"--not-run '{dims},{backbone},REASON'"
        _store({"dims": int(dims), "backbone": backbone, "not_run": reason}, None, command, True)
        return 0
    if not append:
        _store(None, None, command, False)
    for dims in [] if args.fcon_only else [int(d) for d in args.dims.split(",")]:
        for backbone in args.backbones.split(","):
            entry = run_synthetic(5 if QUICK else dims, backbone)
            common.OUT.mkdir(parents=True, exist_ok=True)
            (common.OUT / f"joint-{entry['dims']}-{backbone}.json").write_text(
                json.dumps(entry, indent=2, default=common._json_default)
            )
            _store(entry, None, command, True)
    if not args.no_fcon:
        log("fcon")
        _store(None, fcon_deviation(), command, True)
    log("joint done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
