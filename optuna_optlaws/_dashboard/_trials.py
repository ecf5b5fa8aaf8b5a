"""A study's trials as training curves, with what the pruner recorded about them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optuna_optlaws._pruner._frontier import PRUNE_REASON, recorded_prediction
from optuna_optlaws._trial_notes import WARNING
from optuna_optlaws.curves import Curve

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class TrialCurve:
    """One trial with an attached schedule: its reported losses as a :class:`Curve`
    (run id ``trial_<number>``), its state name, final value and the pruner's record."""

    number: int
    trial_id: int
    state: str
    curve: Curve
    value: float | None
    pred_final: tuple[float, float, float] | None
    prune_reason: str | None
    warning: str | None = None
    """Bad input recorded on the trial and ignored (a repeated step, a dropped enqueued value)."""

    @property
    def label(self) -> str:
        """Short label for legends: ``#<number>`` and the schedule family (none for logged knots)."""
        family = self.curve.schedule.family
        return f"#{self.number}" if family == "knots" else f"#{self.number} {family}"

    @property
    def last_loss(self) -> float:
        """The last reported loss (nats), NaN when nothing was reported."""
        return self.curve.final_loss


def _float_or_none(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def trial_curves(study: optuna.Study) -> list[TrialCurve]:
    """Every trial of ``study`` that has a schedule attached (``suggest_schedule`` or
    ``set_schedule``) and at least one usable report, in trial-number order; the curve is
    the one the law is fitted on (:func:`optuna_optlaws._study_state.trial_curve`)."""
    from optuna_optlaws._study_state import trial_curve

    out = []
    for t in study.get_trials(deepcopy=False):
        curve = trial_curve(t)
        if curve is None:
            continue
        pred = recorded_prediction(t)
        reason = t.user_attrs.get(PRUNE_REASON)
        warning = t.user_attrs.get(WARNING)
        out.append(
            TrialCurve(
                number=t.number,
                trial_id=t._trial_id,
                state=t.state.name,
                curve=curve,
                value=_float_or_none(t.value) if t.values is not None and len(t.values) == 1 else None,
                pred_final=pred,
                prune_reason=None if reason is None else str(reason),
                warning=None if warning is None else str(warning),
            )
        )
    return out
