"""Proposing a schedule: quasi-random candidates scored by a law's predictive distribution.

* :func:`startup_point`: the ``index``-th point of a seeded scrambled Sobol sequence over
  the search space: a space-filling start while the study's law knows too little.
* :func:`propose`: draw ``n_candidates`` Sobol points (seeded by the sampler's seed and
  the trial number), turn them into schedules, score all of them with one
  ``law.predict_final`` call, and pick by the acquisition:

  - ``"lcb"`` (lower confidence bound): minimise ``mean - kappa * sigma``, where
    ``sigma`` is the predictive standard deviation read off the law's central 90%
    interval, ``(hi - lo) / (2 * 1.645)`` nats;
  - ``"thompson"``: minimise one draw ``mean + sigma * z`` per candidate
    (``z`` standard normal, seeded), i.e. Thompson sampling from the law's marginal
    predictive distribution;
  - ``"ei"`` (expected improvement): maximise ``E[max(target - y, 0)]`` for ``y``
    normal with that mean and sigma, ``target`` the best COMPLETE trial's final loss
    minus ``min_improvement`` nats: an improvement smaller than what the user would
    accept to lose (the pruner's regret tolerance) is worth nothing, so candidates
    predicted to tie with the best give way to those that might beat it clearly.
    Where every candidate's expected improvement underflows, the one most standard
    deviations below the target wins; without a COMPLETE trial, ``"lcb"`` decides.

Cost: building ``n`` schedules plus one ``predict_final`` call on them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from optuna_optlaws._errors import InputError
from optuna_optlaws._residual_gp import fit_residuals, schedule_descriptors
from optuna_optlaws._sampler._residual import Observations
from optuna_optlaws._sampler._space import ScheduleSpace
from optuna_optlaws.laws import Law
from optuna_optlaws.schedules import Schedule

ACQUISITIONS = ("lcb", "thompson", "ei")
"""Acquisition functions :func:`propose` knows."""


@dataclass(frozen=True)
class Proposal:
    """A proposed schedule as field values, and its score under the law (NaN at startup):
    the predicted final loss ``mean`` and ``sigma`` (nats), and where it came from."""

    values: dict[str, Any]
    mean: float = math.nan
    sigma: float = math.nan
    source: str = "startup"


def _seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def _sobol(dims: int, n: int, seed: int, skip: int = 0) -> np.ndarray:
    from scipy.stats import qmc

    sob = qmc.Sobol(dims, scramble=True, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # balance warnings for n not a power of two
        if skip:
            sob.fast_forward(skip)
        return np.asarray(sob.random(n), dtype=np.float64)


def startup_point(space: ScheduleSpace, seed: int, index: int) -> Proposal:
    """The ``index``-th point of the seeded Sobol sequence over ``space``."""
    u = _sobol(space.unit_dims, 1, _seed_of(seed, 0x5EED), skip=index)
    return Proposal(space.from_unit(u)[0])


def propose(
    space: ScheduleSpace,
    law: Law,
    *,
    seed: int,
    trial_number: int,
    n_candidates: int,
    acquisition: str,
    kappa: float,
    model_size: float | None,
    tokens_per_step: float | None,
    observed: Observations | None = None,
    incumbent: float = math.inf,
    min_improvement: float = 0.0,
    pending: Sequence[Schedule] = (),
) -> Proposal:
    """The best of ``n_candidates`` quasi-random schedules under ``acquisition``.

    With ``observed`` finished trials (at least
    :data:`~optuna_optlaws._residual_gp.MIN_OBSERVATIONS`), the law's predictions
    are corrected by a GP fitted on its residuals on them (:mod:`optuna_optlaws._residual_gp`): the
    candidate's mean is the law's plus the GP's, its sigma the GP's posterior one.
    ``incumbent`` (nats) is the best COMPLETE final loss, which ``"ei"`` must beat by
    ``min_improvement`` nats. ``pending``: schedules other workers are training now; the
    GP believes each ends where it predicts (:meth:`ResidualModel.predict`), so the
    candidates near them lose their exploration bonus and parallel workers spread out.

    Raises :class:`InputError` when the law cannot predict these schedules (for example
    a model size it has no term for)."""
    if acquisition not in ACQUISITIONS:
        raise InputError(f"unknown acquisition {acquisition!r}; known: {', '.join(ACQUISITIONS)}")
    u = _sobol(space.unit_dims, n_candidates, _seed_of(seed, trial_number))
    values = space.from_unit(u)
    schedules = [space.build(v) for v in values]
    seen = [] if observed is None else observed.schedules
    # one call scores the candidates, the finished trials' and the pending ones' schedules
    both = law.predict_final([*schedules, *seen, *pending], model_size=model_size, tokens_per_step=tokens_per_step)
    n, n_seen = len(schedules), len(seen)
    all_mean = np.asarray(both.mean, dtype=np.float64)
    all_sigma = both.sd(law.interval_level)
    mean, sigma = all_mean[:n], all_sigma[:n]
    if acquisition == "ei" and not math.isfinite(incumbent):
        acquisition = "lcb"  # nothing COMPLETE to improve on yet
    source = f"law:{acquisition}"
    if observed is not None and seen:
        cand_x = schedule_descriptors(schedules)
        model = fit_residuals(
            schedule_descriptors(seen, cache=True),
            observed.finals - all_mean[n : n + n_seen],
            observed.extra_var,
            all_sigma[n : n + n_seen],
            cand_x,
        )
        p_sd = all_sigma[n + n_seen :]
        believed = np.isfinite(p_sd)
        running = (schedule_descriptors(list(pending))[believed], p_sd[believed]) if pending else None
        if model is not None:
            # a candidate the law cannot score (NaN) stays out of the GP, not the others
            scored = np.isfinite(mean) & np.isfinite(sigma)
            mu, sd = np.full(n, np.nan), np.full(n, np.nan)
            if scored.any():
                mu[scored], sd[scored] = model.predict(cand_x[scored], sigma[scored], running)
            mean, sigma = mean + mu, sd
            source = f"law+residual-gp:{acquisition}"
    ok = np.isfinite(mean) & np.isfinite(sigma)
    if not ok.any():
        raise InputError(f"law {law.name!r} predicted no finite final loss for {n_candidates} candidate schedules")
    if acquisition == "lcb":
        score = mean - kappa * sigma
    elif acquisition == "thompson":
        z = np.random.default_rng(_seed_of(seed, trial_number, 0x7405)).standard_normal(mean.size)
        score = mean + sigma * z
    else:
        target = incumbent - min_improvement
        ei = np.where(ok, expected_improvement(mean, sigma, target), 0.0)
        # all underflowed: the candidate most standard deviations below the target
        score = -ei if np.any(ei > 0) else (mean - target) / np.maximum(sigma, 1e-12)
    score = np.where(ok, score, np.inf)
    best = int(np.argmin(score))
    return Proposal(values[best], float(mean[best]), float(sigma[best]), source)


def expected_improvement(mean: np.ndarray, sigma: np.ndarray, target: float) -> np.ndarray:
    """``E[max(target - y, 0)]`` (nats) for ``y ~ N(mean, sigma^2)``, elementwise (0 where
    it underflows or is not finite)."""
    from scipy.stats import norm

    sd = np.maximum(sigma, 1e-12)
    z = (target - mean) / sd
    ei = sd * (z * norm.cdf(z) + norm.pdf(z))
    return np.where(np.isfinite(ei), np.maximum(ei, 0.0), 0.0)
