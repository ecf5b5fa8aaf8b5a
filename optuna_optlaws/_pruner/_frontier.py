"""The frontier a trial must be able to beat: the best final loss of its (N, D) group.

The frontier of a group is the lower of

* the best final loss (nats, the loss at the last reported step) of a COMPLETE trial of
  the group, and
* the best final loss a RUNNING trial of the group is predicted to reach for sure: the
  upper end ``optlaws_pred_hi`` of its latest prediction, counted only once that trial
  itself has enough evidence (:func:`has_evidence`) and while its worker is alive: a
  trial whose worker stopped beating (Optuna's heartbeat, ``RDBStorage(...,
  heartbeat_interval=...)``; :func:`stale_trial_ids`) will never reach that loss, so it
  is not a frontier. Without a heartbeat a crashed worker's trial stays RUNNING and
  keeps counting: enable it where workers can die (preemptible GPUs).

Final losses of finished trials never change, so they are computed once per trial and
cached in process memory.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from optuna_optlaws._study_state import group_key, raw_points, readable_schedule, same_group, trial_sizes
from optuna_optlaws.laws._features import schedule_features
from optuna_optlaws.laws._optlaw_fit import transient_end
from optuna_optlaws.schedules import Schedule

PRED_FINAL = "optlaws_pred_final"
PRED_LO = "optlaws_pred_lo"
PRED_HI = "optlaws_pred_hi"
PRUNE_REASON = "optlaws_prune_reason"
"""User attributes the pruner writes (plain floats; the reason is text, and so is the
warning, :data:`~optuna_optlaws._trial_notes.WARNING`)."""


def recorded_prediction(trial: FrozenTrial) -> tuple[float, float, float] | None:
    """The pruner's latest prediction of ``trial``'s final loss recorded on it: ``(mean, lo,
    hi)`` in nats, or ``None`` unless all three attributes are finite numbers."""
    values: list[float] = []
    for key in (PRED_FINAL, PRED_LO, PRED_HI):
        v = trial.user_attrs.get(key)
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
            return None
        values.append(float(v))
    return values[0], values[1], values[2]


_FINISHED: weakref.WeakKeyDictionary[Any, dict[int, tuple[tuple[Any, ...] | None, float]]] = (
    weakref.WeakKeyDictionary()
)
"""storage -> {trial id: (group, final loss)} of COMPLETE trials."""


@dataclass(frozen=True)
class Frontier:
    """The group's frontier (nats; ``inf`` when there is none), where it comes from
    (``"trial <n>"`` complete, ``"trial <n> (running, predicted)"``) and how many COMPLETE
    trials of the group have a final loss."""

    value: float
    source: str
    n_complete: int


def completed_final(storage: Any, trial: FrozenTrial) -> tuple[tuple[Any, ...] | None, float]:
    """``(group, final loss)`` of a COMPLETE trial (group ``None`` without a schedule;
    final loss NaN when its last report is not finite)."""
    cache = _FINISHED.setdefault(storage, {})
    hit = cache.get(trial._trial_id)
    if hit is not None:
        return hit
    schedule = readable_schedule(trial)
    group = None if schedule is None else group_key(schedule, *trial_sizes(trial))
    _, losses = raw_points(trial)
    final = float(losses[-1]) if losses.size and math.isfinite(losses[-1]) else math.nan
    cache[trial._trial_id] = (group, final)
    return group, final


FAR_ABOVE = 2.0
"""A running trial whose recent loss is this many times the lowest loss the group's
COMPLETE trials had reached by the same LR area (:func:`area_at`) is diverged,
whatever the law says (a run that never trained: no healthy run of the group was ever
that far behind after training with as much LR)."""

_RUNNING_MIN: weakref.WeakKeyDictionary[Any, dict[int, tuple[Any, Any]]] = weakref.WeakKeyDictionary()
"""storage -> {trial id: (LR area at each finite report, running minimum of those losses)}
of COMPLETE trials."""


def complete_in_group(
    storage: Any, trials: Sequence[FrozenTrial], group: tuple[Any, ...], exclude_number: int | None = None
) -> Iterator[tuple[FrozenTrial, float]]:
    """The COMPLETE trials of ``group`` among ``trials`` (in their order, leaving out trial
    ``exclude_number``), each with its final loss (nats; NaN when not finite)."""
    for t in trials:
        if t.state != TrialState.COMPLETE or t.number == exclude_number:
            continue
        g, final = completed_final(storage, t)
        if same_group(g, group):
            yield t, final


def area_at(schedule: Schedule, steps: np.ndarray) -> np.ndarray:
    """The LR area trained by the end of each of ``steps`` (the laws' ``S1``: the sum of
    the LRs of steps ``0 .. step``, LR x steps; steps past the schedule's end count its
    whole area), from the schedule's cached features."""
    feats = schedule_features(schedule)
    return feats.area(np.clip(np.asarray(steps, dtype=np.int64), 0, feats.n - 1))


