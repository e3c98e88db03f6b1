"""Fit a peer normative model (PCNtoolkit BLR/HBR, or GAMLSS) and write per-person centiles.

Why this exists: the side-by-side benchmark (issue 3) and the site-transfer benchmark
(issue 5) must score normcore and its peers with *identical* metrics on *identical*
splits. The peers need their own heavy dependencies (PCNtoolkit pulls PyMC/PyTensor,
`gamlss` is a pure-Python port of R's gamlss), which must not leak into the app's venv.
So this script runs in the separate benchmark venv (see benchmarks/requirements-peers.txt),
fits one peer on TRAIN, and writes only what the metrics need: for every test person and
IDP, the model's predictive CDF at that person's own covariates (as a centile) and its
normal score. The lead's benchmark script, in the main venv, computes every metric from
that file, exactly as it does for normcore.

Usage (benchmark venv, one heavy job at a time, OMP_NUM_THREADS=1):
    python benchmarks/peers.py --model blr --train TRAIN.csv --test TEST.csv \
        --idps a,b,c --out PRED.csv [--transfer-adapt ADAPT.csv] [--max-idps N]

Output:
    PRED.csv   long table: row (0-based row of TEST), idp, centile (0-100), z
               (z = probit(centile/100); NaN for an IDP that failed)
    PRED.train.csv  (--score-train) the same for the TRAIN rows, untransferred model
    PRED.json  model, settings, package versions, n_train/n_test/n_adapt, the IDPs
               asked for and used, fit_seconds / predict_seconds (totals and per IDP),
               and per-IDP status ("ok" | "failed" | "fallback: ...") with the error text.

Every IDP is fitted as its own model, so a failure (non-convergence, a sampler error,
a transfer that cannot be made) costs only that IDP and is recorded, never fatal.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from scipy.interpolate import BSpline

# Centiles are clipped to this open interval before the probit, so a model that puts
# a person beyond its numerical range gives a large finite z instead of +-inf.
CENTILE_EPS = 1e-9


@dataclass
class Covariates:
    """Column names of the covariates; the same in TRAIN, TEST and ADAPT."""

    age: str = "age"
    sex: str = "sex"
    site: str = "site"


@dataclass
class IdpResult:
    """What one IDP's fit produced: the test CDF values and how it went."""

    cdf: np.ndarray
    fit_seconds: float
    predict_seconds: float
    status: str = "ok"
    error: str = ""
    info: dict = field(default_factory=dict)
    train_cdf: np.ndarray | None = None


def read_csv(path: str, cov: Covariates) -> pd.DataFrame:
    """Read a table keeping sex and site as text, so 0/1 sex codes and site names are
    categories (levels) rather than numbers, in every file alike."""
    df = pd.read_csv(path, dtype={cov.sex: str, cov.site: str})
    missing = [c for c in (cov.age, cov.sex, cov.site) if c not in df.columns]
    if missing:
        raise SystemExit(f"{path}: missing covariate column(s) {missing}")
    df[cov.sex] = df[cov.sex].str.strip()
    df[cov.site] = df[cov.site].str.strip()
    return df.reset_index(drop=True)


def probit(cdf: np.ndarray) -> np.ndarray:
    """Normal score of a CDF value, clipped so it stays finite."""
    return stats.norm.ppf(np.clip(cdf, CENTILE_EPS, 1 - CENTILE_EPS))


# --------------------------------------------------------------------------- PCNtoolkit


def _quiet_pcntoolkit() -> None:
    """PCNtoolkit prints a line per step and per IDP; for 200 IDPs that buries the log."""
    from pcntoolkit.util.output import Output

    Output._show_messages = False
    Output._show_warnings = False


