"""Centiles of IDPs given other IDPs, and bands of IDPs a person lacks, from conditional draws.

The reference table answers "where does this value fall among people of this age, sex and
site"; a clinician also asks "... and this head size" or "... and the rest of this brain",
and a table may lack some IDPs of a person. One masked denoiser answers every such question
(CSDI-style random conditioning masks; normcore.train.conditioning_masks): for each person,
`DRAWS` draws of the IDPs not given are made with the given IDPs' normal scores clamped
(JointModel.draw_given), and

- the conditional centile of an IDP not given is the share of its draws below the person's
  normal score, read from a kernel-smoothed CDF (`smoothed_cdf`), with its Monte-Carlo
  standard error;
- the band of an IDP the person lacks is its draws' quantiles (`draw_quantiles`).

Everything is in the first stage's normal-score units: the first stage maps values to
scores and bands back to values at the person's own covariates, as for the reference
table, and a new person's scores, spread wider than the training people's the denoiser
learned from (first_stage.NewPersonSpread), are put on the training people's scale before
they meet the draws. Why draws and not a table: a given set and its values are the person's own, so
nothing can be tabulated in advance; the cost is DRAWS x sampling steps network passes per
person, batched over people (README, "Conditional centiles").
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

from normcore.errors import DataError
from normcore.joint import JointModel
from normcore.reference import Z_BOUND

if TYPE_CHECKING:
    from normcore.first_stage import NewPeopleStage

DRAWS = 400
"""Conditional draws per person: with the smoothed CDF, a centile's Monte-Carlo standard
error is at most about 2.5 points and 1.3 on average (README, "Conditional centiles")."""
PASS_ROWS = 4096
"""Draws per network pass: about 10 people's. The elementwise passes of a block (LayerNorm,
FiLM, SiLU) are memory-bound, and a (4096, 128) float32 activation is 2 MB, a core's L2
cache here: passes of 8,000 rows ran slower per row on this 2-core CPU, and passes of a
few hundred add per-pass overhead."""


def conditional_draws(
    joint: JointModel,
    age_z: np.ndarray,
    codes: np.ndarray,
    scores: np.ndarray,
    given: np.ndarray,
    draws: int = DRAWS,
    seed: int = 0,
) -> np.ndarray:
    """`draws` draws (n, draws, D) of each row's normal scores given its cells marked in
    `given` (n, D) bool, whose `scores` (n, D) are used (other cells may be nan).

    People are drawn in blocks of about PASS_ROWS draws, so memory stays bounded and
    people who share a given set share each network pass.
    """
    n, d = scores.shape
    out = np.empty((n, draws, d))
    block = max(1, PASS_ROWS // draws)
    values = np.where(given, scores, 0.0)
    for b, s in enumerate(range(0, n, block)):
        rows = slice(s, min(s + block, n))
        out[rows] = joint.draw_given(
            age_z[rows], codes[rows], given[rows], values[rows], seed + b, draws
        )
    return out


def smoothed_cdf(draws: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P(X <= at) per row and IDP from draws (n, K, D) of X, and its Monte-Carlo standard
    error: both (n, D).

    A Gaussian kernel (Silverman's bandwidth h = 0.9 min(sd, IQR / 1.34) K^-1/5) turns the
    share of draws below a value into a smooth function of it, with less Monte-Carlo error
    than a count of K draws. The draws are first pulled towards their mean by
    1 / sqrt(1 + h^2 / sd^2), so that the smoothed law keeps the draws' variance instead of
    adding h^2 to it (Jones 1991, "On correcting for variance inflation in kernel density
    estimation", Comput. Stat. Data Anal. 11:3). The error is the standard deviation of the
    K kernel terms over sqrt(K).
    """
    k = draws.shape[1]
    mean = draws.mean(axis=1, keepdims=True)
    sd = draws.std(axis=1, ddof=1, keepdims=True)
    q75, q25 = np.quantile(draws, [0.75, 0.25], axis=1, keepdims=True)
    spread = np.minimum(sd, (q75 - q25) / 1.349)
    h = np.maximum(0.9 * np.where(spread > 0, spread, sd) * k**-0.2, 1e-6)
    pulled = mean + (draws - mean) / np.sqrt(1.0 + (h / np.maximum(sd, 1e-12)) ** 2)
    with np.errstate(over="ignore"):  # a given cell's draws are all equal: h is tiny
        terms = ndtr((at[:, None, :] - pulled) / h)
    return terms.mean(axis=1), terms.std(axis=1, ddof=1) / np.sqrt(k)


