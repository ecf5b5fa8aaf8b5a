"""A synthetic training loss: an analytic function of the whole LR schedule.

Used where a benchmark or a test needs many realistic-looking curves fast and without
data files (nothing here is fitted; no law is assumed)::

    L(t) = 2.5 + 2.0 (1 + S1(t) / 0.05)^(-0.6) + 60 EMA_100(lr)(t) + u (ln(peak / best_peak))^2

``S1(t)`` is the LR area up to step ``t`` (LR x steps); the noise floor follows an
exponential moving average of the LR over about 100 steps, so decaying the LR lowers the
loss as in real runs (and a high constant LR can make it rise); ``u = peak_penalty``
adds a U-shape in the peak LR around ``best_peak``. Losses are in nats.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from optuna_optlaws.schedules import Schedule


def synthetic_loss(
    schedule: Schedule,
    steps: ArrayLike,
    *,
    peak_penalty: float = 0.0,
    best_peak: float = 3e-3,
    noise: float = 0.0,
    rng: np.random.Generator | None = None,
) -> NDArray[np.float64]:
    """The synthetic loss (nats) of ``schedule`` at ``steps`` (optimizer steps below
    ``total_steps``), plus Gaussian noise of standard deviation ``noise`` nats drawn
    from ``rng`` when both are given."""
    from scipy.signal import lfilter

    lrs = schedule.lrs()
    s1 = np.cumsum(lrs)
    a = 0.99
    ema = lfilter([1 - a], [1, -a], lrs, zi=[a * lrs[0]])[0]
    u = peak_penalty * math.log(max(schedule.peak_lr, 1e-300) / best_peak) ** 2
    loss = 2.5 + 2.0 * (1 + s1 / 0.05) ** -0.6 + 60.0 * ema + u
    out = np.asarray(loss[np.asarray(steps, dtype=np.int64)], dtype=np.float64)
    if noise > 0 and rng is not None:
        out = out + rng.normal(0.0, noise, out.size)
    return out
