"""Empirical calibration of the law's conditioned prediction on the study's own finished runs.

Measured on the tiny-LM curves (``python -m optuna_optlaws.benchmarks.pruner_calibration``,
studies/replay/tiny_lm/calibration.md): the error of the law's prediction of a run's final
loss, conditioned on the run's prefix, hardly shrinks as the prefix grows (about 0.03 to
0.04 nats from 10% to 90% of the schedule), and it is *systematic*: the law overpredicts
every WSD run by 0.05 to 0.08 nats, on runs it was fitted on as much as on held-out ones.
The law's own interval is then biased, and no narrower late than early.

So the pruner checks the law against the runs whose final loss it already knows. For a
trial at fraction ``f`` of its schedule, each COMPLETE trial ``c`` of its (N, D) group is
cut at the same fraction of its own schedule (rounded down to :data:`FRACTION_BUCKET`),
the law is conditioned on that cut prefix exactly as on the trial's, and its prediction
is compared with ``c``'s true final loss: ``r_c = final_c - predicted_c(f)`` (nats).
These *time-split residuals* are the law's error at this fraction on this study's runs.

The error depends on the schedule (on the tiny-LM runs from -0.076 nats on a WSD cooldown
to +0.015 on a cosine one, studies/replay/tiny_lm/calibration.md), so a single bias for
the group leaves a spread as large as the law's own. A Gaussian process on the residuals
over the schedules' descriptors (:mod:`optuna_optlaws._residual_gp`, prior scale the
law's own predictive standard deviation) lets runs like the trial count most: on that
replay group, with 8 or more complete runs, 5-7% of held-out runs end below its 90%
lower end (nominal 5%) at a lower half-width of 0.03-0.05 nats, against the law's raw
0.05-0.065 nats, which 20-30% of them end below.
With at least :data:`MIN_CALIBRATION`
residuals the trial's prediction is

* centred: ``mean + mu(x)``, the GP's prediction of the law's error at the trial's
  schedule ``x`` (near runs like it: their error; far from all: the residuals' mean), and
* given the half-width ``t * s``: ``s`` the GP's predictive standard deviation at ``x``
  (noise included) times the root mean square of its standardised leave-one-out errors
  when that is above 1 (the GP was too sure on the study's own runs), at least the
  trial's own point noise; ``t`` Student's quantile with ``n - 1`` degrees of freedom at
  the two-sided ``level``.
* With fewer than :data:`TRUSTED_CALIBRATION` residuals, never narrower than the law's
  own interval. The residuals are in sample (the law was fitted on those runs): with many
  runs they match held-out errors closely, with few runs they understate them (a law
  fitted on 6 tiny-LM runs missed a seventh by 0.10 nats while its 6 residuals spread by
  0.02).

Everything is a pure function of the study's storage (the stored law and the trials'
reports), so every worker computes the same numbers; residuals are only memoised in
process memory, keyed by the law's identity, the complete trial and the fraction bucket.
"""

from __future__ import annotations

import functools
import itertools
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from optuna_optlaws._pruner._frontier import complete_in_group, completed_final
from optuna_optlaws._repeats import RepeatNoise, repeat_key, repeat_noise
from optuna_optlaws._residual_gp import FloatArray, ResidualModel, fit_residuals, schedule_descriptors
from optuna_optlaws._study_state import (
    conditioned_final,
    readable_schedule,
    trial_curve,
    trial_sizes,
)
from optuna_optlaws.curves import Curve
from optuna_optlaws.laws import Law, Prediction
from optuna_optlaws.laws._optlaw_fit import transient_end
from optuna_optlaws.schedules import Schedule

FRACTION_BUCKET = 0.025
"""Complete trials are cut at the trial's fraction of its schedule rounded down to a
multiple of this (so residuals are reused across nearby checks)."""

MIN_CALIBRATION = 3
"""Residuals needed to calibrate a check; with fewer, the law's own interval is used."""

TRUSTED_CALIBRATION = 8
"""Residuals from which the calibrated interval may be narrower than the law's own."""

PEAK_LR_TOLERANCE = 1.25
"""A trial's peak LR counts as covered by the calibration runs when it lies within this
factor of their range of peak LRs."""

MAX_CALIBRATION_TRIALS = 24
"""At most this many COMPLETE trials of the group calibrate a check (the lowest trial
numbers: the same ones on every worker), to bound the cost of a check."""