def _normdata(name: str, df: pd.DataFrame, idp: str, cov: Covariates, sex_as: str):
    """One IDP as a PCNtoolkit NormData. Sex is a batch effect (the PCNtoolkit tutorials'
    choice) or, with --sex-as covariate, a 0/1 covariate beside age (then only site is a
    batch effect, so a transfer need not see every sex x site cell)."""
    from pcntoolkit import NormData

    frame = pd.DataFrame(
        {
            "age": df[cov.age].astype(float).to_numpy(),
            "site": df[cov.site].to_numpy(),
            "y": df[idp].astype(float).to_numpy(),
        }
    )
    if sex_as == "covariate":
        frame["sex"] = (df[cov.sex] == _SEX_LEVELS[-1]).astype(float).to_numpy()
        covariates, batch = ["age", "sex"], ["site"]
    else:
        frame["sex"] = df[cov.sex].to_numpy()
        covariates, batch = ["age"], ["sex", "site"]
    frame = frame.rename(columns={"y": idp})
    return NormData.from_dataframe(
        name, frame, covariates=covariates, batch_effects=batch, response_vars=[idp]
    )


_SEX_LEVELS: list[str] = []  # sorted sex levels of TRAIN; set once in main()


def _blr_template(args: argparse.Namespace):
    """Warped (sinh-arcsinh), heteroscedastic BLR with cubic B-splines of age in the mean
    and the variance and fixed batch-effect intercepts: PCNtoolkit's recommended w-BLR."""
    from pcntoolkit import BLR, BsplineBasisFunction

    return BLR(
        name="template",
        fixed_effect=True,
        heteroskedastic=True,
        warp_name="WarpSinhArcsinh",
        warp_reparam=True,
        basis_function_mean=BsplineBasisFunction(basis_column=0, degree=3, nknots=5),
        basis_function_var=BsplineBasisFunction(basis_column=0, degree=3, nknots=5),
        n_iter=args.blr_iter,
        optimizer="l-bfgs-b",
    )


def _hbr_template(args: argparse.Namespace):
    """HBR with a SHASHb likelihood: B-spline mean with a random intercept per batch
    effect, B-spline (softplus) spread, constant skew (epsilon) and tail (delta), with
    the priors of PCNtoolkit's own SHASHb examples."""
    from pcntoolkit import HBR, BsplineBasisFunction, SHASHbLikelihood, make_prior

    mu = make_prior(
        linear=True,
        slope=make_prior(dist_name="Normal", dist_params=(0.0, 10.0)),
        intercept=make_prior(
            random=True,
            mu=make_prior(dist_name="Normal", dist_params=(0.0, 1.0)),
            sigma=make_prior(
                dist_name="Normal",
                dist_params=(0.0, 1.0),
                mapping="softplus",
                mapping_params=(0.0, 3.0),
            ),
        ),
        basis_function=BsplineBasisFunction(basis_column=0, nknots=5, degree=3),
    )
    sigma = make_prior(
        linear=True,
        slope=make_prior(dist_name="Normal", dist_params=(0.0, 2.0)),
        intercept=make_prior(dist_name="Normal", dist_params=(1.0, 1.0)),
        basis_function=BsplineBasisFunction(basis_column=0, nknots=5, degree=3),
        mapping="softplus",
        mapping_params=(0.0, 3.0),
    )
    epsilon = make_prior(dist_name="Normal", dist_params=(0.0, 1.0))
    delta = make_prior(
        dist_name="Normal",
        dist_params=(1.0, 1.0),
        mapping="softplus",
        mapping_params=(0.0, 3.0, 0.6),
    )
    return HBR(
        name="template",
        likelihood=SHASHbLikelihood(mu, sigma, epsilon, delta),
        draws=args.hbr_draws,
        tune=args.hbr_tune,
        chains=args.hbr_chains,
        cores=1,
        nuts_sampler="nutpie",
        progressbar=False,
    )


def _pcn_fit(template, train_nd, save_dir: str):
    """Fit a NormativeModel without the evaluation, plots and results files that
    NormativeModel.fit() adds (it predicts the whole training set again), so that the
    fit time measures the model, not PCNtoolkit's reporting."""
    from pcntoolkit import NormativeModel

    nm = NormativeModel(
        template,
        savemodel=False,
        evaluate_model=False,
        saveresults=False,
        saveplots=False,
        save_dir=save_dir,
        inscaler="standardize",
        outscaler="standardize",
    )
    nm.register_data_info(train_nd)
    nm.preprocess(train_nd)
    for resp in nm.response_vars:
        X, be, be_maps, Y, _ = nm.extract_data(train_nd.sel({"response_vars": resp}))
        nm[resp].fit(X, be, be_maps, Y)
    nm.is_fitted = True
    nm.postprocess(train_nd)
    return nm


