"""The study's correction to the law: a Gaussian process on the law's residuals.

A law fitted on a study's curves can be biased on part of the search space (on short
runs of a small model, say, it can under-rate a late cooldown by a few hundredths of a
nat). The sampler would then keep proposing where the law is optimistic and never learn
otherwise. So, as in physics-informed Bayesian optimisation, the law is the prior *mean*
of the final loss and a GP models what it gets wrong:

    final_loss(x) = law_mean(x) + r(x),    r ~ GP(c, k),

fitted on the trials already finished in the same (N, tokens per step) group:

* a COMPLETE trial gives its last reported loss (nats, at its schedule's last step);
* a PRUNED trial gives the conditioned prediction of its final loss
  (``OptLawsPruner``'s ``optlaws_pred_final``, or the law's own when another pruner
  stopped it) with that prediction's own variance as extra noise, so the GP also
  learns where runs are predicted to lose.

``x`` are a few numbers that describe any schedule (:func:`schedule_features`), so the
correction works across families and for logged schedules. The prior scale of the law's
error at ``x`` is the law's own predictive standard deviation ``s(x)`` there, times a
factor ``f``: ``k(x, x') = f^2 s(x) s(x') exp(-|x - x'|^2 / (2 l^2))`` on min-max scaled
features. So far from every finished trial the sampler is as unsure as the law says it
is (its exploration does not shrink because the law happened to be right where the
study has been), and near them it knows the law's actual error. ``f``, the length scale
``l`` and the noise are chosen by the marginal likelihood on a small grid, and ``c`` is
the generalised-least-squares mean of the residuals. Cost: one Cholesky per grid point
on at most a few hundred trials.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from optuna.trial import FrozenTrial, TrialState

from optuna_optlaws._pruner._frontier import PRED_FINAL, PRED_HI, PRED_LO
from optuna_optlaws._study_state import GROUP_D_TOLERANCE, raw_points, readable_schedule, trial_curve, trial_sizes
from optuna_optlaws.laws import Law, Prediction
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

AMPLITUDE_FACTORS = (0.5, 1.0, 2.0, 4.0)
"""Candidate factors ``f`` on the law's own predictive standard deviation (the prior
scale of its error)."""

MIN_LAW_SD = 1e-3
"""Floor of the law's standard deviation in the kernel (nats)."""



_FEATURE_CACHE: dict[Schedule, FloatArray] = {}
"""Features of the finished trials' schedules (they come back at every proposal)."""

_FEATURE_CACHE_SIZE = 4096