_Prepared = tuple[Curve, float]
"""A complete trial's usable curve and its final loss."""

_PREPARED: weakref.WeakKeyDictionary[Any, dict[int, _Prepared | None]] = weakref.WeakKeyDictionary()
"""storage -> {trial id: (usable curve, final loss) or None}: finished trials never change."""

_RESIDUALS: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], tuple[float, float]]] = weakref.WeakKeyDictionary()
"""storage -> {(law key, trial id, fraction bucket, min points): (residual, the law's
predictive standard deviation), nats; NaN: not computable}."""

_MAX_CACHED = 200_000


@dataclass(frozen=True)
class Calibrated:
    """The calibrated prediction: mean, lower and upper end (nats), the correction added to
    the law's mean at the trial's schedule, the standard deviation behind the interval
    and how many residuals there were."""

    mean: float
    lo: float
    hi: float
    bias: float
    spread: float
    n: int


def fraction_bucket(last_step: int, total_steps: int) -> float:
    """The trial's fraction of its schedule ``(last_step + 1) / total_steps``, rounded down
    to a multiple of :data:`FRACTION_BUCKET`."""
    f = (last_step + 1) / total_steps
    return math.floor(f / FRACTION_BUCKET + 1e-9) * FRACTION_BUCKET


def _prepared(storage: Any, trial: FrozenTrial) -> _Prepared | None:
    cache = _PREPARED.setdefault(storage, {})
    if trial._trial_id in cache:
        return cache[trial._trial_id]
    curve = trial_curve(trial)
    final = completed_final(storage, trial)[1]
    out = (curve, final) if curve is not None and math.isfinite(final) else None
    cache[trial._trial_id] = out
    return out


def calibration_trials(
    storage: Any, trials: Sequence[FrozenTrial], group: tuple[Any, ...], exclude_number: int
) -> list[FrozenTrial]:
    """The COMPLETE trials of ``group`` that calibrate a check (lowest numbers first)."""
    return [t for t, _ in itertools.islice(complete_in_group(storage, trials, group, exclude_number),
                                            MAX_CALIBRATION_TRIALS)]


@dataclass(frozen=True)
class Residuals:
    """Time-split residuals of complete trials: ``final - predicted`` (nats), the law's
    predictive standard deviation of each prediction (nats) and the descriptors of each
    trial's schedule (:func:`~optuna_optlaws._residual_gp.schedule_descriptors`)."""

    values: FloatArray
    law_sd: FloatArray
    descriptors: FloatArray
    key: tuple[Any, ...] | None = None
    """What the residuals are a function of (law, fraction bucket, minimum points, trials),
    to memoise the GP fitted on them; ``None``: not memoised."""

    @property
    def size(self) -> int:
        return int(self.values.size)


def residuals(
    storage: Any,
    calib: Sequence[FrozenTrial],
    law: Law,
    law_key: tuple[Any, ...],
    bucket: float,
    min_points: int,
    prefix_of: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
) -> Residuals:
    """Time-split residuals of the ``calib`` trials cut at fraction ``bucket`` of their
    schedules (those with at least ``min_points`` usable points before the cut; a
    prediction that fails leaves the trial out)."""
    cache = _RESIDUALS.setdefault(storage, {})
    if len(cache) > _MAX_CACHED:
        cache.clear()
    values, sds, schedules, ids = [], [], [], []
    for t in calib:
        key = (law_key, t._trial_id, round(bucket / FRACTION_BUCKET), min_points)
        hit = cache.get(key)
        if hit is None:
            hit = _residual(storage, t, law, bucket, min_points, prefix_of)
            cache[key] = hit
        prep = _prepared(storage, t)
        if math.isfinite(hit[0]) and prep is not None:
            values.append(hit[0])
            sds.append(hit[1])
            schedules.append(prep[0].schedule)
            ids.append(t._trial_id)
    return Residuals(
        np.asarray(values, dtype=np.float64),
        np.asarray(sds, dtype=np.float64),
        schedule_descriptors(schedules, cache=True) if schedules else np.zeros((0, 0)),
        (id(storage), law_key, round(bucket / FRACTION_BUCKET), min_points, tuple(ids)),
    )


