"""The study's correction to the law: a Gaussian process on the law's residuals.

The law is the prior *mean* of a trial's final loss and a GP on the law's residuals
(:mod:`optuna_optlaws._residual_gp`) models what it gets wrong, as in physics-informed
Bayesian optimisation:

    final_loss(x) = law_mean(x) + r(x),

so the sampler does not keep proposing where the law is optimistic. The GP is fitted on
the trials already finished in the same (N, tokens per step) group:

* a COMPLETE trial gives its last reported loss (nats, at its schedule's last step);
* a PRUNED trial gives the conditioned prediction of its final loss
  (``OptLawsPruner``'s ``optlaws_pred_final``, or the law's own when another pruner
  stopped it) with that prediction's own variance as extra noise, so the GP also
  learns where runs are predicted to lose.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from optuna.trial import FrozenTrial, TrialState

from optuna_optlaws._pruner._frontier import recorded_prediction
from optuna_optlaws._residual_gp import FloatArray
from optuna_optlaws._study_state import (
    conditioned_final,
    raw_points,
    readable_schedule,
    trial_curve,
    trial_sizes,
    within_tolerance,
)
from optuna_optlaws.laws import Law, Prediction
from optuna_optlaws.schedules import Schedule

FINAL_REACH = 0.98
"""A COMPLETE trial counts when its last report is at or past this fraction of its schedule."""


@dataclass(frozen=True)
class Observations:
    """Finished trials' schedules and what they say about their final loss (nats), each
    with the variance (nats^2) of that statement beyond the runs' own noise."""

    schedules: list[Schedule]
    finals: FloatArray
    extra_var: FloatArray
    complete: NDArray[np.bool_]
    """Which of them are COMPLETE trials (the others: PRUNED, their final predicted)."""

    @property
    def incumbent(self) -> float:
        """The lowest final loss (nats) a COMPLETE trial reached; ``inf`` when there is none."""
        done = self.finals[self.complete]
        return float(done.min()) if done.size else math.inf


def observations(
    storage: Any, trials: Sequence[FrozenTrial], law: Law, model_size: float | None, tokens_per_step: float | None
) -> Observations:
    """The COMPLETE and PRUNED trials of ``trials`` with the given sizes (within 2%).

    A PRUNED trial's final loss is the one ``OptLawsPruner`` predicted for it (its
    ``optlaws_pred_*`` attributes) or, when another pruner stopped it, ``law``'s
    prediction conditioned on its reported prefix (cached per storage, law and trial)."""
    schedules: list[Schedule] = []
    finals: list[float] = []
    extra: list[float] = []
    complete: list[bool] = []
    for t in trials:
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        schedule = readable_schedule(t)
        if schedule is None or not _same_size(trial_sizes(t), (model_size, tokens_per_step)):
            continue
        if t.state == TrialState.COMPLETE:
            steps, losses = raw_points(t)
            if steps.size == 0 or not math.isfinite(losses[-1]):
                continue
            if steps[-1] + 1 < FINAL_REACH * schedule.total_steps or steps[-1] >= schedule.total_steps:
                continue
            stated = (float(losses[-1]), 0.0)
        else:
            pred = _pruned_final(storage, t, law)
            if pred is None:
                continue
            # the pruner records its interval at the law's level (90%)
            stated = float(pred.mean[0]), float(pred.sd(law.interval_level)[0]) ** 2
        schedules.append(schedule)
        finals.append(stated[0])
        extra.append(stated[1])
        complete.append(t.state == TrialState.COMPLETE)
    return Observations(
        schedules,
        np.asarray(finals, dtype=np.float64),
        np.asarray(extra, dtype=np.float64),
        np.asarray(complete, dtype=np.bool_),
    )


def running_schedules(
    trials: Sequence[FrozenTrial],
    exclude_number: int,
    model_size: float | None,
    tokens_per_step: float | None,
    exclude_ids: Collection[int] = (),
) -> list[Schedule]:
    """The schedules of the RUNNING trials of ``trials`` with the given sizes (within 2%),
    other than trial ``exclude_number`` and the trial ids ``exclude_ids`` (workers that
    are gone): what other workers are training now."""
    out: list[Schedule] = []
    for t in trials:
        if t.state != TrialState.RUNNING or t.number == exclude_number or t._trial_id in exclude_ids:
            continue
        schedule = readable_schedule(t)
        if schedule is not None and _same_size(trial_sizes(t), (model_size, tokens_per_step)):
            out.append(schedule)
    return out


_CONDITIONED: weakref.WeakKeyDictionary[Any, weakref.WeakKeyDictionary[Law, dict[int, Prediction | None]]] = (
    weakref.WeakKeyDictionary()
)
"""storage -> law -> {trial id: predicted final loss or None} of PRUNED trials (keyed by
the law object, not its ``id``, which a refitted law could reuse)."""


def _pruned_final(storage: Any, trial: FrozenTrial, law: Law) -> Prediction | None:
    """The final loss (nats, with its interval) a PRUNED trial would have reached."""
    recorded = recorded_prediction(trial)
    if recorded is not None:
        return Prediction(*(np.array([v]) for v in recorded))
    cache = _CONDITIONED.setdefault(storage, weakref.WeakKeyDictionary()).setdefault(law, {})
    key = trial._trial_id
    if key in cache:
        return cache[key]
    curve = trial_curve(trial)
    pred = None if curve is None else conditioned_final(law, curve)
    out = pred if pred is not None and float(pred.lo[0]) <= float(pred.hi[0]) else None
    cache[key] = out
    return out


def _same_size(a: tuple[float | None, float | None], b: tuple[float | None, float | None]) -> bool:
    for x, y in zip(a, b, strict=True):
        if (x is None) != (y is None):
            return False
        if x is not None and y is not None and not within_tolerance(x, y):
            return False
    return True