def z_of_probabilities(p: np.ndarray) -> np.ndarray:
    """z = Phi^-1(p), clipped to +-Z_BOUND (nan stays nan)."""
    lo = ndtr(-Z_BOUND)
    with np.errstate(invalid="ignore"):
        return ndtri(np.clip(p, lo, 1.0 - lo))


def draw_quantiles(draws: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Quantiles (n, P, D) of draws (n, K, D) at probabilities `probs` (P,)."""
    return np.moveaxis(np.quantile(draws, probs, axis=1), 0, 1)


def given_set(idps: Sequence[str], given: Sequence[str] | str | None) -> np.ndarray:
    """(D,) bool of the IDPs named in `given` (a list, or one comma-separated text), or
    all False for None or an empty list; unknown names and a set that leaves no IDP to
    score are a DataError naming them."""
    if given is None:
        return np.zeros(len(idps), dtype=bool)
    names = [n.strip() for n in given.split(",")] if isinstance(given, str) else list(given)
    names = [str(n) for n in names if str(n).strip()]
    unknown = [n for n in dict.fromkeys(names) if n not in idps]
    if unknown:
        hints = []
        for name in unknown[:5]:
            close = difflib.get_close_matches(name, list(idps), n=2, cutoff=0.6)
            hints.append(f"'{name}'" + (f" (did you mean {' or '.join(close)}?)" if close else ""))
        raise DataError(
            f"The given set names {len(unknown)} IDP(s) this model does not have: "
            f"{', '.join(hints)}. Given IDPs must be among the model's {len(idps)} IDPs."
        )
    chosen = np.isin(np.asarray(idps, dtype=object), np.asarray(names, dtype=object))
    if chosen.all():
        raise DataError(
            f"The given set names all {len(idps)} IDPs of the model, so no IDP is left to "
            "score given the others. Leave at least one IDP out of it."
        )
    return chosen


@dataclass(frozen=True)
class ConditionalScores:
    """What conditional draws answer for a table's people, in normal-score units."""

    probability: np.ndarray
    """(n, D) conditional P(score <= the person's) of each present IDP not conditioned
    on (nan elsewhere)."""
    se: np.ndarray
    """(n, D) its Monte-Carlo standard error."""
    bands: np.ndarray
    """(n, P, D) conditional quantiles of each missing IDP (nan elsewhere)."""
    condition: np.ndarray
    """(n, D) bool: the cells each row was conditioned on."""
    missing: np.ndarray
    """(n, D) bool: the cells with no usable score (blank, no column, or implausible)."""


def score_given(
    joint: JointModel,
    age_z: np.ndarray,
    codes: np.ndarray,
    scores: np.ndarray,
    chosen: np.ndarray,
    probs: np.ndarray,
    draws: int = DRAWS,
    seed: int = 0,
) -> ConditionalScores:
    """Conditional centiles and the bands of missing IDPs for new people's first-stage
    `scores` (n, D), nan where a person lacks an IDP. The draws are made on the training
    people's scale, which the denoiser learned: the scores of the rows drawn are put on it
    first (`NewPersonSpread.as_training_scores`) and the bands taken back from it.

    With a given set (`chosen`, (D,) bool, not all False) every row is conditioned on the
    given IDPs it has, and its other present IDPs get conditional centiles. Without one,
    only rows that lack an IDP are drawn, conditioned on every IDP they have. Either way a
    missing IDP gets the quantiles at `probs` of its conditional draws, when the model was
    trained with masks (else no band: `JointModel.draw_given` needs them).
    """
    present = np.isfinite(scores)
    condition = present & chosen if chosen.any() else present
    n, d = scores.shape
    probability, se = np.full((n, d), np.nan), np.full((n, d), np.nan)
    bands = np.full((n, len(probs), d), np.nan)
    if chosen.any():
        rows = np.arange(n)
    elif joint.conditional:
        rows = np.flatnonzero(~present.all(axis=1))
    else:
        # A model trained without masks cannot draw given some IDPs: its people with
        # missing IDPs keep their present IDPs' centiles, and the missing ones no band.
        rows = np.empty(0, dtype=int)
    if len(rows):
        trained = joint.spread.as_training_scores(np.nan_to_num(scores[rows]))
        drawn = conditional_draws(
            joint, age_z[rows], codes[rows], trained, condition[rows], draws, seed
        )
        if chosen.any():
            p, e = smoothed_cdf(drawn, trained)
            scored = present[rows] & ~condition[rows]
            probability[rows] = np.where(scored, p, np.nan)
            se[rows] = np.where(scored, e, np.nan)
        missing = ~present[rows]
        band = joint.spread.from_training_scores(draw_quantiles(drawn, probs))
        bands[rows] = np.where(missing[:, None, :], band, np.nan)
    return ConditionalScores(probability, se, bands, condition, ~present)


def with_conditional_columns(
    table: pd.DataFrame,
    idps: Sequence[str],
    chosen: np.ndarray,
    result: ConditionalScores,
    band_values: np.ndarray,
    probs: np.ndarray,
) -> pd.DataFrame:
    """The long score table (one row per person and IDP, `outputs.score_table`) with the
    conditional answers in place: conditional `centile`, `z` and `centile_se` for the
    IDPs scored given others; `given` (the IDPs each row was conditioned on, when a given
    set was asked for); `missing` (the person's missing IDPs, implausible ones included);
    `imputed_qNN` (a missing IDP's conditional quantiles in the table's units,
    `band_values` (n, P, D)); the given IDPs' own rows dropped."""
    n, d = result.condition.shape
    out = table.copy()
    names = np.asarray(idps, dtype=object)
    if chosen.any():
        cond = ~np.isnan(result.probability)
        p = result.probability.reshape(-1)
        at = cond.reshape(-1)
        z = z_of_probabilities(p)
        out.loc[at, "centile"] = 100.0 * p[at]
        out.loc[at, "z"] = z[at]
        out.loc[at, "centile_se"] = 100.0 * result.se.reshape(-1)[at]
        out.loc[at, "beyond_reference"] = np.abs(z[at]) > 3.0
        given_text = [",".join(names[row]) for row in result.condition]
    else:
        given_text = [""] * n
    out["given"] = np.repeat(np.asarray(given_text, dtype=object), d)
    missing = result.missing
    lacking = missing.reshape(-1)
    out.loc[lacking, ["centile", "z", "centile_se"]] = np.nan
    out.loc[lacking, "beyond_reference"] = False
    out["missing"] = np.repeat(
        np.asarray([",".join(names[row]) for row in missing], dtype=object), d
    )
    for k, prob in enumerate(probs):
        out[f"imputed_q{round(100 * prob):02d}"] = band_values[:, k, :].reshape(-1)
    return out[~np.tile(chosen, n)].reset_index(drop=True)


def score_table_given(
    table: pd.DataFrame,
    idps: Sequence[str],
    joint: JointModel,
    stage: NewPeopleStage,
    age_z: np.ndarray,
    codes: np.ndarray,
    values: np.ndarray,
    implausible: np.ndarray,
    chosen: np.ndarray,
    probs: np.ndarray,
    seed: int,
) -> pd.DataFrame:
    """`with_conditional_columns` of the long score `table` for raw `values` (n, D), nan
    where a person lacks an IDP, scored through the first `stage` as it maps new people,
    at standardised ages `age_z` and `codes`.

    An `implausible` (n, D) cell (`plausibility.implausible_cells`) is treated as
    missing: it is neither conditioned on (a value no real person has would drag every
    other IDP's conditional law with it) nor scored, and it gets its imputed band.
    """
    present = np.isfinite(values) & ~implausible
    # Only rows that are drawn from (everyone with a given set, else those lacking an
    # IDP) need their first-stage scores; of the others `score_given` reads only which
    # IDPs are present, so the first stage is not run for them.
    drawn = np.full(len(values), chosen.any()) | ~present.all(axis=1)
    scores = np.where(present, 0.0, np.nan)
    if drawn.any():
        mapped = stage.transform(values[drawn], age_z[drawn], codes[drawn])
        scores[drawn] = np.where(present[drawn], mapped, np.nan)
    result = score_given(joint, age_z, codes, scores, chosen, probs, seed=seed)
    n, p, d = result.bands.shape
    at = np.repeat(np.arange(n), p)
    flat = result.bands.reshape(n * p, d)
    bands = flat  # all nan when nobody lacks an IDP: nothing to map back to values
    if not np.isnan(flat).all():
        bands = np.where(
            np.isnan(flat), np.nan, stage.inverse(np.nan_to_num(flat), age_z[at], codes[at])
        )
    return with_conditional_columns(table, idps, chosen, result, bands.reshape(n, p, d), probs)