def group_floor(
    storage: Any, trials: Sequence[FrozenTrial], group: tuple[Any, ...], exclude_number: int, area: float
) -> tuple[float, int]:
    """The lowest loss (nats) any COMPLETE trial of ``group`` (other than
    ``exclude_number``) had reported by the time it had trained with LR area ``area``
    (:func:`area_at`), and how many such trials had reported by then (``inf, 0``
    when none)."""
    cache = _RUNNING_MIN.setdefault(storage, {})
    best, n = math.inf, 0
    for t, _ in complete_in_group(storage, trials, group, exclude_number):
        hit = cache.get(t._trial_id)
        if hit is None:
            steps, losses = raw_points(t)
            fin = np.isfinite(losses)
            schedule = readable_schedule(t)
            areas = area_at(schedule, steps[fin]) if schedule is not None else np.zeros(0)
            hit = (areas, np.minimum.accumulate(losses[fin]) if fin.any() else losses[fin])
            cache[t._trial_id] = hit
        areas, running = hit
        i = int(np.searchsorted(areas, area, side="right")) - 1
        if i >= 0:
            n += 1
            best = min(best, float(running[i]))
    return best, n


def has_evidence(steps: np.ndarray, schedule: Schedule, min_reports: int, min_fraction: float) -> bool:
    """Whether a curve reported at ``steps`` (usable reports, ascending) under ``schedule``
    is enough evidence for the law to act on: ``min_reports`` reports at or past the law's
    initial transient (:func:`~optuna_optlaws.laws._optlaw_fit.transient_end`: the warmup
    and the first 10% of the schedule, which the law does not describe and its fit leaves
    out) and ``min_fraction`` of the schedule.

    Counting only described reports matters: in the live tiny-LM studies, 13 of the 68
    runs pruned on the law before step 100 of 600 (on 1-2 reports past the transient)
    ended below the calibrated lower end, against 6 of the 119 pruned later
    (``examples/tiny_lm/audit_pruned.py``, studies/tiny_lm/audit_*.md). The same arms rerun
    with this gate: 12 of 187 pruned runs ended below it (studies/tiny_lm/gated/*/audit_*.md)."""
    if steps.size == 0:
        return False
    described = int(np.count_nonzero(steps >= transient_end(schedule)))
    return described >= min_reports and (int(steps[-1]) + 1) >= min_fraction * schedule.total_steps


def first_evidence_step(steps: np.ndarray, schedule: Schedule, min_reports: int, min_fraction: float) -> int | None:
    """The step of the first report (``steps``: usable reports, ascending) at which
    :func:`has_evidence` holds: the earliest the law may act on the run; ``None``: never."""
    return next((int(steps[k]) for k in range(steps.size)
                 if has_evidence(steps[: k + 1], schedule, min_reports, min_fraction)), None)


def stale_trial_ids(storage: Any, study_id: int) -> frozenset[int]:
    """Ids of the study's RUNNING trials whose worker stopped beating: Optuna's heartbeat
    (``RDBStorage(..., heartbeat_interval=...)``) last recorded longer ago than its grace
    period, the trials Optuna fails at a worker's next trial. Empty when the storage has
    no heartbeat enabled (in-memory, journal, or RDB without ``heartbeat_interval``)."""
    from optuna.storages._heartbeat import BaseHeartbeat

    if not isinstance(storage, BaseHeartbeat) or storage.get_heartbeat_interval() is None:
        return frozenset()
    return frozenset(storage._get_stale_trial_ids(study_id))


def frontier(
    storage: Any,
    trials: Sequence[FrozenTrial],
    group: tuple[Any, ...],
    exclude_number: int,
    *,
    min_reports: int,
    min_fraction: float,
    stale: Callable[[], Collection[int]] = frozenset,
) -> Frontier:
    """The frontier of ``group`` among ``trials`` (leaving out trial ``exclude_number``).
    ``stale``: the trial ids of RUNNING trials whose worker is gone (:func:`stale_trial_ids`),
    asked only when a running trial would set the frontier."""
    best, source, n_complete = math.inf, "", 0
    gone: Collection[int] | None = None
    for t in trials:
        if t.number == exclude_number:
            continue
        if t.state == TrialState.COMPLETE:
            g, final = completed_final(storage, t)
            if not same_group(g, group) or not math.isfinite(final):
                continue
            n_complete += 1
            if final < best:
                best, source = final, f"trial {t.number}"
        elif t.state == TrialState.RUNNING:
            hi = t.user_attrs.get(PRED_HI)
            if not isinstance(hi, (int, float)) or not math.isfinite(hi) or hi >= best:
                continue
            schedule = readable_schedule(t)
            if schedule is None or not same_group(group_key(schedule, *trial_sizes(t)), group):
                continue
            steps, _ = raw_points(t)
            if not has_evidence(steps, schedule, min_reports, min_fraction):
                continue
            if gone is None:
                gone = stale()
            if t._trial_id in gone:
                continue
            best, source = float(hi), f"trial {t.number} (running, predicted)"
    return Frontier(best, source, n_complete)
