"""The annealing-momentum law of Tissue et al. (2024), a baseline.

    L(s) = L0 + A * S1(s)^(-alpha) - C * S2(s)

* ``S1(s) = sum_{i=0..s} eta_i``: the forward area (LR x steps), with every warmup step
  counted at the peak LR, as the paper does;
* ``S2(s) = sum_{i=1..s} m_i``, ``m_i = lambda * m_{i-1} + (eta_{i-1} - eta_i)``: the
  annealing area, an exponentially-decaying "momentum" of LR drops, ``lambda = 0.999``
  fixed as in the paper (``MomentumLaw(decay=...)`` overrides it). Warmup steps are at the
  peak, so warmup adds nothing to ``S2``. Computed in O(T) with a linear filter.

Parameters ``L0, A, alpha, C``; fitted with the shared harness
(:mod:`optuna_optlaws.laws._fitting`: Huber loss on log-loss residuals, several starts,
Laplace intervals). No model-size term: fits and predicts one model size.

Reference: Howe Tissue, Venus Wang, Lu Wang, "Scaling Law with Learning Rate Annealing",
arXiv:2408.11029 (2024), equations (1)-(3).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from optuna_optlaws.laws._features import Observations, ScheduleFeatures
from optuna_optlaws.laws._fitting import Param, ParamSpace
from optuna_optlaws.laws._parametric import ParametricLaw

FloatArray = NDArray[np.float64]

DEFAULT_DECAY = 0.999
"""The paper's momentum decay factor lambda."""


@functools.lru_cache(maxsize=256)
def _areas(feats: ScheduleFeatures, decay: float) -> tuple[FloatArray, FloatArray]:
    """(S1, S2) at every step for a momentum decay factor (cached per features object)."""
    from scipy.signal import lfilter

    eta = np.array(feats.eta, dtype=np.float64)
    eta[: feats.warmup_end] = feats.peak_lr
    s1 = np.cumsum(eta)
    drop = np.zeros_like(eta)
    drop[1:] = eta[:-1] - eta[1:]
    m = lfilter([1.0], [1.0, -decay], drop)
    s2 = np.cumsum(m)
    s1.setflags(write=False)
    s2.setflags(write=False)
    return s1, s2


class MomentumLaw(ParametricLaw):
    """Tissue et al. (2024): ``L = L0 + A S1^-alpha - C S2``; see the module docstring."""

    name: ClassVar[str] = "momentum"
    has_jacobian: ClassVar[bool] = True
    space: ClassVar[ParamSpace] = ParamSpace(
        [
            Param("L0", 0.0, 100.0, init=(0.0, 10.0)),
            Param("A", 0.0, 1e6, log=True, init=(0.05, 5.0)),
            Param("alpha", 1e-4, 5.0, log=True, init=(0.05, 2.0)),
            Param("C", -1e9, 1e9, init=(0.0, 5000.0)),
        ]
    )

    def __init__(self, decay: float = DEFAULT_DECAY) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"momentum decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        """Momentum decay factor lambda (per step)."""

    def _predict_loss(self, theta: FloatArray, feats: ScheduleFeatures, steps: NDArray[np.int64]) -> FloatArray:
        L0, A, alpha, C = theta
        s1, s2 = _areas(feats, self.decay)
        return np.asarray(L0 + A * s1[steps] ** (-alpha) - C * s2[steps], dtype=np.float64)

    def _predict_loss_jac(
        self, theta: FloatArray, feats: ScheduleFeatures, steps: NDArray[np.int64]
    ) -> FloatArray:
        _, A, alpha, _ = theta
        s1, s2 = _areas(feats, self.decay)
        S = s1[steps]
        p = S ** (-alpha)
        return np.stack([np.ones_like(S), p, -A * p * np.log(S), -s2[steps]], axis=1)

    def _initial_guesses(self, obs: Observations, feats: Sequence[ScheduleFeatures]) -> list[list[float]]:
        # L0 below the lowest loss, A and alpha from a power law of (loss - L0) in S1, and
        # C = 0 or the scale of an annealing drop of 0.1 nats over the largest S2.
        y_min = float(obs.losses.min())
        s2_max = max(float(np.max(_areas(f, self.decay)[1])) for f in feats)
        c_scale = 0.1 / s2_max if s2_max > 0 else 0.0
        starts = []
        for L0 in (0.7 * y_min, 0.9 * y_min):
            s1 = np.concatenate([_areas(f, self.decay)[0][obs.of(i)[0]] for i, f in enumerate(feats)])
            gap = np.maximum(obs.losses - L0, 1e-3)
            slope, intercept = np.polyfit(np.log(s1), np.log(gap), 1)
            alpha = float(np.clip(-slope, 0.05, 2.0))
            A = float(np.clip(np.exp(intercept), 1e-3, 1e5))
            for C in (0.0, c_scale):
                starts.append([L0, A, alpha, C])
        return starts

    def _extra_state(self) -> dict[str, Any]:
        return {"decay": self.decay}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        decay = float(state.get("decay", DEFAULT_DECAY))
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"momentum decay must be in [0, 1), got {decay}")
        self.decay = decay