def schedule_features(schedules: Sequence[Schedule], *, cache: bool = False) -> FloatArray:
    """``(n, 6)`` descriptors of each schedule, in the order of ``FEATURE_NAMES``:
    log peak LR; log total steps; area fraction (mean LR over peak); the mean LR over
    the last 10% of steps over peak (how annealed the end is); the fraction of steps
    after the warmup spent within 90% of the peak (how long the stable phase is); the
    warmup fraction (steps before the LR first reaches its peak over total steps).
    ``cache``: remember (and reuse) the features of these schedules."""
    out = np.zeros((len(schedules), len(FEATURE_NAMES)))
    for i, s in enumerate(schedules):
        hit = _FEATURE_CACHE.get(s) if cache else None
        if hit is not None:
            out[i] = hit
            continue
        total = s.total_steps
        t = np.linspace(0.0, total - 1.0, _PROBES)
        lr = s.lr_at(t)
        peak = max(float(lr.max()), float(s.peak_lr), 1e-300)
        rel = lr / peak
        warm = s.peak_reached_at() / total
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
        if cache:
            if len(_FEATURE_CACHE) >= _FEATURE_CACHE_SIZE:
                _FEATURE_CACHE.clear()
            _FEATURE_CACHE[s] = out[i].copy()
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
    scale: FloatArray
    """``f s(x)`` of the observations (nats)."""
    factor: float
    length: float
    noise: float

    def predict(self, features: FloatArray, law_sd: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Posterior mean and standard deviation (nats) of the law's error at ``features``,
        where the law's own predictive standard deviation is ``law_sd`` (nats)."""
        z = (features - self.lo) / self.span
        scale = self.factor * np.maximum(law_sd, MIN_LAW_SD)
        d2 = np.sum((z[:, None, :] - self.x[None, :, :]) ** 2, axis=-1)
        ks = scale[:, None] * self.scale[None, :] * np.exp(-0.5 * d2 / self.length**2)
        mu = self.mean + ks @ self.alpha
        v = np.linalg.solve(self.chol, ks.T)
        var = np.maximum(scale**2 - np.sum(v * v, axis=0), 0.0)
        return np.asarray(mu, dtype=np.float64), np.asarray(np.sqrt(var), dtype=np.float64)


def fit_residuals(
    features: FloatArray, residuals: FloatArray, extra_var: FloatArray, law_sd: FloatArray, reference: FloatArray
) -> ResidualModel | None:
    """Fit the GP on ``residuals`` (observed minus law mean, nats) of schedules with
    ``features``, each with ``extra_var`` (nats^2) of its own on top of the fitted noise
    and the law's predictive standard deviation ``law_sd`` (nats) there.
    ``reference``: features of the schedules to be scored too (they fix the feature
    scaling, with the observations). ``None`` with fewer than ``MIN_OBSERVATIONS``
    finite residuals."""
    ok = (
        np.isfinite(residuals) & np.all(np.isfinite(features), axis=1) & np.isfinite(extra_var) & np.isfinite(law_sd)
    )
    if int(ok.sum()) < MIN_OBSERVATIONS:
        return None
    feats, r, ev = features[ok], residuals[ok], np.maximum(extra_var[ok], 0.0)
    sd = np.maximum(law_sd[ok], MIN_LAW_SD)
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
        for factor in AMPLITUDE_FACTORS:
            scale = factor * sd
            for noise in NOISE_SDS:
                cov = scale[:, None] * scale[None, :] * shape + np.diag(noise**2 + ev) + 1e-12 * np.eye(n)
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
                    model = ResidualModel(z, lo, span, alpha, chol, c, scale, factor, length, noise)
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
    trials: Sequence[FrozenTrial], law: Law, model_size: float | None, tokens_per_step: float | None
) -> Observations:
    """The COMPLETE and PRUNED trials of ``trials`` with the given sizes (within 2%).

    A PRUNED trial's final loss is the one ``OptLawsPruner`` predicted for it (its
    ``optlaws_pred_*`` attributes) or, when another pruner stopped it, ``law``'s
    prediction conditioned on its reported prefix (cached per law and trial)."""
    schedules: list[Schedule] = []
    finals: list[float] = []
    extra: list[float] = []
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
            pred = _pruned_final(t, law)
            if pred is None:
                continue
            # the pruner records its interval at the law's level (90%)
            stated = float(pred.mean[0]), float(pred.sd(law.interval_level)[0]) ** 2
        schedules.append(schedule)
        finals.append(stated[0])
        extra.append(stated[1])
    return Observations(schedules, np.asarray(finals, dtype=np.float64), np.asarray(extra, dtype=np.float64))


_CONDITIONED: weakref.WeakKeyDictionary[Law, dict[int, Prediction | None]] = weakref.WeakKeyDictionary()
"""law -> {trial id: predicted final loss or None} of PRUNED trials."""


def _pruned_final(trial: FrozenTrial, law: Law) -> Prediction | None:
    """The final loss (nats, with its interval) a PRUNED trial would have reached."""
    vals = [trial.user_attrs.get(k) for k in (PRED_FINAL, PRED_LO, PRED_HI)]
    if all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
        return Prediction(*(np.array([float(v)]) for v in vals))  # type: ignore[arg-type]
    cache = _CONDITIONED.setdefault(law, {})
    if trial._trial_id in cache:
        return cache[trial._trial_id]
    out: Prediction | None = None
    curve = trial_curve(trial)
    if curve is not None:
        try:
            pred = law.predict(
                curve.schedule,
                [curve.schedule.total_steps - 1],
                model_size=curve.model_size,
                tokens_per_step=curve.tokens_per_step,
                observed=curve,
            )
            mean, lo, hi = float(pred.mean[0]), float(pred.lo[0]), float(pred.hi[0])
            if all(math.isfinite(v) for v in (mean, lo, hi)) and lo <= hi:
                out = pred
        except Exception:  # a law that cannot predict this trial: leave it out
            out = None
    cache[trial._trial_id] = out
    return out


def _same_size(a: tuple[float | None, float | None], b: tuple[float | None, float | None]) -> bool:
    for x, y in zip(a, b, strict=True):
        if (x is None) != (y is None):
            return False
        if x is not None and y is not None and abs(x - y) > GROUP_D_TOLERANCE * max(abs(x), abs(y)):
            return False
    return True
