"""normcore: normative modelling of brain-imaging measures with one conditional diffusion model.

The public API is small: read a table, describe its columns with a Schema, fit a
NormativeModel, then score people (centiles, z) and draw centile charts.

Glossary (names in the code follow it)
--------------------------------------
raw values
    An IDP as the table gives it, in its own units (mm, mm^3): "user units".
standardised values
    Raw values (or, for a positive IDP the first stage puts on the log scale, their
    logs) less the training mean, over the training SD, per IDP (`IDPTransform`).
residuals
    Standardised values with the first stage's mean and spread in age, sex and site
    removed: (y - m(x)) / s(x) (`LocationScale`).
normal scores
    Residuals mapped through their quantile function at the person's age to a near
    standard normal (`AgeShape`); the first stage's output, what the denoiser models and
    what the reference table tabulates. Also Phi^-1 of ranks (`numeric.rank_normal_scores`).
probability levels
    Probabilities in (0, 1) at which quantiles are tabled or asked for
    (`reference.PROBABILITY_LEVELS`, the `quantiles=` argument of `centiles`).
z-levels
    The normal scores Phi^-1(p) of probability levels (`reference.Z_LEVELS`).
centile
    100 x the model's probability of a value at or below the person's own, given their
    covariates (0-100).
z
    Phi^-1(centile / 100): a person's value placed in the model's conditional law, read
    from the reference table (`reference.z_of_scores`); clipped to +-6.
level
    A category of a categorical covariate (a sex, a site); code 0 is "unknown".
deviation
    The squared Mahalanobis distance of a person's z across IDPs, and its centile among
    model samples with the same levels.
new-person spread
    How the first stage's normal scores of people it did not see are spread (a scaled
    Student-t), applied to the model's draws.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from normcore.errors import BundleError, DataError, NotFittedError

if TYPE_CHECKING:
    from normcore.data import read_table
    from normcore.model import NormativeModel, __version__
    from normcore.schema import Schema

_LAZY = {
    "NormativeModel": "normcore.model",
    "__version__": "normcore.model",
    "Schema": "normcore.schema",
    "read_table": "normcore.data",
}
"""Public names loaded on first use (PEP 562), so that `import normcore` and the command
line's `--help` do not load torch and pandas; `from normcore import NormativeModel`
loads them then."""

__all__ = [
    "BundleError",
    "DataError",
    "NormativeModel",
    "NotFittedError",
    "Schema",
    "read_table",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'normcore' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
