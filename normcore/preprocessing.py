"""Fitted, invertible transforms between user units and the network's units.

Everything here is learned from the training table once and saved as plain JSON numbers in
the bundle, so a loaded model maps new people exactly as the fitted one did.

* `IDPTransform`: per IDP, standardise -> Yeo-Johnson -> standardise. The power step
  reduces skew (ventricles, hypointensities) so the denoiser sees near-symmetric targets;
  its lambda is kept inside (0, 2), where the inverse is defined on the whole real line, so
  every generated sample maps back to a finite value.
* `CovariateEncoder`: age standardised; each categorical covariate mapped to integer
  codes 1..K with 0 reserved for "unknown" (unseen site, missing sex). The network learns
  the unknown level through covariate dropout during training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from normcore.schema import Schema, coerce_categories

UNKNOWN = "<unknown>"
_LAMBDA_RANGE = (0.2, 1.8)


def _yeo_johnson(x: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Yeo-Johnson forward transform, column-wise lambdas in (0, 2)."""
    pos = x >= 0
    out = np.empty_like(x)
    lam_b = np.broadcast_to(lam, x.shape)
    out[pos] = ((x[pos] + 1.0) ** lam_b[pos] - 1.0) / lam_b[pos]
    lam2 = 2.0 - lam_b[~pos]
    out[~pos] = -(((1.0 - x[~pos]) ** lam2) - 1.0) / lam2
    return out


def _yeo_johnson_inverse(y: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Inverse of `_yeo_johnson`; defined for every real y when 0 < lambda < 2."""
    pos = y >= 0
    out = np.empty_like(y)
    lam_b = np.broadcast_to(lam, y.shape)
    out[pos] = (y[pos] * lam_b[pos] + 1.0) ** (1.0 / lam_b[pos]) - 1.0
    lam2 = 2.0 - lam_b[~pos]
    out[~pos] = 1.0 - (1.0 - lam2 * y[~pos]) ** (1.0 / lam2)
    return out


@dataclass
class IDPTransform:
    """Per-IDP standardise -> Yeo-Johnson -> standardise, with its exact inverse."""

    loc: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scale: np.ndarray = field(default_factory=lambda: np.ones(0))
    lam: np.ndarray = field(default_factory=lambda: np.ones(0))
    loc2: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scale2: np.ndarray = field(default_factory=lambda: np.ones(0))

    @classmethod
    def fit(cls, values: np.ndarray) -> IDPTransform:
        """Learn the transform from an (n, D) array of training values."""
        values = np.asarray(values, dtype=np.float64)
        loc = values.mean(axis=0)
        scale = values.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        u = (values - loc) / scale
        lam = np.array([stats.yeojohnson_normmax(u[:, j]) for j in range(u.shape[1])])
        lam = np.clip(lam, *_LAMBDA_RANGE)
        v = _yeo_johnson(u, lam)
        loc2 = v.mean(axis=0)
        scale2 = v.std(axis=0)
        scale2 = np.where(scale2 > 0, scale2, 1.0)
        return cls(loc, scale, lam, loc2, scale2)

    def transform(self, values: np.ndarray) -> np.ndarray:
        """User units -> network units (float64)."""
        u = (np.asarray(values, dtype=np.float64) - self.loc) / self.scale
        return (_yeo_johnson(u, self.lam) - self.loc2) / self.scale2

    def inverse(self, z: np.ndarray) -> np.ndarray:
        """Network units -> user units (float64)."""
        v = np.asarray(z, dtype=np.float64) * self.scale2 + self.loc2
        return _yeo_johnson_inverse(v, self.lam) * self.scale + self.loc

    def to_dict(self) -> dict:
        return {k: getattr(self, k).tolist() for k in ("loc", "scale", "lam", "loc2", "scale2")}

    @classmethod
    def from_dict(cls, d: dict) -> IDPTransform:
        return cls(
            **{
                k: np.asarray(d[k], dtype=np.float64)
                for k in ("loc", "scale", "lam", "loc2", "scale2")
            }
        )


@dataclass
class CovariateEncoder:
    """Age standardisation and integer codes for categorical covariates (0 = unknown)."""

    age_mean: float = 0.0
    age_sd: float = 1.0
    levels: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def fit(cls, df: pd.DataFrame, schema: Schema) -> CovariateEncoder:
        age = pd.to_numeric(df[schema.age]).to_numpy(dtype=np.float64)
        sd = float(age.std()) or 1.0
        levels = {c: sorted(coerce_categories(df[c]).unique().tolist()) for c in schema.categorical}
        return cls(float(age.mean()), sd, levels)

    @property
    def n_levels(self) -> list[int]:
        """Number of codes per categorical covariate, the unknown code included."""
        return [len(v) + 1 for v in self.levels.values()]

    def encode_age(self, age: np.ndarray) -> np.ndarray:
        return ((np.asarray(age, dtype=np.float64) - self.age_mean) / self.age_sd).astype(
            np.float32
        )

    def encode_categories(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Codes (n, K) and a boolean (n, K) mask of values the model never saw.

        Unseen values (and missing ones) get code 0, the unknown level, so a model still
        answers for a new site; the mask lets the caller say so on every row.
        """
        n = len(df)
        codes = np.zeros((n, len(self.levels)), dtype=np.int64)
        unseen = np.zeros((n, len(self.levels)), dtype=bool)
        for k, (col, lv) in enumerate(self.levels.items()):
            if col not in df.columns:
                unseen[:, k] = True
                continue
            values = coerce_categories(df[col])
            lookup = {v: i + 1 for i, v in enumerate(lv)}
            mapped = values.map(lookup)
            unseen[:, k] = mapped.isna().to_numpy() & (values != UNKNOWN).to_numpy()
            codes[:, k] = mapped.fillna(0).to_numpy(dtype=np.int64)
        return codes, unseen

    def to_dict(self) -> dict:
        return {"age_mean": self.age_mean, "age_sd": self.age_sd, "levels": self.levels}

    @classmethod
    def from_dict(cls, d: dict) -> CovariateEncoder:
        return cls(
            float(d["age_mean"]), float(d["age_sd"]), {k: list(v) for k, v in d["levels"].items()}
        )