def _pcn_transfer(nm, adapt_nd, save_dir: str):
    """PCNtoolkit's own transfer (each regression model's .transfer(): for BLR a per-
    batch-cell shift and scale of the predictive distribution, for HBR a re-fit with the
    reference posterior as prior), wired as NormativeModel.transfer() does but without
    its save/evaluate/plot side effects."""
    import copy

    from pcntoolkit import NormativeModel

    new = NormativeModel(
        copy.deepcopy(nm.template_regression_model),
        savemodel=False,
        evaluate_model=False,
        saveresults=False,
        saveplots=False,
        save_dir=save_dir,
        inscaler=nm.inscaler,
        outscaler=nm.outscaler,
    )
    new.covariates = copy.deepcopy(nm.covariates)
    new.inscalers = copy.deepcopy(nm.inscalers)
    new.outscalers = copy.deepcopy(nm.outscalers)
    new.response_vars = list(nm.response_vars)
    new.preprocess(adapt_nd)
    new.register_batch_effects(adapt_nd)
    for resp in new.response_vars:
        X, be, be_maps, Y, _ = new.extract_data(adapt_nd.sel({"response_vars": resp}))
        new[resp] = nm[resp].transfer(X, be, be_maps, Y)
    new.is_fitted = True
    new.postprocess(adapt_nd)
    return new


def _pcn_cdf(nm, test_nd, idp: str, kind: str) -> np.ndarray:
    """Predictive CDF of each test person's own value.

    BLR: the predictive distribution is Gaussian in the warped space, so the CDF is
    exactly Phi of PCNtoolkit's z. HBR: the posterior predictive CDF is the average
    over posterior draws of each draw's CDF, not Phi of the average z (what PCNtoolkit
    reports as z), so it is computed draw by draw with the likelihood's own forward map.
    """
    if not nm.check_compatibility(test_nd):
        raise ValueError("test rows have batch-effect levels (sex/site) the model has not seen")
    if kind == "blr":
        nm.compute_zscores(test_nd)
        return stats.norm.cdf(test_nd["Z"].sel(response_vars=idp).to_numpy())
    reg = nm[idp]
    lik = reg.likelihood
    nm.preprocess(test_nd)
    try:
        X, be, _, Y, _ = nm.extract_data(test_nd.sel({"response_vars": idp}))

        def draw_cdf(*params, **kwargs):
            return stats.norm.cdf(lik.forward(*params, **kwargs))

        cdf = reg.generic_MCMC_apply(X, be, Y, draw_cdf, {"Y": np.squeeze(Y.values)[:, None]})
    finally:
        nm.postprocess(test_nd)
    return np.asarray(cdf).reshape(-1)


def run_pcn(
    kind: str,
    train: pd.DataFrame,
    test: pd.DataFrame,
    adapt: pd.DataFrame | None,
    idp: str,
    cov: Covariates,
    args: argparse.Namespace,
    save_dir: str,
) -> IdpResult:
    """Fit (and optionally transfer) one PCNtoolkit model for one IDP and score TEST."""
    template = _blr_template(args) if kind == "blr" else _hbr_template(args)
    t0 = time.perf_counter()
    nm = ref = _pcn_fit(template, _normdata("train", train, idp, cov, args.sex_as), save_dir)
    if adapt is not None:
        nm = _pcn_transfer(ref, _normdata("adapt", adapt, idp, cov, args.sex_as), save_dir)
    t1 = time.perf_counter()
    cdf = _pcn_cdf(nm, _normdata("test", test, idp, cov, args.sex_as), idp, kind)
    t2 = time.perf_counter()
    info: dict = {}
    if kind == "hbr":
        info["max_rhat"] = _max_rhat(nm[idp].idata)
    train_cdf = None
    if args.score_train:
        # the reference model, before any transfer: TRAIN's sites are the ones it knows
        train_cdf = _pcn_cdf(ref, _normdata("train", train, idp, cov, args.sex_as), idp, kind)
    return IdpResult(
        cdf=cdf, fit_seconds=t1 - t0, predict_seconds=t2 - t1, info=info, train_cdf=train_cdf
    )


