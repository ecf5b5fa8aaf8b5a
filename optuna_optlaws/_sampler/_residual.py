"""The study's correction to the law: a Gaussian process on the law's residuals.

A law fitted on a study's curves can be biased on part of the search space (on short
runs of a small model, say, it can under-rate a late cooldown by a few hundredths of a
nat). The sampler would then keep proposing where the law is optimistic and never learn
otherwise. So, as in physics-informed Bayesian optimisation, the law is the prior *mean*
of the final loss and a GP models what it gets wrong:

    final_loss(x) = law_mean(x) + r(x),    r ~ GP(c, k),

fitted on the trials already finished in the same (N, tokens per step) group:

* a COMPLETE trial gives its last reported loss (nats, at its schedule's last step);
* a PRUNED trial gives the pruner's conditioned prediction of its final loss
  (``optlaws_pred_final``) with that prediction's own variance as extra noise, so the
  GP also learns where runs are predicted to lose.

``x`` are a few numbers that describe any schedule (:func:`schedule_features`), so the
correction works across families and for logged schedules. The kernel is squared
exponential with one length scale on min-max scaled features; its length scale,
amplitude and noise are chosen by the marginal likelihood on a small grid, and ``c`` is
the generalised-least-squares mean of the residuals. Cost: one Cholesky per grid point
on at most a few hundred trials.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from optuna.trial import FrozenTrial, TrialState

from optuna_optlaws._errors import InputError
from optuna_optlaws._pruner._frontier import PRED_FINAL, PRED_HI, PRED_LO
from optuna_optlaws._study_state import raw_points, trial_schedule, trial_sizes
from optuna_optlaws.schedules import Schedule

FloatArray = NDArray[np.float64]

FEATURE_NAMES = ("log_peak_lr", "log_total_steps", "area_fraction", "tail_lr", "stable_fraction", "warmup_fraction")
"""What :func:`schedule_features` measures of a schedule (see there)."""

_PROBES = 256
"""LR evaluations per schedule for its features."""

MIN_OBSERVATIONS = 3
"""Finished trials needed before the correction is used."""

LENGTH_SCALES = (0.15, 0.3, 0.6, 1.2)
"""Candidate length scales (in min-max scaled feature units)."""

NOISE_SDS = (0.003, 0.01, 0.03)
"""Candidate observation noise (nats): a run's final loss varies with its seed and the
last report's own noise by about this much."""

AMPLITUDE_SDS = (0.01, 0.03, 0.1, 0.3)
"""Candidate prior standard deviations of the law's error (nats)."""

Z90 = 1.6448536269514722
"""Standard normal quantile of 0.95: half-width of a central 90% interval in sigmas."""


def schedule_features(schedules: Sequence[Schedule]) -> FloatArray:
    """``(n, 6)`` descriptors of each schedule, in the order of ``FEATURE_NAMES``:
    log peak LR; log total steps; area fraction (mean LR over peak); the mean LR over
    the last 10% of steps over peak (how annealed the end is); the fraction of steps
    after the warmup spent within 90% of the peak (how long the stable phase is); the
    warmup fraction (steps before the LR first reaches 98% of its peak over total steps)."""
    out = np.zeros((len(schedules), len(FEATURE_NAMES)))
    for i, s in enumerate(schedules):
        total = s.total_steps
        t = np.linspace(0.0, total - 1.0, _PROBES)
        lr = s.lr_at(t)
        peak = max(float(lr.max()), float(s.peak_lr), 1e-300)
        rel = lr / peak
        reached = np.flatnonzero(rel >= 0.98)
        warm = float(t[reached[0]]) / total if reached.size else 0.0
        after = t >= warm * total
        tail = t >= 0.9 * (total - 1.0)
        out[i] = (
            math.log(peak),
            math.log(total),
            float(rel.mean()),
            float(rel[tail].mean()),
            float(np.mean(rel[after] >= 0.9)) if after.any() else 0.0,
            warm,
        )
    return out


