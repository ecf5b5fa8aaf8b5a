"""One prune check: evidence gates, divergence, the law's conditioned prediction, the frontier.

:func:`check` is a pure function of what the study's storage holds (the trial's reports
and schedule, the other trials, the stored law) plus this process's record of the
trial's previous check (used only to *notice* bad evidence, never to prune), so any
worker, or a restarted one, reaches the same decision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial

from optuna_optlaws._errors import InputError
from optuna_optlaws._pruner._calibration import (
    MIN_CALIBRATION,
    Calibrated,
    calibrate,
    calibration_trials,
    covered,
    fraction_bucket,
    group_repeat_noise,
    point_noise,
    residuals,
)
from optuna_optlaws._pruner._frontier import FAR_ABOVE, Frontier, area_at, frontier, group_floor, has_evidence
from optuna_optlaws._study_state import LawState, group_key, raw_points, trial_sizes, usable_points
from optuna_optlaws.curves import Curve, evenly_spaced
from optuna_optlaws.divergence.online import detect_divergence
from optuna_optlaws.schedules import Schedule


@dataclass(frozen=True)
class Gates:
    """The pruner's thresholds (see :class:`~optuna_optlaws.OptLawsPruner`)."""

    margin: float
    min_reports: int
    min_fraction: float
    n_min_trials: int
    calibrate: bool = True
    level: float = 0.9
    tolerance: float = 0.0
    final_noise: float = 0.0
    noise_from_repeats: bool = False
    """Measure ``final_noise`` on the group's COMPLETE trials that repeat a schedule
    (``final_noise`` itself is then not used)."""

    @property
    def threshold(self) -> float:
        """Nats above the frontier the interval's lower end must be for a prune."""
        return self.margin - self.tolerance


@dataclass
class Decision:
    """The outcome of a check: prune or not, why, the prediction (nats) and notes on bad
    evidence (each a short text to record on the trial)."""

    prune: bool = False
    reason: str | None = None
    pred: tuple[float, float, float] | None = None
    notes: list[str] = field(default_factory=list)
    frontier: Frontier | None = None
    calibrated: Calibrated | None = None


@dataclass(frozen=True)
class Seen:
    """What the previous check of a trial saw: number of reports and the last step."""

    n_reports: int
    last_step: int


def check(
    storage: Any,
    trials: Sequence[FrozenTrial],
    me: FrozenTrial,
    schedule: Schedule,
    gates: Gates,
    get_law: Callable[[], LawState],
    previous: Seen | None,
    stale: Callable[[], Collection[int]] = frozenset,
) -> tuple[Decision, Seen | None]:
    """Decide whether ``me`` (a running trial with ``schedule``) should be pruned now.

    ``get_law`` is called (it may fit the law) only when the law's prediction is needed:
    the trial has enough evidence, or the prediction is to be recorded. ``stale``: ids of
    RUNNING trials whose worker is gone (:func:`~optuna_optlaws._pruner._frontier.stale_trial_ids`),
    which are no frontier. Returns the decision and what this check saw (for the next
    check's bad-evidence notes)."""
    out = Decision()
    steps, losses = raw_points(me)
    if steps.size == 0:
        return out, previous
    seen = Seen(int(steps.size), int(steps[-1]))
    total = schedule.total_steps
    model_size, tokens_per_step = trial_sizes(me)
    group = group_key(schedule, model_size, tokens_per_step)

    sig = detect_divergence(steps, losses)
    if sig is not None:
        out.prune = True
        out.reason = f"diverged: {sig.reason}"
        return out, seen

    law_ok = True
    if previous is not None:
        if seen.n_reports == previous.n_reports:
            out.notes.append(f"no new report since the last check at step {previous.last_step} (repeated step?)")
            law_ok = False
        elif seen.last_step == previous.last_step:
            out.notes.append(
                f"a report arrived out of order (behind step {previous.last_step}); not pruning on it"
            )
            law_ok = False
    if seen.last_step >= total:
        out.notes.append(f"step {seen.last_step} is past the schedule's end ({total} steps); not pruning on it")
        law_ok = False
    ok_steps, ok_losses = usable_points(schedule, steps, losses, sig)
    if law_ok and ok_steps.size:
        far = _far_above_group(storage, trials, me.number, group, schedule, ok_steps, ok_losses, gates)
        if far is not None:  # needs min_reports but not min_fraction, like the detector above
            out.prune = True
            out.reason = far
            return out, seen
    if not (law_ok and has_evidence(ok_steps, schedule, gates.min_reports, gates.min_fraction)):
        return out, seen
    law_state = get_law()
    if law_state.note:
        out.notes.append(law_state.note)
    if law_state.law is None:
        return out, seen

    p_steps, p_losses = law_prefix(ok_steps, ok_losses)
    prefix = Curve(f"trial_{me.number}", schedule, p_steps, p_losses, model_size, tokens_per_step)
    try:
        pred = law_state.law.predict(
            schedule, [total - 1], model_size=model_size, tokens_per_step=tokens_per_step, observed=prefix
        )
        mean, lo, hi = float(pred.mean[0]), float(pred.lo[0]), float(pred.hi[0])
        law_sd = float(pred.sd(law_state.law.interval_level)[0])
    except InputError as exc:
        out.notes.append(f"law cannot predict this trial: {exc}")
        return out, seen
    except Exception as exc:  # a law's bug must never lose the trial
        out.notes.append(f"law prediction failed: {type(exc).__name__}: {exc}")
        return out, seen
    if not all(math.isfinite(v) for v in (mean, lo, hi)) or lo > hi:
        out.notes.append(f"law predicted a non-finite or inverted interval ({mean}, {lo}, {hi}); not pruning")
        return out, seen
    what = "predicted"
    extrapolated = False
    if gates.calibrate:
        calib = calibration_trials(storage, trials, group, me.number)
        extrapolated = len(calib) >= MIN_CALIBRATION and not covered(schedule.peak_lr, calib)
        if len(calib) >= MIN_CALIBRATION:
            law_key = (law_state.source, law_state.fingerprint, id(law_state.law))
            res = residuals(
                storage, calib, law_state.law, law_key, fraction_bucket(seen.last_step, total),
                min(gates.min_reports, int(ok_steps.size)), law_prefix,
            )
            if res.size >= MIN_CALIBRATION:
                law_half = 0.5 * (hi - lo)
                final_noise, measured = _final_noise(storage, trials, group, gates)
                noise = max(point_noise(schedule, ok_steps, ok_losses), final_noise)
                cal = calibrate(mean, law_sd, schedule, res, gates.level, noise, mean - lo, hi - mean)
                out.calibrated = cal
                mean, lo, hi = cal.mean, cal.lo, cal.hi
                what = (
                    f"calibrated on {cal.n} complete trials (law error here {cal.bias:+.4f}, "
                    f"sd {cal.spread:.4f}, law half-width {law_half:.4f}{measured})"
                )
    out.pred = (mean, lo, hi)

    front = frontier(
        storage, trials, group, me.number, min_reports=gates.min_reports, min_fraction=gates.min_fraction,
        stale=stale,
    )
    out.frontier = front
    if front.n_complete < gates.n_min_trials or not math.isfinite(front.value):
        return out, seen
    if extrapolated:  # a peak LR outside the complete runs' range: the law's error there is unknown
        return out, seen
    if lo > front.value + gates.threshold and seen.last_step < total - 1:  # a finished run saves nothing
        out.prune = True
        tolerated = f" - tolerance {gates.tolerance:g}" if gates.tolerance else ""
        out.reason = (
            f"predicted final loss {mean:.4f} [{lo:.4f}, {hi:.4f}] at step {total - 1} ({what}): "
            f"lower end above the frontier {front.value:.4f} ({front.source}) + margin {gates.margin:g}{tolerated}"
        )
    return out, seen