def _max_rhat(idata) -> float | None:
    """Largest R-hat over the HBR's parameters: a convergence flag for the report
    (R-hat above ~1.05 means the chains disagree)."""
    import arviz as az

    if idata is None or idata.posterior.sizes.get("chain", 1) < 2:
        return None
    names = [v for v in idata.posterior.data_vars if not v.endswith("_per_subject")]
    rhat = az.rhat(idata, var_names=names)
    # a transferred model sees one site, so its zero-sum site offsets have no free entries
    values = [float(np.nanmax(a)) for v in rhat.data_vars if (a := rhat[v].to_numpy()).size]
    return max(values) if values else None


# --------------------------------------------------------------------------- GAMLSS


def _bspline_basis(x: np.ndarray, lo: float, hi: float, interior: np.ndarray) -> np.ndarray:
    """Cubic B-spline basis of x with knots fixed on the training data, minus its first
    column (the basis sums to one and the model has an intercept). Ages outside the
    training range are clamped, i.e. the curves are held flat beyond the data instead
    of extrapolating a cubic. Fixed knots also make gamlss' 'safe prediction' re-fit
    exact (patsy's bs() would re-place its knots on the combined data)."""
    k = 3
    knots = np.concatenate([[lo] * (k + 1), interior, [hi] * (k + 1)])
    xc = np.clip(x, lo, hi)
    basis = BSpline.design_matrix(xc, knots, k, extrapolate=False).toarray()
    return basis[:, 1:]


@dataclass
class GamlssDesign:
    """Covariate columns for gamlss, built once from TRAIN (knots, levels) so that
    TEST and ADAPT rows get exactly the same encoding."""

    lo: float
    hi: float
    mu_knots: np.ndarray
    sigma_knots: np.ndarray
    sex_levels: list[str]
    site_levels: list[str]

    @classmethod
    def from_train(cls, df: pd.DataFrame, cov: Covariates) -> GamlssDesign:
        age = df[cov.age].astype(float).to_numpy()
        sites = df[cov.site].value_counts()
        return cls(
            lo=float(age.min()),
            hi=float(age.max()),
            mu_knots=np.quantile(age, [0.25, 0.5, 0.75]),
            sigma_knots=np.quantile(age, [0.5]),
            sex_levels=sorted(df[cov.sex].unique()),
            # the most common site is the reference level of the treatment coding
            site_levels=list(sites.index),
        )

    def frame(self, df: pd.DataFrame, cov: Covariates) -> tuple[pd.DataFrame, dict[str, list[str]]]:
        age = df[cov.age].astype(float).to_numpy()
        out: dict[str, np.ndarray] = {}
        for i, col in enumerate(_bspline_basis(age, self.lo, self.hi, self.mu_knots).T):
            out[f"am{i}"] = col
        for i, col in enumerate(_bspline_basis(age, self.lo, self.hi, self.sigma_knots).T):
            out[f"as{i}"] = col
        for i, lev in enumerate(self.sex_levels[1:]):
            out[f"sx{i}"] = (df[cov.sex] == lev).astype(float).to_numpy()
        for i, lev in enumerate(self.site_levels[1:]):
            out[f"st{i}"] = (df[cov.site] == lev).astype(float).to_numpy()
        frame = pd.DataFrame(out)
        groups = {
            "mu_age": [c for c in frame if c.startswith("am")],
            "sigma_age": [c for c in frame if c.startswith("as")],
            "sex": [c for c in frame if c.startswith("sx")],
            "site": [c for c in frame if c.startswith("st") and frame[c].any()],
        }
        return frame, groups


