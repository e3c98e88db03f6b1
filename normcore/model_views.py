"""The read-only views of a fitted `NormativeModel`: what it was fitted on and measured.

Kept apart from the estimator (normcore.model) so that the class there holds the method's
steps; every view checks that the model is fitted and returns copies, never the model's
own state.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Self

from normcore.errors import NotFittedError

if TYPE_CHECKING:
    import torch

    from normcore import bundle
    from normcore.schema import Schema


class FittedViews:
    """Properties over the learned attributes (names ending in `_`) of a fitted model."""

    @property
    def schema(self) -> Schema:
        """The columns the model was fitted on: age, categorical covariates, IDPs, id."""
        return self._fitted().schema_

    @property
    def idps(self) -> list[str]:
        return list(self.schema.idps)

    @property
    def levels(self) -> dict[str, list[str]]:
        """Known levels of each categorical covariate (code i + 1 is level i)."""
        return {col: list(lv) for col, lv in self._fitted().encoder_.levels.items()}

    @property
    def age_range(self) -> tuple[float, float]:
        """Youngest and oldest training ages (years)."""
        lo, hi = self._fitted().training_["age_range"]
        return float(lo), float(hi)

    @property
    def training_summary(self) -> dict:
        """n, age_range, idps, level_counts and level_age_ranges of the training table."""
        return copy.deepcopy(self._fitted().training_)

    @property
    def history(self) -> list[dict]:
        """The training log: epoch, step, loss, val_loss and seconds at each evaluation."""
        return copy.deepcopy(self._fitted().history_)

    @property
    def adaptations(self) -> list[dict]:
        """One record per adaptation (see adapt.AdaptationPlan.record), oldest first."""
        return copy.deepcopy(self._fitted().adaptations_)

    @property
    def origin(self) -> bundle.Origin | None:
        """Fingerprint, normcore version, date and signature state of the file this model
        was loaded from; None for a model fitted or adapted since (not saved yet)."""
        return getattr(self._fitted(), "origin_", None)

    @property
    def device_(self) -> torch.device | str:
        """Where the network runs: a torch device once it is built (a fit builds it, a
        loaded model when it first draws), until then the choice the model was loaded with."""
        return self._fitted().joint_.device

    @property
    def fit_seconds(self) -> float:
        """Wall time of `fit`: training plus the reference table."""
        return self._fitted().fit_seconds_

    @property
    def created(self) -> str:
        """When the model was fitted (ISO 8601, UTC, to the second)."""
        return self._fitted().created_

    @property
    def corrections(self) -> dict:
        """What the fit measured to correct the draws: `moment_map` (matrix, offset),
        `new_person_spread` (scale, dof), `deviation_calibration`
        (`reference.DeviationCalibration`)."""
        joint = self._fitted().joint_
        return {
            "moment_map": tuple(a.copy() for a in joint.moment_map),
            "new_person_spread": joint.spread,
            "deviation_calibration": self.deviation_calibration_,
        }

    def _fitted(self) -> Self:
        """This model, once fitted; NotFittedError before."""
        if not hasattr(self, "reference_"):
            raise NotFittedError(
                "This model is not fitted yet: call fit() or NormativeModel.load() first."
            )
        return self
