"""The maths of the divergence criterion: a logistic law around a critical peak LR.

    p_diverge = sigmoid( (ln eta - ln eta_crit) / s )

    ln eta_crit = ln eta_c + a_N ln(N/N_0) + a_B ln(B/B_0) + a_BB ln(B/B_0)^2 + a_D ln(D/D_0)
                  + g_long / (1 + (S_c / S)^(1/w))                  [S = D/B]
                  + a_W ln(1 + W)                                   [only when runs state warmup]

with eta the peak LR, N parameters, B the batch size (sequences per step), D tokens and W
warmup steps. It is the edge-of-stability picture: a run diverges when eta x sharpness
passes a threshold, so the critical LR is the inverse of a sharpness that grows as a power
law of N (and shrinks with more warmup, a_W > 0). Two batch terms carry what the Step Law
grid shows (studies/divergence):

* the noise scale: a larger batch averages the gradient noise, so eta_crit rises with B
  (a_B > 0), with a slight curvature a_BB (concave when a_BB < 0);
* the run length: S = D/B is the number of optimizer steps times the sequence length (in
  tokens per batch row). Runs shorter than S_c are unstable at a critical LR lower by the
  factor exp(-g_long); ``w`` is the width of that transition in ln S. On the Step Law data
  it sits near 31k steps of 2,048-token sequences, and g_long ~ 0.8 (a factor ~2.2).

``s`` is the width of the transition in ln eta (small s is a sharp edge). ``diverged`` is
decided as p >= 1/2, i.e. eta >= eta_crit.

For fixed (S_c, w) the law is a linear logistic regression in (ln eta, ln N, ln B, ln^2 B,
ln D, step(S)[, ln(1+W)]); it is fitted with a small ridge penalty on standardised weights
(so separable data still gives a finite s) by Newton's method, and (S_c, w) are profiled
over a grid (the pair with the lowest penalised negative log-likelihood). The result is
rewritten in the interpretable form above.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from optuna_optlaws._errors import InputError
from optuna_optlaws.divergence._scales import B0, D0, N0

EXPONENTS = ("a_N", "a_B", "a_BB", "a_D", "g_long", "a_W")
"""Names of the coefficients of ln eta_crit, in the column order of :func:`features`."""
WIDTHS: tuple[float, ...] = (0.1, 0.2, 0.4)
"""Candidate widths w of the run-length transition, in ln S."""
QUANTILE = 0.05
"""S_c is searched between these quantiles of the runs' ln S (at least this share of runs on each side)."""
GRID_STEP = 0.05
"""Spacing of the candidate ln S_c, in ln S (a 5% step)."""


@dataclass(frozen=True)
class CriterionParams:
    """A fitted criterion: ``ln_eta_c`` (ln of LR units), the coefficients of :data:`EXPONENTS`
    in use (warmup last, only when fitted with warmup), ``s`` (width in ln eta), ``ln_s_c``
    (ln of tokens per batch row) and ``w`` (width in ln S)."""

    ln_eta_c: float
    exponents: NDArray[np.float64]
    s: float
    ln_s_c: float
    w: float


def _sigmoid(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """The logistic function, written with tanh (no overflow for large ``|x|``)."""
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)), dtype=np.float64)


def step_term(batch_size: NDArray[np.float64], tokens: NDArray[np.float64], ln_s_c: float,
              w: float) -> NDArray[np.float64]:
    """The run-length switch in [0, 1]: 1 / (1 + (S_c/S)^(1/w)), S = tokens / batch_size."""
    x = (np.log(tokens / batch_size) - ln_s_c) / w
    return _sigmoid(x)


def features(
    model_size: NDArray[np.float64],
    batch_size: NDArray[np.float64],
    tokens: NDArray[np.float64],
    warmup_steps: NDArray[np.float64] | None,
    ln_s_c: float,
    w: float,
) -> NDArray[np.float64]:
    """The features of ln eta_crit, one column per coefficient in use (n_runs x 5 or 6)."""
    log_b = np.log(batch_size / B0)
    cols = [np.log(model_size / N0), log_b, log_b**2, np.log(tokens / D0), step_term(batch_size, tokens, ln_s_c, w)]
    if warmup_steps is not None:
        cols.append(np.log1p(warmup_steps))
    return np.column_stack(cols)


