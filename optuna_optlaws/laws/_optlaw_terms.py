"""The Opt-Law's terms and parameters: which terms a fit has (:class:`Terms`), its
parameter space, and a named view of a parameter vector with the model-size dependence
(:class:`Theta`). See :mod:`optuna_optlaws.laws.optlaw` for the law itself."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from optuna_optlaws._errors import InputError
from optuna_optlaws.curves import Curve
from optuna_optlaws.laws._fitting import Param, ParamSpace

FloatArray = NDArray[np.float64]

def held_power(eta_rel: FloatArray, power: float | FloatArray) -> FloatArray:
    """``eta_rel^power`` (dimensionless, ``eta_rel = eta / eta_ref``) up to the largest LR
    of the fitting data (``eta_rel = 1``) and flat past it: the LR dependence of every
    excess's equilibrium; ``eta_rel`` and ``power`` broadcast together."""
    return np.asarray(np.power(np.minimum(eta_rel, 1.0), power), dtype=np.float64)


ESCAPE_POWER = 4.0
"""Steepness of the escape excess in the LR: its equilibrium is ``(eta/eta_ref)^4``."""


def escape_target(eta_rel: FloatArray) -> FloatArray:
    """Equilibrium of the escape excess at LR ``eta_rel = eta / eta_ref`` (dimensionless).

    ``eta_rel^4`` up to the largest LR of the fitting data (``eta_rel = 1``) and flat past
    it (:func:`held_power`): the data says nothing about where the stability edge lies
    beyond the LRs it tried, so the law does not extrapolate the steep power there (at 3x
    the largest fitted peak, ``eta^4`` alone would add 81 times the largest fitted escape
    excess). Past the fitted range the law is therefore optimistic, which lets the
    sampler explore higher LRs and keeps the pruner from killing them on an extrapolation.
    The fast excess's equilibrium is ``held_power(eta_rel, p_fast)``."""
    return held_power(eta_rel, ESCAPE_POWER)


INSTABILITY_POWER = 2.0
"""Steepness of the early-instability excess in the LR: its equilibrium is
``(eta/eta_ref)^2 exp(-S / s_edge)``."""


def instability_target(eta_rel: FloatArray, s_mid: FloatArray, s_edge: float | FloatArray) -> FloatArray:
    """Equilibrium of the early-instability excess (dimensionless) at LR ``eta_rel = eta /
    eta_ref`` after an LR area ``s_mid`` (area units); the three broadcast together.

    Early in training the landscape is sharp, so the stability edge is low and a high LR
    does damage that later training removes only slowly (at rate ``kappa_warm``); the
    edge rises as training goes on, which ``exp(-S / s_edge)`` stands for. A warmup keeps
    the LR low while ``S`` is small, which is why too short a warmup costs loss (design.md
    section 3). Held flat past the fitted LR range, like :func:`escape_target`."""
    return np.asarray(held_power(eta_rel, INSTABILITY_POWER) * np.exp(-s_mid / s_edge), dtype=np.float64)


def shift_excess(p: Theta, s_since: FloatArray) -> FloatArray:
    """The data-shift excess (nats) of a continued run at LR areas ``s_since`` since its resume."""
    x = np.maximum(np.asarray(s_since, dtype=np.float64), 0.0) / p["s_d"]
    return np.asarray(p["d0"] + p["D"] * np.power(1.0 + x, -p["gamma_d"]), dtype=np.float64)


SIZE_FORMS = ("single", "power", "entropy")
"""The model-size forms of ``L0(N)``; see :class:`Terms`."""