def _gamlss_fit_one(
    frame: pd.DataFrame, groups: dict[str, list[str]], with_site: bool, family: str, n_cyc: int
):
    """One GAMLSS fit: mu ~ spline(age) + sex [+ site], sigma ~ spline(age) + sex,
    nu ~ 1, tau ~ 1 (SHASHo: skew and tail weight; BCT: Box-Cox power and t tail)."""
    import gamlss as gl

    mu_terms = groups["mu_age"] + groups["sex"] + (groups["site"] if with_site else [])
    sigma_terms = groups["sigma_age"] + groups["sex"]
    fam = gl.SHASHo() if family == "SHASHo" else gl.BCT()
    # RS alone oscillates for SHASHo once the ~20 site dummies are in (measured on
    # fcon1000: no convergence in 200 cycles); mixed(10, n) = 10 RS cycles then CG, the
    # R package's usual remedy, converges in ~60-100 cycles.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = gl.gamlss(
            "y ~ " + " + ".join(mu_terms),
            sigma_formula="~ " + " + ".join(sigma_terms),
            nu_formula="~1",
            tau_formula="~1",
            family=fam,
            data=frame,
            method=gl.mixed(10, n_cyc),
            n_cyc=n_cyc,
            trace=False,
        )
    return model


def run_gamlss(
    train: pd.DataFrame,
    test: pd.DataFrame,
    adapt: pd.DataFrame | None,
    idp: str,
    cov: Covariates,
    args: argparse.Namespace,
) -> IdpResult:
    """Fit GAMLSS for one IDP and score TEST.

    gamlss has no transfer of its own (and the Python port has no random effects), so
    with --transfer-adapt the adaptation rows join the training rows and the new site
    becomes one more fixed site level: the usual GAMLSS practice for a new scanner.
    Site is tried as a factor first; if that fit fails or does not converge, the model
    is fitted without site and the IDP's status says so.
    """
    import gamlss as gl

    fit_rows = train if adapt is None else pd.concat([train, adapt], ignore_index=True)
    design = GamlssDesign.from_train(fit_rows, cov)
    frame, groups = design.frame(fit_rows, cov)
    test_frame, _ = design.frame(test, cov)
    y = fit_rows[idp].astype(float).to_numpy()
    # Rescale y (the CDF is unchanged): SHASHo works on standardised values, BCT (y > 0)
    # on y / median, so that volumes of ~1e6 mm^3 do not meet a start value of 1.
    if args.gamlss_family == "SHASHo":
        loc, scale = float(np.mean(y)), float(np.std(y))
    else:
        if np.any(y <= 0):
            raise ValueError("BCT needs positive values")
        loc, scale = 0.0, float(np.median(y))
    frame["y"] = (y - loc) / scale
    test_frame["y"] = (test[idp].astype(float).to_numpy() - loc) / scale

    t0 = time.perf_counter()
    status, error, model = "ok", "", None
    attempts = [True, False] if groups["site"] else [False]
    for with_site in attempts:
        try:
            model = _gamlss_fit_one(
                frame, groups, with_site, args.gamlss_family, args.gamlss_cycles
            )
        except Exception as exc:  # noqa: BLE001 - any numerical failure: try the simpler model
            error = f"{type(exc).__name__}: {exc}"
            model = None
            continue
        if getattr(model, "converged", True):
            break
        error = f"did not converge in {args.gamlss_cycles} cycles"
        if with_site and len(attempts) > 1:
            model = None
    if model is None:
        raise RuntimeError(error or "no fit")
    used_site = any(t in model.mu_formula for t in groups["site"]) if groups["site"] else False
    if groups["site"] and not used_site:
        status = f"fallback: fitted without site ({error})"
    elif not getattr(model, "converged", True):
        status = f"not converged in {args.gamlss_cycles} cycles (used as is)"
    t1 = time.perf_counter()
    pfun = gl.pSHASHo if args.gamlss_family == "SHASHo" else gl.pBCT

    def score(rows: pd.DataFrame) -> np.ndarray:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params = model.predictAll(newdata=rows)
        return pfun(rows["y"].to_numpy(), **{k: params[k] for k in ("mu", "sigma", "nu", "tau")})

    cdf = score(test_frame)
    t2 = time.perf_counter()
    train_cdf = None
    if args.score_train:
        train_frame, _ = design.frame(train, cov)
        train_frame["y"] = (train[idp].astype(float).to_numpy() - loc) / scale
        train_cdf = np.asarray(score(train_frame), float)
    # A site absent from the fit rows has all site dummies 0, i.e. it is scored as the
    # reference (most common) site; say so, since PCNtoolkit refuses such rows instead.
    unseen = sorted(set(test[cov.site]) - set(fit_rows[cov.site]))
    info = {
        "site_factor": used_site,
        "converged": bool(getattr(model, "converged", True)),
        "global_deviance": float(model.G_deviance),
        "unseen_sites_scored_as_reference": unseen,
    }
    return IdpResult(
        cdf=np.asarray(cdf, float),
        fit_seconds=t1 - t0,
        predict_seconds=t2 - t1,
        status=status,
        error=error if status != "ok" else "",
        info=info,
        train_cdf=train_cdf,
    )