def _check_outcomes(y: NDArray[np.float64]) -> None:
    if y.sum() == 0 or y.sum() == y.size:
        which = "diverged" if y.sum() else "stable"
        raise InputError(f"column diverged: every run is {which}; fitting needs both diverged and stable runs")


def fit_logistic(
    log_lr: NDArray[np.float64], feats: NDArray[np.float64], diverged: NDArray[np.bool_], *, ridge: float = 1e-2
) -> tuple[float, NDArray[np.float64], float, float]:
    """Fit ``(ln eta_c, coefficients, s)`` of a linear criterion to 0/1 outcomes.

    ``log_lr`` is ln(peak LR), ``feats`` the columns ln eta_crit is linear in. Returns the
    penalised negative log-likelihood (nats) as a fourth value. Raises :class:`InputError`
    when the outcomes are all one class or when a higher peak LR does not make divergence
    more likely (no stability edge to fit).
    """
    y = diverged.astype(np.float64)
    _check_outcomes(y)
    x = np.column_stack([log_lr, feats])
    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    sd[sd < 1e-12] = 1.0
    z = np.column_stack([np.ones(y.size), (x - mu) / sd])
    penalty = np.r_[0.0, np.full(x.shape[1], ridge)]

    def objective(w: NDArray[np.float64]) -> float:
        t = z @ w
        return float(np.sum(np.logaddexp(0.0, t) - y * t) + np.sum(penalty * w * w))

    # Newton's method (IRLS) with step halving: the objective is convex, a handful of steps
    w = np.zeros(z.shape[1])
    value = objective(w)
    for _ in range(100):
        p = _sigmoid(z @ w)
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
        value = min(value, trial)
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
    return float(-b * s), -c[1:] * s, float(s), value


def fit_criterion(
    log_lr: NDArray[np.float64],
    model_size: NDArray[np.float64],
    batch_size: NDArray[np.float64],
    tokens: NDArray[np.float64],
    warmup_steps: NDArray[np.float64] | None,
    diverged: NDArray[np.bool_],
    *,
    ridge: float = 1e-2,
) -> CriterionParams:
    """Fit the whole criterion: profile (S_c, w) over a grid, a linear logistic fit at each.

    The candidate ln S_c span the runs' own ln(D/B) in steps of :data:`GRID_STEP`; the
    candidate w are :data:`WIDTHS`.
    """
    _check_outcomes(diverged.astype(np.float64))
    ln_s = np.log(tokens / batch_size)
    lo, hi = (float(v) for v in np.quantile(ln_s, [QUANTILE, 1.0 - QUANTILE]))
    grid = np.arange(lo, hi + GRID_STEP, GRID_STEP) if hi - lo > GRID_STEP else np.array([0.5 * (lo + hi)])
    best: tuple[float, CriterionParams] | None = None
    last_error: InputError | None = None
    for w in WIDTHS:
        for ln_s_c in grid:
            feats = features(model_size, batch_size, tokens, warmup_steps, float(ln_s_c), w)
            try:
                ln_eta_c, coefs, s, value = fit_logistic(log_lr, feats, diverged, ridge=ridge)
            except InputError as exc:
                last_error = exc
                continue
            if best is None or value < best[0]:
                best = (value, CriterionParams(ln_eta_c, coefs, s, float(ln_s_c), w))
    if best is None:
        assert last_error is not None
        raise last_error
    return best[1]


def log_eta_crit(params: CriterionParams, feats: NDArray[np.float64]) -> NDArray[np.float64]:
    """ln eta_crit of each run, ``feats`` from :func:`features` at ``params``' (S_c, w)."""
    return params.ln_eta_c + feats @ params.exponents


def probability(
    log_lr: NDArray[np.float64], params: CriterionParams, feats: NDArray[np.float64]
) -> NDArray[np.float64]:
    """p_diverge of each run."""
    t = (log_lr - log_eta_crit(params, feats)) / params.s
    return _sigmoid(t)