@dataclass(frozen=True)
class ResidualModel:
    """A fitted GP on the law's residuals (see the module docstring)."""

    x: FloatArray
    """Scaled features of the observations."""
    lo: FloatArray
    span: FloatArray
    """Feature scaling: ``(features - lo) / span``."""
    alpha: FloatArray
    """``K^-1 (r - c)``."""
    chol: FloatArray
    """Cholesky factor of ``K + noise``."""
    mean: float
    """The constant mean ``c`` of the residuals (nats)."""
    length: float
    amplitude: float
    noise: float

    def _k(self, a: FloatArray, b: FloatArray) -> FloatArray:
        d2 = np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)
        return np.asarray(self.amplitude**2 * np.exp(-0.5 * d2 / self.length**2), dtype=np.float64)

    def predict(self, features: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Posterior mean and standard deviation (nats) of the law's error at ``features``."""
        z = (features - self.lo) / self.span
        ks = self._k(z, self.x)
        mu = self.mean + ks @ self.alpha
        v = np.linalg.solve(self.chol, ks.T)
        var = np.maximum(self.amplitude**2 - np.sum(v * v, axis=0), 0.0)
        return np.asarray(mu, dtype=np.float64), np.asarray(np.sqrt(var), dtype=np.float64)


def fit_residuals(
    features: FloatArray, residuals: FloatArray, extra_var: FloatArray, reference: FloatArray
) -> ResidualModel | None:
    """Fit the GP on ``residuals`` (observed minus law mean, nats) of schedules with
    ``features``, each with ``extra_var`` (nats^2) of its own on top of the fitted noise.
    ``reference``: features of the schedules to be scored too (they fix the feature
    scaling, with the observations). ``None`` with fewer than ``MIN_OBSERVATIONS``
    finite residuals."""
    ok = np.isfinite(residuals) & np.all(np.isfinite(features), axis=1) & np.isfinite(extra_var)
    if int(ok.sum()) < MIN_OBSERVATIONS:
        return None
    feats, r, ev = features[ok], residuals[ok], np.maximum(extra_var[ok], 0.0)
    both = np.vstack([feats, reference]) if reference.size else feats
    lo = both.min(axis=0)
    span = both.max(axis=0) - lo
    span = np.where(span > 1e-12, span, 1.0)
    z = (feats - lo) / span
    d2 = np.sum((z[:, None, :] - z[None, :, :]) ** 2, axis=-1)
    n = r.size
    ones = np.ones(n)
    best: tuple[float, ResidualModel] | None = None
    for length in LENGTH_SCALES:
        shape = np.exp(-0.5 * d2 / length**2)
        for amp in AMPLITUDE_SDS:
            for noise in NOISE_SDS:
                cov = amp**2 * shape + np.diag(noise**2 + ev) + 1e-12 * np.eye(n)
                try:
                    chol = np.linalg.cholesky(cov)
                except np.linalg.LinAlgError:
                    continue
                ki_r = np.linalg.solve(chol.T, np.linalg.solve(chol, r))
                ki_1 = np.linalg.solve(chol.T, np.linalg.solve(chol, ones))
                c = float(ones @ ki_r / (ones @ ki_1))
                resid = r - c
                alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, resid))
                nll = 0.5 * float(resid @ alpha) + float(np.log(np.diag(chol)).sum())
                if best is None or nll < best[0]:
                    # the noise of the predictions is the fitted noise only: ``extra_var``
                    # belongs to the pruned trials' own predictions
                    model = ResidualModel(z, lo, span, alpha, chol, c, length, amp, noise)
                    best = (nll, model)
    return None if best is None else best[1]


FINAL_REACH = 0.98
"""A COMPLETE trial counts when its last report is at or past this fraction of its schedule."""


@dataclass(frozen=True)
class Observations:
    """Finished trials' schedules and what they say about their final loss (nats), each
    with the variance (nats^2) of that statement beyond the runs' own noise."""

    schedules: list[Schedule]
    finals: FloatArray
    extra_var: FloatArray


def observations(
    trials: Sequence[FrozenTrial], model_size: float | None, tokens_per_step: float | None
) -> Observations:
    """The COMPLETE and law-PRUNED trials of ``trials`` with the given sizes (within 2%)."""
    schedules: list[Schedule] = []
    finals: list[float] = []
    extra: list[float] = []
    for t in trials:
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        try:
            schedule = trial_schedule(t)
        except InputError:
            continue
        if schedule is None or not _same_size(trial_sizes(t), (model_size, tokens_per_step)):
            continue
        if t.state == TrialState.COMPLETE:
            steps, losses = raw_points(t)
            if steps.size == 0 or not math.isfinite(losses[-1]):
                continue
            if steps[-1] + 1 < FINAL_REACH * schedule.total_steps or steps[-1] >= schedule.total_steps:
                continue
            final, var = float(losses[-1]), 0.0
        else:
            vals = [t.user_attrs.get(k) for k in (PRED_FINAL, PRED_LO, PRED_HI)]
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
                continue
            mean, lo, hi = (float(v) for v in vals)  # type: ignore[arg-type]
            final, var = mean, ((hi - lo) / (2.0 * Z90)) ** 2
        schedules.append(schedule)
        finals.append(final)
        extra.append(var)
    return Observations(schedules, np.asarray(finals, dtype=np.float64), np.asarray(extra, dtype=np.float64))


def _same_size(a: tuple[float | None, float | None], b: tuple[float | None, float | None]) -> bool:
    for x, y in zip(a, b, strict=True):
        if (x is None) != (y is None):
            return False
        if x is not None and y is not None and abs(x - y) > 0.02 * max(abs(x), abs(y)):
            return False
    return True
