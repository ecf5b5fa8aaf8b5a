"""The maths of the divergence criterion: a logistic law around a critical peak LR.

    p_diverge = sigmoid( (ln eta - ln eta_crit) / s )

    eta_crit = eta_c (N/N_0)^a_N (B/B_0)^a_B (D/D_0)^a_D (1 + W)^a_W

with eta the peak LR, N parameters, B the batch size (sequences), D tokens and W warmup
steps (the W factor only when the runs state a warmup). It is the edge-of-stability
picture: a run diverges when eta x sharpness passes a threshold, so the critical LR is
the inverse of a sharpness that grows as a power law of N (and shrinks with more warmup,
a_W > 0); the batch size and data size move it through the gradient noise and the length
of training. ``s`` is the width of the transition in ln eta: small s is a sharp edge.
``diverged`` is decided as p >= 1/2, i.e. eta >= eta_crit.

It is fitted as a linear logistic regression in (ln eta, ln N, ln B, ln D[, ln(1+W)])
with a small ridge penalty on standardised weights (so separable data still gives a finite
s), by Newton's method, then rewritten in the interpretable form above.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from optuna_optlaws._errors import InputError
from optuna_optlaws.divergence._scales import B0, D0, N0

FACTORS = ("model_size", "batch_size", "tokens", "warmup_steps")
"""The columns eta_crit depends on, in the order of the exponents a_N, a_B, a_D, a_W."""


def features(
    model_size: NDArray[np.float64],
    batch_size: NDArray[np.float64],
    tokens: NDArray[np.float64],
    warmup_steps: NDArray[np.float64] | None,
) -> NDArray[np.float64]:
    """The log-features of eta_crit, one column per factor in use (n_runs x 3 or 4)."""
    cols = [np.log(model_size / N0), np.log(batch_size / B0), np.log(tokens / D0)]
    if warmup_steps is not None:
        cols.append(np.log1p(warmup_steps))
    return np.column_stack(cols)


def fit_logistic(
    log_lr: NDArray[np.float64], feats: NDArray[np.float64], diverged: NDArray[np.bool_], *, ridge: float = 1e-2
) -> tuple[float, NDArray[np.float64], float]:
    """Fit ``(ln eta_c, exponents, s)`` of the criterion to 0/1 outcomes.

    ``log_lr`` is ln(peak LR), ``feats`` the output of :func:`features`. Raises
    :class:`InputError` when the outcomes are all one class or when a higher peak LR does
    not make divergence more likely (no stability edge to fit).
    """
    y = diverged.astype(np.float64)
    if y.sum() == 0 or y.sum() == y.size:
        which = "diverged" if y.sum() else "stable"
        raise InputError(f"column diverged: every run is {which}; fitting needs both diverged and stable runs")
    x = np.column_stack([log_lr, feats])
    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    sd[sd == 0] = 1.0
    z = np.column_stack([np.ones(y.size), (x - mu) / sd])
    penalty = np.r_[0.0, np.full(x.shape[1], ridge)]

    def objective(w: NDArray[np.float64]) -> float:
        t = z @ w
        return float(np.sum(np.logaddexp(0.0, t) - y * t) + np.sum(penalty * w * w))

    # Newton's method (IRLS) with step halving: the objective is convex, a handful of steps
    w = np.zeros(z.shape[1])
    value = objective(w)
    for _ in range(100):
        p = 0.5 * (1.0 + np.tanh(0.5 * (z @ w)))
        grad = z.T @ (p - y) + 2.0 * penalty * w
        hess = (z * (p * (1.0 - p))[:, None]).T @ z + np.diag(2.0 * penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6:
            trial = objective(w - scale * step)
            if trial <= value:
                break
            scale *= 0.5
        w = w - scale * step
        done = value - trial < 1e-10 * max(1.0, abs(value))
        value = trial
        if done:
            break
    # back to raw features: logit = b + c_lr ln(eta) + sum c_k f_k
    c = w[1:] / sd
    b = w[0] - float(np.sum(c * mu))
    if c[0] <= 0:
        raise InputError(
            "column peak_lr: a higher peak LR does not make divergence more likely in this table; "
            "no stability edge to fit"
        )
    s = 1.0 / c[0]
    ln_eta_c = -b * s
    exponents = -c[1:] * s
    return float(ln_eta_c), exponents, float(s)


def log_eta_crit(ln_eta_c: float, exponents: NDArray[np.float64], feats: NDArray[np.float64]) -> NDArray[np.float64]:
    """ln eta_crit of each run."""
    return ln_eta_c + feats @ exponents


def probability(
    log_lr: NDArray[np.float64], ln_eta_c: float, exponents: NDArray[np.float64], s: float, feats: NDArray[np.float64]
) -> NDArray[np.float64]:
    """p_diverge of each run."""
    t = (log_lr - log_eta_crit(ln_eta_c, exponents, feats)) / s
    return 0.5 * (1.0 + np.tanh(0.5 * t))