@dataclass(frozen=True)
class Terms:
    """Which terms a fitted law has, and its fixed constants."""

    eta_ref: float
    """Reference LR (LR units): the largest peak LR of the fitting data."""
    sizes: tuple[float, ...]
    """Distinct model sizes fitted on (empty when the curves give none)."""
    escape: bool
    """Whether the escape term is fitted (the data varies the peak LR)."""
    size_form: str = "single"
    """How ``L0`` depends on ``N``: ``single`` (one size, no size term), ``power``
    (``L0(N) = L0 (N/n_ref)^(-g_l0)``, free ``eps``) or ``entropy`` (``L0(N) = E + delta
    (N/n_ref)^(-g_l0)`` with the entropy floor ``E`` shared and ``eps(N) = 1/(L0(N) - E)``)."""

    area_max: float = 0.0
    """Largest LR area (area units) among the fitted points: beyond it the model
    discrepancy grows (see :meth:`OptLaw._widen`)."""
    warmup: bool = False
    """Whether the early-instability (warmup) term is fitted: the data's runs from scratch
    differ in warmup length (the longest at least twice the shortest plus one step)."""
    shift: bool = False
    """Whether continued runs have a data-shift excess ``D (1 + S_c / s_d)^(-gamma_d)``
    (``S_c``: LR area since the resume; see :mod:`._optlaw_lineage`). Only fits that
    include continued runs (``resume_from``) have it."""
    shift_offset: bool = False
    """Whether continued runs also have a constant offset ``d0`` (the new corpus's floor
    differs from the parent's): only when the parent's own losses are fitted too."""
    fast: bool = False
    """Whether the fast excess ``k_fast f(t)`` is fitted: the loss held in the sharpest
    directions, which follow the LR within a few steps, towards ``(eta/eta_ref)^p_fast``
    (:func:`held_power`). Tried when the escape term is fitted (the data varies the peak
    LR, so the LR power ``p_fast`` is identified apart from the modes' ``phi``) on at least
    :data:`FAST_MIN_RUNS` runs; see :meth:`OptLaw.fit` for when it is kept."""

    @property
    def multi_size(self) -> bool:
        return self.size_form != "single"

    @property
    def n_ref(self) -> float:
        """Reference model size (geometric mean of the fitted sizes), 1 when none."""
        return float(np.exp(np.mean(np.log(self.sizes)))) if self.sizes else 1.0

    def space(self) -> ParamSpace:
        """The fitted parameters of a law with these terms."""
        if self.size_form == "entropy":
            ps = [
                Param("E", 1e-3, 50.0, log=True, init=(0.5, 3.0)),
                Param("delta", 1e-3, 50.0, log=True, init=(0.1, 1.0)),
            ]
        else:
            ps = [Param("L0", 1e-3, 50.0, log=True, init=(0.5, 4.0))]
        ps += [
            Param("A", 1e-6, 1e3, log=True, init=(0.1, 3.0)),
            Param("B", 1e-6, 10.0, log=True, init=(0.02, 0.5)),
        ]
        if self.multi_size:
            ps += [
                Param("g_l0", -2.0, 2.0, init=(0.0, 0.6)),
                Param("g_a", -2.0, 2.0, init=(-0.2, 0.2)),
                Param("g_b", -2.0, 2.0, init=(-0.3, 0.1)),
                Param("g_alpha", -1.0, 1.0, init=(-0.1, 0.1)),
            ]
        ps += [
            Param("alpha", 0.02, 3.0, init=(0.2, 0.9)),
            Param("s_w", 1e-4, 1e2, log=True, init=(0.01, 1.0)),
            Param("phi", 0.05, 3.0, init=(0.4, 1.2)),
        ]
        if self.size_form != "entropy":
            ps += [Param("eps", 0.0, 100.0, init=(0.0, 4.0))]
        ps += [
            Param("beta", -3.0, 4.0, init=(-0.5, 2.0)),
            Param("c_cut", 1e-2, 1e5, log=True, init=(3.0, 300.0)),
        ]
        if self.escape:
            ps += [
                Param("k_esc", 0.0, 10.0, init=(0.0, 0.1)),
                Param("kappa_esc", 1e-3, 1e3, log=True, init=(0.01, 10.0)),
            ]
        if self.fast:
            ps += [
                Param("k_fast", 0.0, 10.0, init=(0.0, 0.1)),
                Param("kappa_fast", 10.0, 1e4, log=True, init=(30.0, 3000.0)),
                Param("p_fast", 0.1, 3.0, init=(0.3, 1.5)),
            ]
        if self.warmup:
            ps += [
                Param("k_warm", 0.0, 10.0, init=(0.0, 0.1)),
                Param("s_edge", 1e-4, 1e2, log=True, init=(0.003, 0.3)),
                Param("kappa_warm", 1e-3, 1e3, log=True, init=(0.01, 10.0)),
            ]
        if self.shift:
            ps += [
                Param("D", 1e-6, 10.0, log=True, init=(0.02, 0.5)),
                Param("s_d", 1e-4, 1e2, log=True, init=(0.003, 0.3)),
                Param("gamma_d", 0.05, 4.0, init=(0.3, 1.5)),
            ]
        if self.shift_offset:
            ps += [Param("d0", -3.0, 3.0, init=(-0.2, 0.2))]
        return ParamSpace(ps)

    def to_state(self) -> dict[str, Any]:
        return {
            "eta_ref": self.eta_ref,
            "sizes": list(self.sizes),
            "escape": self.escape,
            "size_form": self.size_form,
            "area_max": self.area_max,
            "warmup": self.warmup,
            "shift": self.shift,
            "shift_offset": self.shift_offset,
            "fast": self.fast,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Terms:
        eta_ref = float(state["eta_ref"])
        sizes = tuple(float(s) for s in state["sizes"])
        if not (math.isfinite(eta_ref) and eta_ref > 0) or any(not (math.isfinite(s) and s > 0) for s in sizes):
            raise ValueError("eta_ref and sizes must be finite and > 0")
        form = str(state.get("size_form", "single"))
        if form not in SIZE_FORMS or (form == "single") != (len(sizes) < 2):
            raise ValueError(f"size_form {form!r} does not fit {len(sizes)} fitted sizes")
        area_max = float(state.get("area_max", 0.0))
        if not (math.isfinite(area_max) and area_max >= 0):
            raise ValueError("area_max must be finite and >= 0")
        return cls(
            eta_ref=eta_ref, sizes=sizes, escape=bool(state["escape"]), size_form=form, area_max=area_max,
            warmup=bool(state.get("warmup", False)), shift=bool(state.get("shift", False)),
            shift_offset=bool(state.get("shift_offset", False)), fast=bool(state.get("fast", False)),
        )


class Theta:
    """Named view of a natural parameter vector, with the size-dependent amplitudes."""

    def __init__(self, terms: Terms, names: Sequence[str], theta: FloatArray) -> None:
        self.v = dict(zip(names, (float(x) for x in theta), strict=True))
        self.terms = terms

    def __getitem__(self, key: str) -> float:
        return self.v.get(key, 0.0)

    def alpha(self, model_size: float | None) -> float:
        """The convergence exponent at model size ``N``: ``alpha (N / n_ref)^(-g_alpha)``."""
        if not self.terms.multi_size or model_size is None:
            return self["alpha"]
        return self["alpha"] * (model_size / self.terms.n_ref) ** (-self["g_alpha"])

    def amplitudes(self, model_size: float | None) -> tuple[float, float, float]:
        """``L0, A, B`` (nats) at model size ``N``; with several sizes
        ``L0(N) = E + delta (N / n_ref)^(-g_l0)``."""
        if not self.terms.multi_size or model_size is None:
            return self["L0"], self["A"], self["B"]
        x = model_size / self.terms.n_ref
        if self.terms.size_form == "power":
            l0 = self["L0"] * x ** (-self["g_l0"])
        else:
            l0 = self["E"] + self["delta"] * x ** (-self["g_l0"])
        return (
            l0,
            self["A"] * x ** (-self["g_a"]),
            self["B"] * x ** (-self["g_b"]),
        )

    def eps(self, model_size: float | None) -> float:
        """Noise-loss coupling (1/nats): the gradient noise is proportional to
        ``1 + eps * (L - L0)``, i.e. to the loss above ``E = L0 - 1/eps``. With several
        sizes ``E`` is shared (the data's entropy floor) and ``eps(N) = 1 / (L0(N) - E)``."""
        if self.terms.size_form != "entropy" or model_size is None:
            return self["eps"]
        x = model_size / self.terms.n_ref
        return 1.0 / (self["delta"] * x ** (-self["g_l0"]))


FAST_MIN_RUNS = 8
"""Runs a fit needs before the fast excess is tried: on fewer, the leave-one-run-out
error that decides whether to keep it is too noisy (on five of the tiny LM's runs the
term was kept where it extrapolated worse to the others), and the pruner does not trust
its calibration on fewer complete runs either
(:data:`~optuna_optlaws._pruner._calibration.TRUSTED_CALIBRATION`)."""


def terms_for(curves: Sequence[Curve], where: str, offsets: Mapping[str, int]) -> Terms:
    """The terms the data can identify. ``curves``: whole-history curves (continued runs
    already joined to their parents' schedules); ``offsets``: each run's first step in its
    whole history (0 for a run trained from scratch)."""
    given = [c.model_size for c in curves if c.model_size is not None]
    if given and len(given) != len(curves):
        raise InputError(f"{where}: some runs give a model_size and some do not; give it for all runs or none")
    sizes: list[float] = []
    for s in sorted(float(x) for x in given):
        if not sizes or not math.isclose(s, sizes[-1], rel_tol=1e-6):
            sizes.append(s)
    peaks = np.array([c.schedule.peak_lr for c in curves], dtype=np.float64)
    if not np.any(peaks > 0):
        raise InputError(f"{where}: every run has a zero learning rate throughout")
    positive = peaks[peaks > 0]
    escape = bool(positive.max() / positive.min() >= 1.25)
    warmups = [c.schedule.peak_reached_at() for c in curves if not offsets.get(c.run_id)]
    warmup = bool(warmups) and max(warmups) >= 2 * min(warmups) + 1
    fast = escape and len(curves) >= FAST_MIN_RUNS
    return Terms(eta_ref=float(positive.max()), sizes=tuple(sizes), escape=escape, warmup=warmup, fast=fast)


def default_start(terms: Terms, min_loss: float) -> list[float]:
    """A start from fits of the law on public curves (areas in units of 1000 steps at the peak)."""
    if terms.size_form == "entropy":
        start = [0.75 * min_loss, 0.13 * min_loss, 0.8, 0.15, 0.3, 0.0, -0.1, 0.0, 0.5, 0.03, 0.67]
    elif terms.size_form == "power":
        start = [0.88 * min_loss, 0.8, 0.15, 0.08, 0.0, -0.1, 0.0, 0.5, 0.03, 0.67, 2.0]
    else:
        start = [0.88 * min_loss, 0.8, 0.15, 0.5, 0.03, 0.67, 2.0]
    start += [1.2, 100.0]
    if terms.escape:
        start += [0.01, 1.0]
    if terms.fast:
        start += [0.02, 300.0, 1.0]
    if terms.warmup:
        start += [0.05, 0.03, 0.3]
    if terms.shift:
        start += [0.1, 0.03, 0.7]
    if terms.shift_offset:
        start += [0.0]
    return start


def warm_start(terms: Terms, fitted: Mapping[str, float]) -> list[float]:
    """A start for ``terms`` from another size form's fitted parameters (by name): the
    ``entropy`` form's ``E = L0 - 1/eps`` and ``delta = 1/eps`` come from ``L0`` and ``eps``."""
    values = dict(fitted)
    eps = max(values.get("eps", 1.0), 0.05)
    if "L0" in values:
        values.setdefault("delta", min(1.0 / eps, 0.9 * values["L0"]))
        values.setdefault("E", values["L0"] - values["delta"])
    space = terms.space()
    return [float(values.get(p.name, np.mean(p.init_range()))) for p in space.params]