def _final_noise(
    storage: Any, trials: Sequence[FrozenTrial], group: tuple[Any, ...], gates: Gates
) -> tuple[float, str]:
    """The run-to-run noise of a final loss (nats) that floors the calibrated spread, and
    where it was measured (text for the prune reason; empty when set by hand or 0)."""
    if not gates.noise_from_repeats:
        return gates.final_noise, ""
    repeats = group_repeat_noise(storage, trials, group)
    if not repeats.df:
        return 0.0, ""
    return repeats.sd, f", run-to-run noise {repeats.sd:.4f} from {repeats.runs} runs repeating a schedule"


def _far_above_group(
    storage: Any,
    trials: Sequence[FrozenTrial],
    number: int,
    group: tuple[Any, ...],
    schedule: Schedule,
    steps: np.ndarray,
    losses: np.ndarray,
    gates: Gates,
) -> str | None:
    """The reason to prune trial ``number`` of ``group`` as diverged when its recent loss
    (median of its last three usable reports, nats) is :data:`~._frontier.FAR_ABOVE` times
    the lowest loss that ``n_min_trials`` or more COMPLETE trials of its group had reached
    by the same LR area (``schedule``'s area at its last report); ``None`` otherwise. This
    catches a run that never trains (too high a peak LR from the first step), which the
    curve's own detector cannot tell from a slow start and the law is not asked about
    outside the peak LRs it was checked on. Compared by LR area, not step, a run still in
    a long warmup, or at a low peak LR, is not mistaken for one that never trains."""
    if steps.size < gates.min_reports:
        return None
    recent = float(np.median(losses[-3:]))
    area = float(area_at(schedule, steps[-1:])[0])
    floor, n = group_floor(storage, trials, group, number, area)
    if n < gates.n_min_trials or not (math.isfinite(floor) and floor > 0) or recent <= FAR_ABOVE * floor:
        return None
    return (
        f"diverged: loss {recent:.4g} at step {int(steps[-1])} is {recent / floor:.1f}x the lowest loss "
        f"({floor:.4g}) of {n} complete trials of its group by the same LR area"
    )


RECENT_FRACTION = 0.25
"""Points in the last quarter of a trial's observed steps are all passed to the law."""

EARLY_POINTS = 16
"""At most this many earlier points are passed to the law (evenly spaced)."""


def law_prefix(steps: np.ndarray, losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The part of a trial's usable prefix handed to ``law.predict(observed=...)``: every
    point in the last ``RECENT_FRACTION`` of its observed steps (the laws estimate the
    run's offset from its most recent points, the last 20% in the shared harness) and at
    most ``EARLY_POINTS`` earlier ones. Keeps a check's cost flat as a run reports more."""
    if steps.size <= EARLY_POINTS:
        return steps, losses
    recent = steps >= (1.0 - RECENT_FRACTION) * float(steps[-1])
    early = np.flatnonzero(~recent)
    if early.size > EARLY_POINTS:
        early = early[evenly_spaced(early.size, EARLY_POINTS)]
    keep = np.concatenate([early, np.flatnonzero(recent)])
    return steps[keep], losses[keep]