def _residual(
    storage: Any,
    trial: FrozenTrial,
    law: Law,
    bucket: float,
    min_points: int,
    prefix_of: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
) -> tuple[float, float]:
    nan = (math.nan, math.nan)
    prep = _prepared(storage, trial)
    if prep is None:
        return nan
    curve, final = prep
    pred = conditioned_at(law, curve, bucket, min_points, prefix_of)
    if pred is None:
        return nan
    return final - float(pred.mean[0]), float(pred.sd(law.interval_level)[0])


def conditioned_at(
    law: Law,
    curve: Curve,
    fraction: float,
    min_points: int,
    prefix_of: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
) -> Prediction | None:
    """``law``'s prediction (nats) of ``curve``'s final loss conditioned on its finite points
    up to ``fraction`` of its schedule (steps ``s`` with ``s + 1 <= fraction * total``), as
    ``prefix_of`` hands them to the law; ``None`` with fewer than ``min_points`` such points
    or when the law cannot predict it. The one cut both the pruner's time-split residuals
    and ``benchmarks.pruner_calibration`` make."""
    keep = np.isfinite(curve.losses) & (curve.steps + 1 <= fraction * curve.schedule.total_steps + 1e-9)
    if int(keep.sum()) < min_points:
        return None
    p_steps, p_losses = prefix_of(curve.steps[keep], curve.losses[keep])
    return conditioned_final(law, replace(curve, steps=p_steps, losses=p_losses))


def covered(peak_lr: float, calib: Sequence[FrozenTrial]) -> bool:
    """Whether ``peak_lr`` is bracketed by the calibration trials' peak LRs
    (:func:`bracketed`)."""
    return bracketed(peak_lr, [s.peak_lr for s in (readable_schedule(t) for t in calib) if s is not None])


def bracketed(peak_lr: float, peaks: Sequence[float]) -> bool:
    """Whether ``peak_lr`` is bracketed by ``peaks`` (the complete runs' peak LRs): at least
    :data:`BRACKET_RUNS` of them at or below it and as many at or above it (each within
    :data:`PEAK_LR_TOLERANCE`). The law then interpolates between runs it was checked on.

    Measured on the tiny-LM replay: with the low-LR runs all pruned early, a law fitted on
    the study's other runs predicted the low-LR winner 0.21 to 0.24 nats too high, with
    an interval of +-0.06 to 0.12 nats and calibration residuals (from runs at the usual
    peak LR) of +-0.03: no residual of runs unlike the trial says how wrong the law is
    on it. One complete run at the trial's peak LR is not enough either: it is fitted, so
    its residual is small whatever the law does at that LR. In one replay order of the
    tiny LM's 20-run group, with only the constant-LR run complete at the lowest peak LR,
    the law predicted that LR's cosine and WSD runs 0.20 and 0.11 nats too high (the WSD
    run was the group's best) with calibrated intervals of +-0.10 and +-0.05. Outside
    these bounds the pruner does not prune on the law."""
    if not peaks or not (math.isfinite(peak_lr) and peak_lr > 0):
        return False
    below = sum(p <= peak_lr * PEAK_LR_TOLERANCE for p in peaks)
    above = sum(p >= peak_lr / PEAK_LR_TOLERANCE for p in peaks)
    return below >= BRACKET_RUNS and above >= BRACKET_RUNS


BRACKET_RUNS = 2
"""Complete runs needed on each side of a trial's peak LR (see :func:`covered`)."""


MIN_NOISE_POINTS = 6
"""Reports past the initial transient a trial needs before its own point noise is measured."""


_REPEATS: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], RepeatNoise]] = weakref.WeakKeyDictionary()
"""storage -> {(group, ids of the study's COMPLETE trials): the group's run-to-run noise}:
finished trials never change, so a check recomputes it only when a trial has completed."""


def group_repeat_noise(storage: Any, trials: Sequence[FrozenTrial], group: tuple[Any, ...]) -> RepeatNoise:
    """Run-to-run noise of a final loss (nats) measured on the COMPLETE trials of ``group``
    that repeat a schedule (:mod:`optuna_optlaws._repeats`; ``df`` 0 when none does):
    a schedule the user trained again, say with another seed
    (``study.enqueue_trial(trial.params)``)."""
    cache = _REPEATS.setdefault(storage, {})
    key = (group, tuple(t._trial_id for t in trials if t.state == TrialState.COMPLETE))
    hit = cache.get(key)
    if hit is None:
        if len(cache) > _MAX_CACHED:
            cache.clear()
        runs = [(f"trial {t.number}", repeat_key(schedule, *trial_sizes(t)), final)
                for t, final in complete_in_group(storage, trials, group)
                if (schedule := readable_schedule(t)) is not None]
        hit = cache[key] = repeat_noise(runs)
    return hit