# --------------------------------------------------------------------------- driver


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True, choices=["blr", "hbr", "gamlss"])
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument(
        "--idps",
        default=None,
        help="comma-separated IDP columns; default: every numeric column but age/sex/site/id",
    )
    p.add_argument(
        "--out", required=True, help="long CSV of predictions; a .json with timings goes beside it"
    )
    p.add_argument(
        "--transfer-adapt",
        default=None,
        help="controls of the (new) test site: transfer the model with these rows, then score TEST",
    )
    p.add_argument(
        "--max-idps",
        type=int,
        default=None,
        help="use only the first N IDPs (a guard against runs that cannot finish)",
    )
    p.add_argument(
        "--score-train",
        action="store_true",
        help="also write PRED.train.csv: TRAIN rows scored by the (untransferred) model, e.g. "
        "to fit a Gaussian copula over the peer's z-scores on training data only",
    )
    p.add_argument("--age", default="age")
    p.add_argument("--sex", default="sex")
    p.add_argument("--site", default="site")
    p.add_argument(
        "--sex-as",
        choices=["batch", "covariate"],
        default="batch",
        help="PCNtoolkit: sex as a batch effect (default, as in its tutorials) or a 0/1 covariate",
    )
    p.add_argument("--blr-iter", type=int, default=100, help="BLR: optimiser iterations")
    p.add_argument("--hbr-draws", type=int, default=500)
    p.add_argument("--hbr-tune", type=int, default=500)
    p.add_argument("--hbr-chains", type=int, default=2)
    p.add_argument("--gamlss-family", choices=["SHASHo", "BCT"], default="SHASHo")
    p.add_argument(
        "--gamlss-cycles", type=int, default=200, help="gamlss: max CG cycles after 10 RS cycles"
    )
    return p.parse_args(argv)


def choose_idps(train: pd.DataFrame, args: argparse.Namespace, cov: Covariates) -> list[str]:
    """The IDPs asked for (checked against TRAIN), or every other numeric column."""
    if args.idps:
        idps = [s.strip() for s in args.idps.split(",") if s.strip()]
        missing = [c for c in idps if c not in train.columns]
        if missing:
            raise SystemExit(f"IDP column(s) not in TRAIN: {missing}")
        return idps
    skip = {cov.age, cov.sex, cov.site}
    return [c for c in train.columns if c not in skip and pd.api.types.is_numeric_dtype(train[c])]


