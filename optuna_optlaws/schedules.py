"""Learning-rate schedules: the named families and any piecewise-linear schedule.

A :class:`Schedule` maps an optimizer step ``t`` (an integer, ``0 <= t < total_steps``) to
the learning rate used for that step's update. Every family shares the same vocabulary:

* ``peak_lr``: the LR reached at the end of warmup (learning-rate units, e.g. 3e-4);
* ``warmup_steps``: linear warmup ``lr(t) = peak_lr * t / warmup_steps`` for ``t < warmup``
  (so step 0 trains at LR 0, as Hugging Face's and torch's linear warmups do);
* ``final_lr``: the LR the decay reaches at ``t = total_steps`` (the end of training);
* ``total_steps``: the number of optimizer steps of the run.

Schedules are immutable, JSON round-trip exactly (:meth:`Schedule.to_json`,
:meth:`Schedule.from_json`), give the per-step LR of a whole horizon as one NumPy array
(:meth:`Schedule.lrs`, about 10 ms for 10**6 steps), and become a torch LR scheduler that
reproduces them step for step (:meth:`Schedule.to_torch`, torch imported lazily).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from optuna_optlaws._errors import InputError

if TYPE_CHECKING:
    import torch

FAMILIES = ("constant", "cosine", "linear", "wsd", "step", "inverse_sqrt", "knots")
"""Names of the schedule families, as stored in ``Schedule.family``."""

COOLDOWN_SHAPES = ("linear", "exp", "1-sqrt", "cosine")
"""Shapes of the cooldown of a warmup-stable-decay (``wsd``) schedule."""

_FORMAT_VERSION = 1


def _check_positive_int(name: str, value: Any, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)):
        raise InputError(f"schedule parameter {name}={value!r} is not a number of steps")
    if not math.isfinite(value) or float(value) != int(value):
        raise InputError(f"schedule parameter {name}={value!r} is not a whole number of steps")
    ivalue = int(value)
    if ivalue < 0 or (ivalue == 0 and not allow_zero):
        raise InputError(f"schedule parameter {name}={value!r} must be {'>= 0' if allow_zero else '> 0'}")
    return ivalue


def _check_lr(name: str, value: Any) -> float:
    try:
        fvalue = float(value)
    except (TypeError, ValueError):
        raise InputError(f"schedule parameter {name}={value!r} is not a number") from None
    if not math.isfinite(fvalue) or fvalue < 0:
        raise InputError(f"schedule parameter {name}={value!r} must be a finite LR >= 0")
    return fvalue


@dataclass(frozen=True)
class Schedule:
    """An LR schedule: a family name and its parameters.

    Build one with the family constructors (:meth:`constant`, :meth:`cosine`,
    :meth:`linear`, :meth:`wsd`, :meth:`step`, :meth:`inverse_sqrt`) or from logged
    values with :meth:`from_knots`. ``params`` holds the family's parameters exactly as
    stored in JSON; use :meth:`lr_at` / :meth:`lrs` to evaluate.
    """

    family: str
    total_steps: int
    params: Mapping[str, Any] = field(default_factory=dict)
    _knots: tuple[NDArray[np.float64], NDArray[np.float64]] | None = field(
        default=None, repr=False, compare=False
    )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def constant(cls, peak_lr: float, total_steps: int, warmup_steps: int = 0) -> Schedule:
        """Warmup, then ``peak_lr`` until the end."""
        return cls._family("constant", total_steps, peak_lr=peak_lr, warmup_steps=warmup_steps)

    @classmethod
    def cosine(
        cls, peak_lr: float, total_steps: int, warmup_steps: int = 0, final_lr: float = 0.0
    ) -> Schedule:
        """Warmup, then half a cosine from ``peak_lr`` to ``final_lr`` at ``total_steps``."""
        return cls._family(
            "cosine", total_steps, peak_lr=peak_lr, warmup_steps=warmup_steps, final_lr=final_lr
        )

    @classmethod
    def linear(
        cls, peak_lr: float, total_steps: int, warmup_steps: int = 0, final_lr: float = 0.0
    ) -> Schedule:
        """Warmup, then a straight line from ``peak_lr`` to ``final_lr`` at ``total_steps``."""
        return cls._family(
            "linear", total_steps, peak_lr=peak_lr, warmup_steps=warmup_steps, final_lr=final_lr
        )

    @classmethod
    def wsd(
        cls,
        peak_lr: float,
        total_steps: int,
        warmup_steps: int = 0,
        final_lr: float = 0.0,
        cooldown_fraction: float = 0.2,
        cooldown: str = "linear",
    ) -> Schedule:
        """Warmup-stable-decay: warmup, ``peak_lr`` held, then a cooldown over the last
        ``cooldown_fraction`` of ``total_steps`` to ``final_lr``.

        ``cooldown`` is the cooldown's shape: ``linear``; ``exp`` (geometric,
        ``peak * (final/peak)**p``, needs ``final_lr > 0``); ``1-sqrt``
        (``final + (peak-final) * (1 - sqrt(p))``, Hägele et al. 2024); ``cosine``.
        """
        if cooldown not in COOLDOWN_SHAPES:
            raise InputError(f"schedule parameter cooldown={cooldown!r} is not one of {COOLDOWN_SHAPES}")
        frac = float(cooldown_fraction)
        if not 0.0 <= frac <= 1.0:
            raise InputError(f"schedule parameter cooldown_fraction={cooldown_fraction!r} must be in [0, 1]")
        if cooldown == "exp" and float(final_lr) <= 0:
            raise InputError("schedule parameter final_lr must be > 0 for an exp cooldown")
        return cls._family(
            "wsd",
            total_steps,
            peak_lr=peak_lr,
            warmup_steps=warmup_steps,
            final_lr=final_lr,
            cooldown_fraction=frac,
            cooldown=cooldown,
        )

    @classmethod
    def step(
        cls,
        peak_lr: float,
        total_steps: int,
        warmup_steps: int = 0,
        milestones: Sequence[float] = (0.8, 0.9),
        factors: Sequence[float] | float = 10 ** -0.5,
    ) -> Schedule:
        """Multi-stage step decay: at each milestone (a fraction of ``total_steps``) the LR
        is multiplied by its factor. The default is the "8-1-1" schedule: x 1/sqrt(10) at
        80% and again at 90% of training."""
        ms = [float(m) for m in milestones]
        if isinstance(factors, (int, float)):
            fs = [float(factors)] * len(ms)
        else:
            fs = [float(f) for f in factors]
        if len(fs) != len(ms):
            raise InputError(f"schedule has {len(ms)} milestones but {len(fs)} factors")
        if any(not 0.0 < m < 1.0 for m in ms) or ms != sorted(ms):
            raise InputError(f"schedule milestones {ms} must be increasing fractions in (0, 1)")
        if any(not (math.isfinite(f) and f >= 0) for f in fs):
            raise InputError(f"schedule factors {fs} must be finite and >= 0")
        return cls._family(
            "step", total_steps, peak_lr=peak_lr, warmup_steps=warmup_steps, milestones=ms, factors=fs
        )

    @classmethod
    def inverse_sqrt(
        cls, peak_lr: float, total_steps: int, warmup_steps: int = 0, timescale: int | None = None
    ) -> Schedule:
        """Warmup, then ``peak_lr * sqrt(timescale / (t - warmup + timescale))``.

        ``timescale`` (steps) defaults to ``max(warmup_steps, 1)``, the usual
        ``peak * sqrt(warmup / t)`` form."""
        ts = max(int(warmup_steps), 1) if timescale is None else _check_positive_int("timescale", timescale)
        return cls._family(
            "inverse_sqrt", total_steps, peak_lr=peak_lr, warmup_steps=warmup_steps, timescale=ts
        )

    @classmethod
    def from_knots(cls, steps: ArrayLike, lrs: ArrayLike) -> Schedule:
        """Any piecewise-linear schedule: LR ``lrs[i]`` at step ``steps[i]``, linear in
        between, held flat before the first and after the last knot.

        This is how logged schedules come in. ``total_steps`` is the last knot's step
        plus one (the last knot's step is trained). Knots need not be sorted; a step may
        appear twice with two LRs to make a jump (the later one in input order wins
        from that step on)."""
        s = np.asarray(steps, dtype=np.float64).ravel()
        v = np.asarray(lrs, dtype=np.float64).ravel()
        if s.size == 0 or s.size != v.size:
            raise InputError(f"schedule knots need equally many steps and lrs (got {s.size} and {v.size})")
        if not np.all(np.isfinite(s)) or np.any(s < 0):
            raise InputError("schedule knot steps must be finite and >= 0")
        if not np.all(np.isfinite(v)) or np.any(v < 0):
            raise InputError("schedule knot lrs must be finite and >= 0")
        order = np.argsort(s, kind="stable")
        s, v = s[order], v[order]
        total = int(s[-1]) + 1
        return cls(
            "knots",
            total,
            {"steps": [float(x) for x in s], "lrs": [float(x) for x in v]},
            (s, v),
        )

    @classmethod
    def _family(cls, family: str, total_steps: int, **params: Any) -> Schedule:
        total = _check_positive_int("total_steps", total_steps)
        params["peak_lr"] = _check_lr("peak_lr", params["peak_lr"])
        params["warmup_steps"] = _check_positive_int("warmup_steps", params["warmup_steps"], allow_zero=True)
        if params["warmup_steps"] > total:
            raise InputError(f"schedule warmup_steps={params['warmup_steps']} exceeds total_steps={total}")
        if "final_lr" in params:
            params["final_lr"] = _check_lr("final_lr", params["final_lr"])
        return cls(family, total, params)

    # ------------------------------------------------------------------ evaluation
    @functools.cached_property
    def peak_lr(self) -> float:
        """The largest LR of the schedule (computed once: a logged schedule has a knot per
        step, and a prune check asks for it many times)."""
        if self.family == "knots":
            return float(np.max(self._knot_arrays()[1]))
        return float(self.params["peak_lr"])

    @property
    def warmup_steps(self) -> int:
        """Steps of linear warmup (0 for knot schedules)."""
        return int(self.params.get("warmup_steps", 0))

    def peak_reached_at(self) -> int:
        """The first optimizer step whose LR is the peak LR: the warmup length of any
        schedule, logged (knot) schedules included (0 without a warmup)."""
        return self._peak_step

    @functools.cached_property
    def _peak_step(self) -> int:
        peak = self.peak_lr
        if peak <= 0:
            return 0
        probe = np.unique(np.concatenate([self.breakpoints(), [0.0]]))
        reach = probe[self.lr_at(probe) >= peak * (1 - 1e-9)]
        return int(np.ceil(reach[0])) if reach.size else 0

    @property
    def final_lr(self) -> float:
        """The LR at the last trained step."""
        return float(self.lr_at(np.array([self.total_steps - 1]))[0])

    def lr_at(self, steps: ArrayLike) -> NDArray[np.float64]:
        """LR at the given (possibly fractional) steps; steps outside ``[0, total_steps]``
        are clamped to the ends."""
        t = np.clip(np.asarray(steps, dtype=np.float64), 0.0, float(self.total_steps))
        if self.family == "knots":
            ks, kv = self._knot_arrays()
            return np.asarray(np.interp(t, ks, kv), dtype=np.float64)
        p = self.params
        peak = p["peak_lr"]
        w = p["warmup_steps"]
        total = self.total_steps
        out = self._decay(t, peak, w, total)
        if w > 0:
            out = np.where(t < w, peak * t / w, out)
        return out

    def _decay(self, t: NDArray[np.float64], peak: float, w: int, total: int) -> NDArray[np.float64]:
        p = self.params
        span = max(total - w, 1)
        prog = np.clip((t - w) / span, 0.0, 1.0)
        fam = self.family
        if fam == "constant":
            return np.full_like(t, peak)
        if fam == "cosine":
            final = p["final_lr"]
            return final + (peak - final) * 0.5 * (1.0 + np.cos(np.pi * prog))
        if fam == "linear":
            final = p["final_lr"]
            return peak + (final - peak) * prog
        if fam == "wsd":
            final = p["final_lr"]
            frac = p["cooldown_fraction"]
            start = total - frac * total
            start = max(start, float(w))
            length = max(total - start, 1e-12)
            q = np.clip((t - start) / length, 0.0, 1.0)
            shape = p["cooldown"]
            if shape == "linear":
                dec = peak + (final - peak) * q
            elif shape == "exp":
                dec = peak * (final / peak) ** q if peak > 0 else np.zeros_like(q)
            elif shape == "1-sqrt":
                dec = final + (peak - final) * (1.0 - np.sqrt(q))
            else:
                dec = final + (peak - final) * 0.5 * (1.0 + np.cos(np.pi * q))
            return np.where(t < start, peak, dec)
        if fam == "step":
            out = np.full_like(t, peak)
            mult = 1.0
            for m, f in zip(p["milestones"], p["factors"], strict=True):
                mult *= f
                out = np.where(t >= m * total, peak * mult, out)
            return out
        if fam == "inverse_sqrt":
            ts = p["timescale"]
            return peak * np.sqrt(ts / (np.maximum(t - w, 0.0) + ts))
        raise InputError(f"unknown schedule family {fam!r}; known: {FAMILIES}")

    def lrs(self, total_steps: int | None = None) -> NDArray[np.float64]:
        """The LR of every step ``0 .. n-1`` as one array, ``n = total_steps`` by default."""
        n = self.total_steps if total_steps is None else int(total_steps)
        return self.lr_at(np.arange(n, dtype=np.float64))

    def breakpoints(self) -> NDArray[np.float64]:
        """Steps where the schedule's formula changes (warmup end, decay start,
        milestones, knots), sorted, within ``[0, total_steps]``. Laws integrate on grids
        that contain these points. A read-only array, computed once."""
        return self._breakpoints

    @functools.cached_property
    def _breakpoints(self) -> NDArray[np.float64]:
        pts: list[float] = [0.0, float(self.total_steps)]
        if self.family == "knots":
            pts.extend(self._knot_arrays()[0].tolist())
        else:
            p = self.params
            pts.append(float(p["warmup_steps"]))
            if self.family == "wsd":
                pts.append(max(self.total_steps * (1 - p["cooldown_fraction"]), float(p["warmup_steps"])))
            if self.family == "step":
                pts.extend(m * self.total_steps for m in p["milestones"])
        arr = np.unique(np.clip(np.asarray(pts, dtype=np.float64), 0.0, float(self.total_steps)))
        arr.setflags(write=False)
        return arr

    def _knot_arrays(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        if self._knots is not None:
            return self._knots
        s = np.asarray(self.params["steps"], dtype=np.float64)
        v = np.asarray(self.params["lrs"], dtype=np.float64)
        object.__setattr__(self, "_knots", (s, v))
        return s, v

    def truncated(self, total_steps: int) -> Schedule:
        """The same LR function, trained for ``total_steps`` steps (a prefix or an
        extension at the schedule's last LR)."""
        n = _check_positive_int("total_steps", total_steps)
        if self.family == "knots":
            ks, kv = self._knot_arrays()
            keep = ks < n - 1
            s = np.append(ks[keep], n - 1)
            v = np.append(kv[keep], self.lr_at(np.array([n - 1.0]))[0])
            return Schedule.from_knots(s, v)
        grid = np.unique(np.concatenate([self.breakpoints(), np.linspace(0, n - 1, 2049)]))
        grid = grid[grid <= n - 1]
        return Schedule.from_knots(grid, self.lr_at(grid))

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` inverts it exactly."""
        return {
            "format_version": _FORMAT_VERSION,
            "family": self.family,
            "total_steps": self.total_steps,
            "params": {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self.params.items()},
        }

    def to_json(self) -> str:
        """This schedule as a compact JSON string."""
        return self._json

    @functools.cached_property
    def _json(self) -> str:
        """:meth:`to_json`, computed once: a schedule is hashed and compared by it, and a
        logged one (:meth:`from_knots`, a knot per step) is megabytes of JSON."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        """Rebuild a schedule from :meth:`to_dict`'s output, validating it."""
        try:
            version = int(data.get("format_version", 1))
            family = str(data["family"])
            total = data["total_steps"]
            params = dict(data["params"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"schedule JSON is missing or has a bad field: {exc}") from None
        if version > _FORMAT_VERSION:
            raise InputError(
                f"schedule JSON has format_version {version}, newer than this optuna-optlaws "
                f"understands ({_FORMAT_VERSION}); upgrade optuna-optlaws"
            )
        builders = {
            "constant": cls.constant,
            "cosine": cls.cosine,
            "linear": cls.linear,
            "wsd": cls.wsd,
            "step": cls.step,
            "inverse_sqrt": cls.inverse_sqrt,
        }
        if family != "knots" and family not in builders:
            raise InputError(f"schedule JSON has unknown family {family!r}; known: {FAMILIES}")
        try:
            if family == "knots":
                return cls.from_knots(params["steps"], params["lrs"])
            return builders[family](total_steps=total, **params)  # type: ignore[operator]
        except InputError:
            raise
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            what = f"{type(exc).__name__}: {exc}"
            raise InputError(f"schedule JSON for family {family!r} has bad params ({what})") from None

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        """Rebuild a schedule from :meth:`to_json`'s output."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"schedule JSON is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    # ------------------------------------------------------------------ torch
    def to_torch(self, optimizer: torch.optim.Optimizer, last_step: int = -1, scale: float = 1.0) -> Any:
        """A ``torch.optim.lr_scheduler.LRScheduler`` that plays this schedule: step 0's LR
        right after construction, step ``t``'s after the ``t``-th ``scheduler.step()`` (call
        it after each ``optimizer.step()``); param groups built with different LRs keep
        their ratio to the largest (see ``ScheduleLR``); ``scale`` (> 0) multiplies every
        LR."""
        from optuna_optlaws._torch_scheduler import ScheduleLR

        try:
            value = float(scale)  # a numpy scalar or a 0-d tensor too
        except (TypeError, ValueError):
            value = math.nan
        if isinstance(scale, (bool, str, bytes)) or not (math.isfinite(value) and value > 0):
            raise InputError(f"Schedule.to_torch: scale={scale!r} must be a finite number > 0")
        return ScheduleLR(optimizer, self, last_step=last_step, scale=value)

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and self.to_json() == other.to_json()