def point_noise(schedule: Schedule, steps: np.ndarray, losses: np.ndarray, recent: int = 8) -> float:
    """Point-to-point noise (nats) of a trial's curve: the standard deviation of the second
    differences of its last ``recent`` losses over sqrt(6) (a smooth trend cancels), on
    reports past its warmup and the first 10% of its schedule only (the law's initial
    transient, :func:`~optuna_optlaws.laws._optlaw_fit.transient_end`): before that the
    curve's own curvature passes for noise (on the tiny-LM runs 0.04-0.14 nats at a sixth
    of the schedule against 0.003-0.012 later). 0 until :data:`MIN_NOISE_POINTS` such reports."""
    x = losses[steps >= transient_end(schedule)][-recent:]
    if x.size < MIN_NOISE_POINTS:
        return 0.0
    d2 = np.diff(x, 2)
    return float(np.sqrt(np.mean(d2**2) / 6.0))


def calibrate(
    mean: float,
    law_sd: float,
    schedule: Schedule,
    res: Residuals,
    level: float,
    noise: float,
    law_below: float = 0.0,
    law_above: float = 0.0,
) -> Calibrated:
    """The law's prediction ``mean`` (nats, with predictive standard deviation ``law_sd``)
    of a trial with ``schedule``, corrected by the residuals ``res`` (at least
    :data:`MIN_CALIBRATION`), with the interval of the module docstring: ``t * s`` either
    side; with fewer than :data:`TRUSTED_CALIBRATION` residuals never narrower than the
    law's own interval, which reaches ``law_below`` nats below and ``law_above`` above its
    mean. ``noise``: the trial's own point noise (nats), a floor on ``s``."""
    n = res.size
    model, inflation = _residual_model(res)
    if model is None:  # every candidate covariance was singular: one bias for the group
        shift = float(np.mean(res.values))
        loo = res.values - (res.values.sum() - res.values) / (n - 1)
        sd = float(np.sqrt(np.mean(loo**2)))
    else:
        mu, s = model.predict(schedule_descriptors([schedule]), np.array([law_sd]))
        shift = float(mu[0])
        sd = math.hypot(float(s[0]), model.noise) * inflation
    sd = max(sd, noise)
    half = _t_quantile(level, n - 1) * sd
    below, above = (half, half) if n >= TRUSTED_CALIBRATION else (max(half, law_below), max(half, law_above))
    m = mean + shift
    return Calibrated(m, m - below, m + above, shift, sd, n)


_MODELS: dict[tuple[Any, ...], tuple[ResidualModel | None, float]] = {}
"""Residuals' key -> (the GP fitted on them, its leave-one-out inflation): every check of
the study at the same fraction bucket reuses one fit."""


def _residual_model(res: Residuals) -> tuple[ResidualModel | None, float]:
    """The GP on ``res`` (scaled on their own descriptors) and the factor (at least 1) its
    standard deviation is widened by: the root mean square of its standardised
    leave-one-out errors."""
    hit = _MODELS.get(res.key) if res.key is not None else None
    if hit is not None:
        return hit
    n = res.size
    model = fit_residuals(res.descriptors, res.values, np.zeros(n), res.law_sd, np.zeros((0, res.descriptors.shape[1])))
    inflation = 1.0 if model is None else max(1.0, float(np.sqrt(np.mean(model.loo_z() ** 2))))
    if res.key is not None:
        if len(_MODELS) >= _MAX_MODELS:
            _MODELS.clear()
        _MODELS[res.key] = (model, inflation)
    return model, inflation


_MAX_MODELS = 4096


@functools.lru_cache(maxsize=256)
def _t_quantile(level: float, df: int) -> float:
    from scipy import stats  # lazy: scipy.stats costs a third of a second to import

    return float(stats.t.ppf(0.5 + level / 2.0, df=df))