def _describe(exc: BaseException) -> str:
    """Error text for the report: the message and where it was raised (file:line of the
    innermost frame), so a failure inside a peer package can be told from one here."""
    tb = [f for f in traceback.extract_tb(exc.__traceback__) if "/numpy/" not in f.filename]
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"[:500]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cov = Covariates(args.age, args.sex, args.site)
    train, test = read_csv(args.train, cov), read_csv(args.test, cov)
    adapt = read_csv(args.transfer_adapt, cov) if args.transfer_adapt else None
    asked = choose_idps(train, args, cov)
    idps = asked[: args.max_idps] if args.max_idps else asked
    for name, df in (("TEST", test), ("ADAPT", adapt)):
        if df is not None and (missing := [c for c in idps if c not in df.columns]):
            raise SystemExit(f"IDP column(s) not in {name}: {missing}")
    _SEX_LEVELS[:] = sorted(train[cov.sex].unique())

    if args.model in ("blr", "hbr"):
        _quiet_pcntoolkit()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_dir = tempfile.mkdtemp(prefix="pcn_", dir=str(out.resolve().parent))
    os.environ.setdefault("PCN_SAVE_DIR", save_dir)

    rows: list[pd.DataFrame] = []
    train_rows: list[pd.DataFrame] = []
    per_idp: dict[str, dict] = {}
    for i, idp in enumerate(idps):
        try:
            if args.model == "gamlss":
                res = run_gamlss(train, test, adapt, idp, cov, args)
            else:
                res = run_pcn(args.model, train, test, adapt, idp, cov, args, save_dir)
        except Exception as exc:  # noqa: BLE001 - a per-IDP failure is data for the report
            res = IdpResult(
                cdf=np.full(len(test), np.nan),
                fit_seconds=float("nan"),
                predict_seconds=float("nan"),
                status="failed",
                error=_describe(exc),
            )
        cdf = np.clip(res.cdf, 0.0, 1.0)
        if res.status != "failed" and not np.all(np.isfinite(cdf)):
            res.status, res.error = (
                "failed",
                f"{int((~np.isfinite(cdf)).sum())} non-finite centiles",
            )
        rows.append(
            pd.DataFrame(
                {"row": np.arange(len(test)), "idp": idp, "centile": 100.0 * cdf, "z": probit(cdf)}
            )
        )
        if args.score_train:
            tc = np.full(len(train), np.nan) if res.train_cdf is None else res.train_cdf
            tc = np.clip(tc, 0.0, 1.0)
            train_rows.append(
                pd.DataFrame(
                    {"row": np.arange(len(train)), "idp": idp, "centile": 100 * tc, "z": probit(tc)}
                )
            )
        per_idp[idp] = {
            "status": res.status,
            "error": res.error,
            "fit_seconds": round(res.fit_seconds, 4),
            "predict_seconds": round(res.predict_seconds, 4),
            **res.info,
        }
        print(
            f"[{i + 1}/{len(idps)}] {args.model} {idp}: {res.status} fit {res.fit_seconds:.2f}s "
            f"predict {res.predict_seconds:.2f}s {res.error[:120]}",
            file=sys.stderr,
            flush=True,
        )

    pd.concat(rows, ignore_index=True).to_csv(out, index=False)
    if args.score_train:
        pd.concat(train_rows, ignore_index=True).to_csv(out.with_suffix(".train.csv"), index=False)
    ok = [v for v in per_idp.values() if v["status"] != "failed"]
    summary = {
        "model": args.model,
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("train", "test", "out", "idps")
        },
        "train": str(args.train),
        "test": str(args.test),
        "transfer_adapt": args.transfer_adapt,
        "n_train": len(train),
        "n_test": len(test),
        "n_adapt": 0 if adapt is None else len(adapt),
        "idps_asked": len(asked),
        "idps_used": idps,
        "n_failed": len(idps) - len(ok),
        "fit_seconds": round(math.fsum(v["fit_seconds"] for v in ok), 3),
        "predict_seconds": round(math.fsum(v["predict_seconds"] for v in ok), 3),
        "per_idp": per_idp,
        "versions": {
            "python": platform.python_version(),
            **{
                pkg: version(pkg)
                for pkg in ("pcntoolkit", "gamlss", "pymc", "numpy", "scipy", "pandas")
            },
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2, default=str))
    shutil.rmtree(save_dir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
