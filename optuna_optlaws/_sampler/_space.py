"""The search space of an LR schedule: Optuna distributions, schedule building, candidates.

One :class:`ScheduleSpace` describes what :func:`~optuna_optlaws.suggest_schedule` may
suggest: schedule families, a log-uniform peak LR, warmup steps, the WSD cooldown
fraction, the final LR as a fraction of the peak, and the training length (steps). It is
the single place that knows

* which Optuna parameters a family uses (:meth:`ScheduleSpace.distributions`), so the
  parameters show up in the dashboard like any other;
* how parameter values become a :class:`~optuna_optlaws.schedules.Schedule`
  (:meth:`ScheduleSpace.build`);
* how a point of the unit hypercube becomes parameter values
  (:meth:`ScheduleSpace.from_unit`), which the sampler uses for quasi-random candidates.

It round-trips through JSON (:meth:`to_dict` / :meth:`from_dict`) so any worker can rebuild
it from the study's storage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from optuna_optlaws._errors import InputError
from optuna_optlaws.schedules import COOLDOWN_SHAPES, Schedule

SPACE_FAMILIES = ("constant", "cosine", "linear", "wsd", "inverse_sqrt", "step")
"""Families a search space may contain (all but ``knots``, which has no parameters)."""

_HAS_FINAL = ("cosine", "linear", "wsd")
"""Families with a final LR (``final_lr = final_lr_ratio * peak_lr``)."""

IntRange = tuple[int, int]
FloatRange = tuple[float, float]


def _int_range(what: str, value: int | Sequence[int]) -> IntRange:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        lo = hi = int(value)
    else:
        try:
            lo_, hi_ = value  # type: ignore[misc]
        except (TypeError, ValueError):
            raise InputError(f"suggest_schedule: {what}={value!r} must be an int or a (low, high) pair") from None
        if float(lo_) != int(lo_) or float(hi_) != int(hi_):
            raise InputError(f"suggest_schedule: {what}={value!r} must be whole numbers of steps")
        lo, hi = int(lo_), int(hi_)
    if lo < 0 or hi < lo:
        raise InputError(f"suggest_schedule: {what}={value!r} needs 0 <= low <= high")
    return lo, hi


def _float_range(what: str, value: float | Sequence[float], *, positive: bool = False) -> FloatRange:
    if isinstance(value, (int, float, np.floating)) and not isinstance(value, bool):
        lo = hi = float(value)
    else:
        try:
            lo_, hi_ = value  # type: ignore[misc]
            lo, hi = float(lo_), float(hi_)
        except (TypeError, ValueError):
            raise InputError(f"suggest_schedule: {what}={value!r} must be a number or a (low, high) pair") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo or lo < 0 or (positive and lo <= 0):
        bound = "0 < low <= high" if positive else "0 <= low <= high"
        raise InputError(f"suggest_schedule: {what}={value!r} needs finite {bound}")
    return lo, hi


@dataclass(frozen=True)
class ScheduleSpace:
    """A schedule search space; parameter names are ``f"{name}_{field}"``.

    Ranges are inclusive ``(low, high)`` pairs; a pair with ``low == high`` is a fixed
    value and suggests no parameter. ``peak_lr`` is in LR units (log-uniform),
    ``warmup_steps`` and ``total_steps`` in optimizer steps, ``cooldown_fraction`` a
    fraction of ``total_steps`` (``wsd`` only), ``final_lr_ratio`` the final LR over the
    peak LR (``cosine``, ``linear``, ``wsd``).
    """

    name: str
    families: tuple[str, ...]
    peak_lr: FloatRange
    warmup_steps: IntRange
    cooldown_fraction: FloatRange
    final_lr_ratio: FloatRange
    total_steps: IntRange
    cooldowns: tuple[str, ...] = ("linear",)

    @classmethod
    def create(
        cls,
        *,
        name: str,
        families: Sequence[str],
        peak_lr: float | Sequence[float],
        warmup_steps: int | Sequence[int],
        cooldown_fraction: float | Sequence[float],
        final_lr_ratio: float | Sequence[float],
        total_steps: int | Sequence[int],
        cooldowns: Sequence[str] = ("linear",),
    ) -> ScheduleSpace:
        """Validate user arguments (raising :class:`InputError`) and build the space."""
        if not isinstance(name, str) or not name:
            raise InputError(f"suggest_schedule: name={name!r} must be a non-empty string")
        fams = tuple(str(f) for f in ([families] if isinstance(families, str) else families))
        if not fams:
            raise InputError("suggest_schedule: families is empty")
        for f in fams:
            if f not in SPACE_FAMILIES:
                raise InputError(f"suggest_schedule: unknown family {f!r}; known: {', '.join(SPACE_FAMILIES)}")
        if len(set(fams)) != len(fams):
            raise InputError(f"suggest_schedule: families {fams} has duplicates")
        cds = tuple(str(c) for c in ([cooldowns] if isinstance(cooldowns, str) else cooldowns))
        if not cds or any(c not in COOLDOWN_SHAPES for c in cds):
            raise InputError(f"suggest_schedule: cooldowns {cds} must be among {COOLDOWN_SHAPES}")
        total = _int_range("total_steps", total_steps)
        if total[0] < 1:
            raise InputError(f"suggest_schedule: total_steps={total_steps!r} must be >= 1")
        warm = _int_range("warmup_steps", warmup_steps)
        if warm[1] > total[0]:
            raise InputError(
                f"suggest_schedule: warmup_steps up to {warm[1]} exceeds the shortest total_steps {total[0]}"
            )
        frac = _float_range("cooldown_fraction", cooldown_fraction)
        if frac[1] > 1.0:
            raise InputError(f"suggest_schedule: cooldown_fraction={cooldown_fraction!r} must lie in [0, 1]")
        ratio = _float_range("final_lr_ratio", final_lr_ratio)
        if ratio[1] > 1.0:
            raise InputError(f"suggest_schedule: final_lr_ratio={final_lr_ratio!r} must lie in [0, 1]")
        if "exp" in cds and "wsd" in fams and ratio[0] <= 0.0:
            raise InputError("suggest_schedule: an 'exp' cooldown needs final_lr_ratio > 0")
        peak = _float_range("peak_lr", peak_lr, positive=True)
        return cls(name, fams, peak, warm, frac, ratio, total, cds)

    # ------------------------------------------------------------------ names
    def param(self, field: str) -> str:
        """The Optuna parameter name of a field, e.g. ``lr_peak_lr``."""
        return f"{self.name}_{field}"

    @property
    def param_names(self) -> tuple[str, ...]:
        """Every parameter name this space may suggest (over all families)."""
        return tuple(self.param(f) for f in _FIELDS)

    # ------------------------------------------------------------------ Optuna side
    def distributions(self, family: str | None = None) -> dict[str, BaseDistribution]:
        """The Optuna distributions suggested for ``family`` (``None``: the family
        parameter and those shared by every family), in suggestion order. Fixed fields
        are left out."""
        out: dict[str, BaseDistribution] = {}
        if family is None:
            if len(self.families) > 1:
                out[self.param("family")] = CategoricalDistribution(self.families)
            if self.peak_lr[0] < self.peak_lr[1]:
                out[self.param("peak_lr")] = FloatDistribution(self.peak_lr[0], self.peak_lr[1], log=True)
            if self.warmup_steps[0] < self.warmup_steps[1]:
                out[self.param("warmup_steps")] = IntDistribution(*self.warmup_steps)
            if self.total_steps[0] < self.total_steps[1]:
                out[self.param("total_steps")] = IntDistribution(*self.total_steps)
            return out
        if family == "wsd":
            if self.cooldown_fraction[0] < self.cooldown_fraction[1]:
                out[self.param("cooldown_fraction")] = FloatDistribution(*self.cooldown_fraction)
            if len(self.cooldowns) > 1:
                out[self.param("cooldown")] = CategoricalDistribution(self.cooldowns)
        if family in _HAS_FINAL and self.final_lr_ratio[0] < self.final_lr_ratio[1]:
            out[self.param("final_lr_ratio")] = FloatDistribution(*self.final_lr_ratio)
        return out

    def all_distributions(self, family: str) -> dict[str, BaseDistribution]:
        """Shared and family-specific distributions of ``family``."""
        return {**self.distributions(None), **self.distributions(family)}

    def fixed_values(self) -> dict[str, Any]:
        """Field values that suggest no parameter (single-valued fields)."""
        return {
            "family": self.families[0],
            "peak_lr": self.peak_lr[0],
            "warmup_steps": self.warmup_steps[0],
            "total_steps": self.total_steps[0],
            "cooldown_fraction": self.cooldown_fraction[0],
            "cooldown": self.cooldowns[0],
            "final_lr_ratio": self.final_lr_ratio[0],
        }

    def values_from_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Field values (``family``, ``peak_lr``, ...) from a trial's parameters."""
        values = self.fixed_values()
        for f in _FIELDS:
            if self.param(f) in params:
                values[f] = params[self.param(f)]
        return values

    def build(self, values: Mapping[str, Any]) -> Schedule:
        """The schedule of the given field values (see :meth:`values_from_params`)."""
        fam = str(values["family"])
        peak = float(values["peak_lr"])
        total = int(values["total_steps"])
        warm = min(int(values["warmup_steps"]), total)
        final = float(values["final_lr_ratio"]) * peak
        if fam == "constant":
            return Schedule.constant(peak, total, warm)
        if fam == "cosine":
            return Schedule.cosine(peak, total, warm, final)
        if fam == "linear":
            return Schedule.linear(peak, total, warm, final)
        if fam == "wsd":
            return Schedule.wsd(peak, total, warm, final, float(values["cooldown_fraction"]), str(values["cooldown"]))
        if fam == "inverse_sqrt":
            return Schedule.inverse_sqrt(peak, total, warm)
        if fam == "step":
            return Schedule.step(peak, total, warm)
        raise InputError(f"schedule space {self.name!r}: unknown family {fam!r}")

    # ------------------------------------------------------------------ candidates
    @property
    def unit_dims(self) -> int:
        """Dimension of the unit hypercube that :meth:`from_unit` maps."""
        return len(_FIELDS)

    def from_unit(self, u: NDArray[np.float64]) -> list[dict[str, Any]]:
        """Map points of ``[0, 1)^unit_dims`` (rows of ``u``) to field values.

        Every coordinate maps one field, in the order of ``_FIELDS``; the mapping follows
        each field's Optuna distribution (log scale for the peak LR, rounding for steps)."""
        u = np.atleast_2d(np.asarray(u, dtype=np.float64))
        if u.shape[1] != self.unit_dims:
            raise InputError(f"schedule space {self.name!r}: unit points need {self.unit_dims} columns")
        u = np.clip(u, 0.0, 1.0 - 1e-12)
        fam_idx = np.floor(u[:, 0] * len(self.families)).astype(int)
        lp_lo, lp_hi = math.log(self.peak_lr[0]), math.log(self.peak_lr[1])
        peaks = np.exp(lp_lo + u[:, 1] * (lp_hi - lp_lo))
        peaks = np.clip(peaks, self.peak_lr[0], self.peak_lr[1])
        warm = _round_ints(u[:, 2], self.warmup_steps)
        total = _round_ints(u[:, 3], self.total_steps)
        frac = self.cooldown_fraction[0] + u[:, 4] * (self.cooldown_fraction[1] - self.cooldown_fraction[0])
        cd_idx = np.floor(u[:, 5] * len(self.cooldowns)).astype(int)
        ratio = self.final_lr_ratio[0] + u[:, 6] * (self.final_lr_ratio[1] - self.final_lr_ratio[0])
        out = []
        for i in range(u.shape[0]):
            out.append(
                {
                    "family": self.families[fam_idx[i]],
                    "peak_lr": float(peaks[i]),
                    "warmup_steps": int(warm[i]),
                    "total_steps": int(total[i]),
                    "cooldown_fraction": float(frac[i]),
                    "cooldown": self.cooldowns[cd_idx[i]],
                    "final_lr_ratio": float(ratio[i]),
                }
            )
        return out

    def params_of(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The Optuna parameter values that :func:`suggest_schedule` would record for
        these field values (only the parameters of their family)."""
        dists = self.all_distributions(str(values["family"]))
        fields = {self.param(f): f for f in _FIELDS}
        return {p: values[fields[p]] for p in dists}

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, inverted by :meth:`from_dict`."""
        return {
            "name": self.name,
            "families": list(self.families),
            "peak_lr": list(self.peak_lr),
            "warmup_steps": list(self.warmup_steps),
            "cooldown_fraction": list(self.cooldown_fraction),
            "final_lr_ratio": list(self.final_lr_ratio),
            "total_steps": list(self.total_steps),
            "cooldowns": list(self.cooldowns),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScheduleSpace:
        """Rebuild a space from :meth:`to_dict`'s output (validated again)."""
        try:
            return cls.create(
                name=data["name"],
                families=data["families"],
                peak_lr=data["peak_lr"],
                warmup_steps=data["warmup_steps"],
                cooldown_fraction=data["cooldown_fraction"],
                final_lr_ratio=data["final_lr_ratio"],
                total_steps=data["total_steps"],
                cooldowns=data.get("cooldowns", ("linear",)),
            )
        except (KeyError, TypeError) as exc:
            raise InputError(f"stored schedule search space is malformed ({exc!r})") from None


_FIELDS = ("family", "peak_lr", "warmup_steps", "total_steps", "cooldown_fraction", "cooldown", "final_lr_ratio")
"""Field order: the column order of :meth:`ScheduleSpace.from_unit`'s unit points."""


def _round_ints(u: NDArray[np.float64], bounds: IntRange) -> NDArray[np.int64]:
    lo, hi = bounds
    return np.clip(np.floor(lo + u * (hi - lo + 1)), lo, hi).astype(np.int64)
