"""The maths of the hyperparameter landscape law: final loss vs (peak LR, batch size, N, D).

The law, for a run with peak LR ``eta``, batch size ``B`` (sequences), ``N`` parameters and
``D`` training tokens::

    log L = log L_level(N, D) + h_eta * g(x; p, q) + h_B * g(u; p_B, q_B)

    u = ln(B / B_opt(N, D)),           B_opt   = B_0   (N/N_0)^b_N (D/D_0)^b_D
    x = ln(eta / eta_opt(N, D, B)),    eta_opt = eta_0 (N/N_0)^a_N (D/D_0)^a_D (B/B_opt)^kappa

    g(x; p, q) = [q e^(p x) + p e^(-q x)] / (p + q) - 1) / (p q)      (g(0) = 0, g''(0) = 1)

``g`` is the sum of two power laws in the LR, normalised so that its minimum sits at
``eta_opt`` with unit curvature: the left branch ``eta^-q`` is the convergence term (too
little LR area: the ``A S^-alpha`` term of design.md section 3, S growing with eta), the
right branch ``eta^p`` the noise and instability term (escape of sharp basins pays up to
``eta_opt``; beyond it the iterate rides the edge of stability and the loss climbs
steeply). ``p > q`` makes the U asymmetric, steep on the high-LR side. The batch-size
branch is the same shape: too small a batch is gradient noise, too large a batch too few
steps (D / B). ``kappa`` says how the best LR moves with the batch size (0.5 would be the
square-root rule). ``h_eta`` and ``h_B`` are the curvatures of log-loss in ln(eta) and
ln(B) at the optimum.

``L_level(N, D) = E + A N^-alpha + C D^-beta`` (nats) is the loss at the optimum, a
Chinchilla-style level law fitted in a second stage on the per-cell optimum levels of the
first stage (the first stage gives each training (N, D) cell its own free level, so the
shape is fitted without assuming the level law).

Fitting is robust least squares (soft-L1 on log-loss residuals, scale ``f_scale``, default
1%) from a few starts, on non-diverged runs only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from optuna_optlaws.divergence._scales import D0, N0

SHAPE_NAMES = ("ln_eta0", "a_N", "a_D", "kappa", "ln_B0", "b_N", "b_D", "ln_h_eta", "ln_p", "ln_q",
               "ln_h_B", "ln_p_B", "ln_q_B")
"""Names of the shape parameter vector (log-parametrised where the parameter is positive)."""


def bowl(x: NDArray[np.float64], p: float, q: float) -> NDArray[np.float64]:
    """``g(x; p, q)``: two power-law branches in e^x, minimum 0 at x = 0, curvature 1 there."""
    up = np.exp(np.clip(p * x, -50.0, 50.0))
    down = np.exp(np.clip(-q * x, -50.0, 50.0))
    return ((q * up + p * down) / (p + q) - 1.0) / (p * q)


def _bowl_derivatives(
    x: NDArray[np.float64], p: float, q: float
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """``g``, ``dg/dx``, ``dg/d ln p`` and ``dg/d ln q`` of :func:`bowl`."""
    e1 = np.exp(np.clip(p * x, -50.0, 50.0))
    e2 = np.exp(np.clip(-q * x, -50.0, 50.0))
    s = p + q
    den = s * p * q
    g = (q * e1 + p * e2 - s) / den
    dg_dx = (e1 - e2) / s
    dg_dp = (q * x * e1 + e2 - 1.0 - g * q * (2.0 * p + q)) / den
    dg_dq = (e1 - p * x * e2 - 1.0 - g * p * (p + 2.0 * q)) / den
    return g, dg_dx, p * dg_dp, q * dg_dq


def shape_jacobian(
    theta: NDArray[np.float64],
    lr: NDArray[np.float64],
    bs: NDArray[np.float64],
    n: NDArray[np.float64],
    d: NDArray[np.float64],
) -> NDArray[np.float64]:
    """d shape / d theta, one row per run, columns in the order of :data:`SHAPE_NAMES`."""
    kappa = theta[3]
    x, u = coordinates(theta, lr, bs, n, d)
    h_eta, p, q, h_b, p_b, q_b = np.exp(theta[7:13])
    gx, gx_x, gx_p, gx_q = _bowl_derivatives(x, p, q)
    gu, gu_u, gu_p, gu_q = _bowl_derivatives(u, p_b, q_b)
    ln_n, ln_d = np.log(n / N0), np.log(d / D0)
    sx = h_eta * gx_x  # d shape / dx
    su = h_b * gu_u - kappa * sx  # d shape / du (x moves with u through kappa)
    return np.column_stack([-sx, -sx * ln_n, -sx * ln_d, -sx * u, -su, -su * ln_n, -su * ln_d,
                            h_eta * gx, h_eta * gx_p, h_eta * gx_q, h_b * gu, h_b * gu_p, h_b * gu_q])


def coordinates(
    theta: NDArray[np.float64],
    lr: NDArray[np.float64],
    bs: NDArray[np.float64],
    n: NDArray[np.float64],
    d: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The bowl coordinates ``(x, u)`` = (ln eta/eta_opt, ln B/B_opt) of each run."""
    ln_eta0, a_n, a_d, kappa, ln_b0, b_n, b_d = theta[:7]
    ln_n = np.log(n / N0)
    ln_d = np.log(d / D0)
    u = np.log(bs) - (ln_b0 + b_n * ln_n + b_d * ln_d)
    x = np.log(lr) - (ln_eta0 + a_n * ln_n + a_d * ln_d + kappa * u)
    return x, u


