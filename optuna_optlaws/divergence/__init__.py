"""Divergence: a fitted stability criterion (peak LR, batch size, N, D, warmup) and
online detection of a diverging run from its own curve.

- :func:`detect_divergence` (module :mod:`.online`): called at every report with a run's
  observed prefix; returns a :class:`DivergenceSignal` (step, reason) or None.
"""

from __future__ import annotations

from optuna_optlaws.divergence.online import DivergenceSignal, detect_divergence

__all__ = ["DivergenceSignal", "detect_divergence"]
