"""A Gaussian process on a law's errors, over a few numbers that describe any LR schedule.

A law fitted on a study's curves can be wrong on part of the schedule space in a way its
own interval does not show (on short runs of a small model it over-predicts WSD cooldowns
by a few hundredths of a nat). Both the sampler (the law's error on final losses, see
:mod:`optuna_optlaws._sampler._residual`) and the pruner (the error of its prediction
conditioned on a prefix, see :mod:`optuna_optlaws._pruner._calibration`) learn that
error from the study's own finished trials with this GP:

    residual(x) ~ GP(c, k),    k(x, x') = f^2 s(x) s(x') exp(-|x - x'|^2 / (2 l^2)),

where ``x`` are the schedule's descriptors (:func:`schedule_descriptors`, min-max scaled)
and ``s(x)`` the law's own predictive standard deviation there (nats). So far from every
finished trial the GP is as unsure as the law says it is, and near them it knows the
law's actual error. The factor ``f``, the length scale ``l`` and the noise are chosen by
the marginal likelihood on a small grid, and ``c`` is the generalised-least-squares mean
of the residuals. Cost: one Cholesky per grid point on at most a few hundred residuals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from optuna_optlaws.schedules import Schedule

FloatArray = NDArray[np.float64]

FEATURE_NAMES = ("log_peak_lr", "log_total_steps", "area_fraction", "tail_lr", "stable_fraction", "warmup_fraction")
"""What :func:`schedule_descriptors` measures of a schedule (see there)."""

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

_DESCRIPTOR_CACHE: dict[Schedule, FloatArray] = {}
"""Features of the finished trials' schedules (they come back at every proposal)."""

_DESCRIPTOR_CACHE_SIZE = 4096


def schedule_descriptors(schedules: Sequence[Schedule], *, cache: bool = False) -> FloatArray:
    """``(n, 6)`` descriptors of each schedule, in the order of ``FEATURE_NAMES``:
    log peak LR; log total steps; area fraction (mean LR over peak); the mean LR over
    the last 10% of steps over peak (how annealed the end is); the fraction of steps
    after the warmup spent within 90% of the peak (how long the stable phase is); the
    warmup fraction (steps before the LR first reaches its peak over total steps).
    ``cache``: remember (and reuse) the features of these schedules."""
    out = np.zeros((len(schedules), len(FEATURE_NAMES)))
    for i, s in enumerate(schedules):
        hit = _DESCRIPTOR_CACHE.get(s) if cache else None
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
            if len(_DESCRIPTOR_CACHE) >= _DESCRIPTOR_CACHE_SIZE:
                _DESCRIPTOR_CACHE.clear()
            _DESCRIPTOR_CACHE[s] = out[i].copy()
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

    def predict(
        self,
        features: FloatArray,
        law_sd: FloatArray,
        pending: tuple[FloatArray, FloatArray] | None = None,
    ) -> tuple[FloatArray, FloatArray]:
        """Posterior mean and standard deviation (nats) of the law's error at ``features``,
        where the law's own predictive standard deviation is ``law_sd`` (nats).

        ``pending``: ``(features, law_sd)`` of schedules being trained now, whose final
        loss is not known yet. Each is believed to end where the GP predicts it will (a
        "kriging believer"): the posterior mean is unchanged, and the standard deviation
        shrinks near them as if they were observed (with the fitted noise), so that an
        exploration bonus does not send a second worker to the schedule a first one is
        already training."""
        from scipy.linalg import solve_triangular

        scale = self.factor * np.maximum(law_sd, MIN_LAW_SD)
        ks = self._cross(features, scale, self.x, self.scale)
        mu = self.mean + ks @ self.alpha
        v = solve_triangular(self.chol, ks.T, lower=True)
        var = scale**2 - np.sum(v * v, axis=0)
        if pending is not None and pending[0].size:
            p_scale = self.factor * np.maximum(pending[1], MIN_LAW_SD)
            p_x = (pending[0] - self.lo) / self.span
            # the block Cholesky of the covariance of the observations and the pending runs
            b = solve_triangular(self.chol, self._cross(pending[0], p_scale, self.x, self.scale).T, lower=True)
            k_pp = self._cross(pending[0], p_scale, p_x, p_scale) + self.noise**2 * np.eye(p_scale.size)
            l_pp = np.linalg.cholesky(k_pp - b.T @ b + 1e-12 * np.eye(p_scale.size))
            w = solve_triangular(l_pp, self._cross(features, scale, p_x, p_scale).T - b.T @ v, lower=True)
            var = var - np.sum(w * w, axis=0)
        sd = np.sqrt(np.maximum(var, 0.0))
        return np.asarray(mu, dtype=np.float64), np.asarray(sd, dtype=np.float64)

    def _cross(self, features: FloatArray, scale: FloatArray, x: FloatArray, x_scale: FloatArray) -> FloatArray:
        """The kernel between schedules with ``features`` (raw; their law-scaled prior
        sd ``scale``) and scaled points ``x`` (prior sd ``x_scale``)."""
        z = (features - self.lo) / self.span
        d2 = np.sum((z[:, None, :] - x[None, :, :]) ** 2, axis=-1)
        return np.asarray(scale[:, None] * x_scale[None, :] * np.exp(-0.5 * d2 / self.length**2), dtype=np.float64)

    def loo_z(self) -> FloatArray:
        """Standardised leave-one-out errors of the observations: each observation's
        residual minus the GP's prediction of it from the others, over that prediction's
        standard deviation (noise included), in closed form at the fitted
        hyperparameters (Rasmussen and Williams 2006, eq. 5.12). Their root mean square
        says whether the GP's own uncertainty is honest on this data (1: yes; above 1:
        it is too sure)."""
        from scipy.linalg import cho_solve

        k_inv = cho_solve((self.chol, True), np.eye(self.alpha.size))
        return np.asarray(self.alpha / np.sqrt(np.diag(k_inv)), dtype=np.float64)


def fit_residuals(
    features: FloatArray, residuals: FloatArray, extra_var: FloatArray, law_sd: FloatArray, reference: FloatArray
) -> ResidualModel | None:
    """Fit the GP on ``residuals`` (observed minus law mean, nats) of schedules with
    ``features``, each with ``extra_var`` (nats^2) of its own on top of the fitted noise
    and the law's predictive standard deviation ``law_sd`` (nats) there.
    ``reference``: features of the schedules to be scored too (they fix the feature
    scaling, with the observations). ``None`` with fewer than ``MIN_OBSERVATIONS``
    finite residuals."""
    from scipy.linalg import cho_solve

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
                ki_r, ki_1 = cho_solve((chol, True), np.column_stack([r, ones])).T
                c = float(ones @ ki_r / (ones @ ki_1))
                resid = r - c
                alpha = ki_r - c * ki_1
                nll = 0.5 * float(resid @ alpha) + float(np.log(np.diag(chol)).sum())
                if best is None or nll < best[0]:
                    # the noise of the predictions is the fitted noise only: ``extra_var``
                    # belongs to the pruned trials' own predictions
                    model = ResidualModel(z, lo, span, alpha, chol, c, scale, factor, length, noise)
                    best = (nll, model)
    return None if best is None else best[1]