def shape(
    theta: NDArray[np.float64],
    lr: NDArray[np.float64],
    bs: NDArray[np.float64],
    n: NDArray[np.float64],
    d: NDArray[np.float64],
) -> NDArray[np.float64]:
    """``log L - log L_level``: the excess log-loss of each run over its cell's optimum (>= 0)."""
    x, u = coordinates(theta, lr, bs, n, d)
    h_eta, p, q, h_b, p_b, q_b = np.exp(theta[7:13])
    return h_eta * bowl(x, p, q) + h_b * bowl(u, p_b, q_b)


def optimum(theta: NDArray[np.float64], n: float, d: float) -> tuple[float, float]:
    """The law's best (peak LR, batch size in sequences) at ``N`` parameters and ``D`` tokens."""
    ln_eta0, a_n, a_d, _kappa, ln_b0, b_n, b_d = theta[:7]
    ln_n, ln_d = np.log(n / N0), np.log(d / D0)
    return float(np.exp(ln_eta0 + a_n * ln_n + a_d * ln_d)), float(np.exp(ln_b0 + b_n * ln_n + b_d * ln_d))


def _starts() -> list[NDArray[np.float64]]:
    base = np.array([np.log(2e-3), -0.7, 0.3, 0.5, np.log(256.0), 0.0, 0.5,
                     np.log(0.01), np.log(1.5), np.log(0.5), np.log(0.01), np.log(1.0), np.log(0.5)])
    alt = base.copy()
    alt[[0, 3, 8, 9]] = [np.log(1e-3), 0.3, np.log(3.0), np.log(1.0)]
    return [base, alt]


def fit_shape(
    lr: NDArray[np.float64],
    bs: NDArray[np.float64],
    n: NDArray[np.float64],
    d: NDArray[np.float64],
    loss: NDArray[np.float64],
    cell: NDArray[np.int64],
    *,
    f_scale: float = 0.01,
    starts: Sequence[NDArray[np.float64]] | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
    """Fit the shape parameters and one free log-level per cell.

    ``cell`` numbers the (N, D) cells 0..k-1. Returns ``(theta, log_levels, cost)``, theta
    in the order of :data:`SHAPE_NAMES`, ``log_levels[c]`` the fitted log optimum loss of
    cell c, cost the robust loss at the optimum.
    """
    from scipy.optimize import least_squares
    from scipy.sparse import csr_matrix, hstack

    k = int(cell.max()) + 1
    y = np.log(loss)
    m = len(SHAPE_NAMES)
    one_hot = csr_matrix((-np.ones(y.size), (np.arange(y.size), cell)), shape=(y.size, k))

    def residuals(z: NDArray[np.float64]) -> NDArray[np.float64]:
        return y - z[m:][cell] - shape(z[:m], lr, bs, n, d)

    def jacobian(z: NDArray[np.float64]) -> Any:
        return hstack([csr_matrix(-shape_jacobian(z[:m], lr, bs, n, d)), one_hot]).tocsr()

    best: tuple[NDArray[np.float64], NDArray[np.float64], float] | None = None
    for start in starts if starts is not None else _starts():
        levels = np.array([y[cell == c].min() if np.any(cell == c) else 0.0 for c in range(k)])
        z0 = np.concatenate([start, levels])
        res = least_squares(residuals, z0, loss="soft_l1", f_scale=f_scale, jac=jacobian,
                            x_scale="jac", max_nfev=400)
        if best is None or res.cost < best[2]:
            best = (res.x[:m].copy(), res.x[m:].copy(), float(res.cost))
    assert best is not None
    return best


def level(phi: NDArray[np.float64], n: NDArray[np.float64], d: NDArray[np.float64]) -> NDArray[np.float64]:
    """``L_level(N, D) = E + A (N/N_0)^-alpha + C (D/D_0)^-beta`` in nats; phi = (ln E, ln A, ln alpha, ln C,
    ln beta)."""
    e, a, alpha, c, beta = np.exp(phi)
    return e + a * (n / N0) ** (-alpha) + c * (d / D0) ** (-beta)


def fit_level(
    n: NDArray[np.float64], d: NDArray[np.float64], levels: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Fit the level law to per-cell optimum losses (nats); returns phi (see :func:`level`)."""
    from scipy.optimize import least_squares

    y = np.log(levels)

    def residuals(phi: NDArray[np.float64]) -> NDArray[np.float64]:
        return y - np.log(level(phi, n, d))

    best = None
    lo = float(np.min(levels))
    for e0 in (0.5 * lo, 0.8 * lo):
        for alpha0 in (0.3, 0.6):
            phi0 = np.log([e0, 0.3 * lo, alpha0, 0.2 * lo, 0.3])
            res = least_squares(residuals, phi0, loss="soft_l1", f_scale=0.005, max_nfev=2000)
            if best is None or res.cost < best.cost:
                best = res
    assert best is not None
    return np.asarray(best.x, dtype=np.float64)
