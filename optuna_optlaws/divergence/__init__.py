"""Divergence: a fitted stability criterion (peak LR, batch size, N, D, warmup) and
online detection of a diverging run from its own curve.

- :func:`detect_divergence` (:mod:`.online`): called at every report with a run's observed
  prefix; returns a :class:`DivergenceSignal` (step, reason) or None.
- :class:`DivergenceCriterion` (:mod:`.criterion`): p_diverge of a planned run from its peak
  LR, batch size, N, D (and warmup), fitted on past runs: a critical LR that is a power law
  in N, B, D, curved in ln B, and lower for short runs (D/B below S_c), fitted by interval
  censoring of each (N, B, D) group's critical LR; ``optlaws divergence fit/predict``.
- :class:`LandscapeLaw` (:mod:`.landscape`): final loss vs (peak LR, batch size, N, D), to
  choose the peak LR and batch size of a new (N, D).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from optuna_optlaws.divergence.online import DivergenceSignal, detect_divergence

if TYPE_CHECKING:
    from optuna_optlaws.divergence.criterion import DivergenceCriterion
    from optuna_optlaws.divergence.landscape import LandscapeLaw

_LAZY = {
    "DivergenceCriterion": "optuna_optlaws.divergence.criterion",
    "LandscapeLaw": "optuna_optlaws.divergence.landscape",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'optuna_optlaws.divergence' has no attribute {name!r}")


__all__ = ["DivergenceCriterion", "DivergenceSignal", "LandscapeLaw", "detect_divergence"]
