"""Schedule features shared by all laws, computed once per schedule and cached.

Every law sees a schedule through the same few arrays, so they live here, in one place:

* :func:`schedule_features` -> :class:`ScheduleFeatures`: the per-step LR ``eta[t]``
  (``t = 0 .. n-1``, LR units), the cumulative LR area ``S1[t] = sum_{tau=0..t} eta[tau]``
  (LR x steps), the end of warmup (first step at the peak LR), and the steps where the LR
  changes. Cached (LRU) per ``(schedule, n)``: a law asked about the same schedule again,
  as the pruner does at every report, pays nothing.
* :func:`observations` -> :class:`Observations`: the finite (step, loss) points of many
  curves concatenated into flat arrays, with the curve index of each point, ready for a
  least-squares residual. NaN/inf losses (diverged points) are dropped there, never
  passed to a law.

Conventions (steps are optimizer steps; ``eta[t]`` is the LR of step ``t``'s update):

* ``S1(t)`` includes step ``t`` and the warmup: ``S1(t) = sum_{tau=0..t} eta_tau``. The
  multi-power law's ``S1(t) + S_W`` is exactly this (``S_W`` being the warmup's area).
* Predictions beyond a schedule's ``total_steps`` continue at its last LR (as
  :meth:`Schedule.lr_at` clamps); ``n`` is chosen to cover the largest step asked for.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from optuna_optlaws._errors import InputError
from optuna_optlaws.curves import Curve
from optuna_optlaws.schedules import Schedule

_CACHE_SIZE = 512


@dataclass(frozen=True, eq=False)
class ScheduleFeatures:
    """Per-step arrays of one schedule over steps ``0 .. n-1`` (read-only; hashed by
    identity, so laws may cache their own derived arrays per features object)."""

    eta: NDArray[np.float64]
    """LR of every step ``0 .. n-1`` (LR units)."""
    s1: NDArray[np.float64]
    """Cumulative LR area, ``s1[t] = sum_{tau=0..t} eta[tau]`` (LR x steps)."""
    warmup_end: int
    """First step at which the LR reaches its maximum (0 when there is no warmup)."""
    change_steps: NDArray[np.int64]
    """Steps ``k >= 1`` with ``eta[k] != eta[k-1]`` (where the LR changes), sorted."""

    @property
    def n(self) -> int:
        """Number of steps covered."""
        return int(self.eta.size)

    @property
    def peak_lr(self) -> float:
        """Largest LR of the schedule (LR units)."""
        return float(self.eta[self.warmup_end]) if self.eta.size else 0.0

    @property
    def warmup_area(self) -> float:
        """LR area of the warmup, ``sum_{tau < warmup_end} eta[tau]`` (LR x steps)."""
        return float(self.s1[self.warmup_end - 1]) if self.warmup_end > 0 else 0.0

    def area(self, steps: ArrayLike) -> NDArray[np.float64]:
        """``S1`` at the given integer steps (each ``< n``)."""
        return np.asarray(self.s1[np.asarray(steps, dtype=np.int64)], dtype=np.float64)

    def area_between(self, k: ArrayLike, t: ArrayLike) -> NDArray[np.float64]:
        """``sum_{tau=k..t} eta[tau]`` (0 where ``k > t``); ``k``, ``t`` broadcast."""
        k = np.asarray(k, dtype=np.int64)
        t = np.asarray(t, dtype=np.int64)
        below = np.where(k > 0, self.s1[np.maximum(k - 1, 0)], 0.0)
        return np.asarray(np.where(k <= t, self.s1[t] - below, 0.0), dtype=np.float64)

    def lr_drops(self, after: int | None = None) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """The LR changes ``(k, eta[k-1] - eta[k])`` at steps ``k > after`` (default: after
        the warmup end), positive for a decrease."""
        start = self.warmup_end if after is None else int(after)
        k = self.change_steps[self.change_steps > start]
        return k, self.eta[k - 1] - self.eta[k]


def check_steps(steps: ArrayLike | None, schedule: Schedule, where: str = "") -> NDArray[np.int64]:
    """Target steps as a 1-D int array (default: the schedule's last step); InputError on
    negative, non-integer or non-finite steps."""
    if steps is None:
        return np.array([schedule.total_steps - 1], dtype=np.int64)
    arr = np.asarray(steps, dtype=np.float64).ravel()
    place = f"{where}: " if where else ""
    if arr.size and (not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(arr != np.round(arr))):
        raise InputError(f"{place}steps to predict must be whole numbers >= 0")
    return arr.astype(np.int64)


def schedule_features(schedule: Schedule, n: int | None = None) -> ScheduleFeatures:
    """Features of ``schedule`` over steps ``0 .. n-1`` (default ``total_steps``), cached."""
    n = schedule.total_steps if n is None else max(int(n), 1)
    return _features_cached(schedule, n)


def features_for(schedule: Schedule, steps: NDArray[np.int64]) -> ScheduleFeatures:
    """Features covering ``steps`` (and at least the schedule's own horizon)."""
    top = int(steps.max()) + 1 if steps.size else 1
    return schedule_features(schedule, max(schedule.total_steps, top))


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _features_cached(schedule: Schedule, n: int) -> ScheduleFeatures:
    eta = schedule.lrs(n)
    eta.setflags(write=False)
    s1 = np.cumsum(eta)
    s1.setflags(write=False)
    if eta.size:
        peak = eta.max()
        warmup_end = int(np.argmax(eta >= peak * (1 - 1e-12)))
    else:
        warmup_end = 0
    change = np.flatnonzero(np.diff(eta) != 0).astype(np.int64) + 1
    change.setflags(write=False)
    return ScheduleFeatures(eta=eta, s1=s1, warmup_end=warmup_end, change_steps=change)


@dataclass(frozen=True)
class Observations:
    """The finite observations of several curves, concatenated."""

    curves: tuple[Curve, ...]
    """The curves, in the order given."""
    curve_index: NDArray[np.int64]
    """For every point, the index of its curve in :attr:`curves`."""
    steps: NDArray[np.int64]
    """Optimizer step of every point."""
    losses: NDArray[np.float64]
    """Observed loss (nats) of every point, all finite and > 0."""

    @property
    def size(self) -> int:
        """Number of points."""
        return int(self.steps.size)

    def of(self, i: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Steps and losses of curve ``i``."""
        m = self.curve_index == i
        return self.steps[m], self.losses[m]

    def slices(self) -> list[slice]:
        """For each curve, the slice of the flat arrays holding its points."""
        bounds = np.searchsorted(self.curve_index, np.arange(len(self.curves) + 1))
        return [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds.tolist())]


def observations(curves: Sequence[Curve], *, min_step: int = 0, where: str = "fit") -> Observations:
    """Concatenate the finite, positive losses at steps ``>= min_step`` of ``curves``.

    Raises InputError when no curve is given or no finite point remains."""
    if len(curves) == 0:
        raise InputError(f"{where}: no curves to fit")
    idx, steps, losses = [], [], []
    for i, c in enumerate(curves):
        keep = np.isfinite(c.losses) & (c.losses > 0) & (c.steps >= min_step)
        steps.append(c.steps[keep])
        losses.append(c.losses[keep])
        idx.append(np.full(int(keep.sum()), i, dtype=np.int64))
    obs = Observations(
        curves=tuple(curves),
        curve_index=np.concatenate(idx),
        steps=np.concatenate(steps).astype(np.int64),
        losses=np.concatenate(losses),
    )
    if obs.size == 0:
        ids = ", ".join(c.run_id for c in curves[:5])
        raise InputError(f"{where}: runs {ids} have no finite loss to fit")
    return obs
