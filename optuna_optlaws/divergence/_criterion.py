"""The maths of the divergence criterion: a critical peak LR with a Gaussian scatter.

    ln eta_crit = ln eta_c + a_N ln(N/N_0) + a_B ln(B/B_0) + a_BB ln(B/B_0)^2 + a_D ln(D/D_0)
                  + g_long / (1 + (S_c / S)^(1/w))                  [S = D/B]
                  + a_W ln(1 + W)                                   [only when runs state warmup]

    p_diverge = Phi( (ln eta - ln eta_crit) / sqrt(sigma^2 + tau^2) )

with eta the peak LR, N parameters, B the batch size (sequences per step), D tokens, W
warmup steps and Phi the standard normal CDF. It is the edge-of-stability picture: a run
diverges when eta x sharpness passes a threshold, so the critical LR is the inverse of a
sharpness that grows as a power law of N (and shrinks with more warmup, a_W > 0). Two batch
terms carry what the Step Law grid shows (studies/divergence):

* the noise scale: a larger batch averages the gradient noise, so eta_crit rises with B
  (a_B > 0), with a slight curvature a_BB (concave when a_BB < 0);
* the run length: S = D/B is the number of optimizer steps times the sequence length (in
  tokens per batch row). Runs shorter than S_c are unstable at a critical LR lower by the
  factor exp(-g_long); ``w`` is the width of that transition in ln S. On the Step Law data
  it sits near 33k steps of 2,048-token sequences, and g_long ~ 0.8 (a factor ~2.2).

``diverged`` is decided as eta >= eta_crit (p >= 1/2): eta_crit is the median boundary.

**How it is fitted: interval censoring.** Runs sharing (N, B, D[, W]) form a *group*; a
group's runs differ only in peak LR, so they bound its one critical LR: ln eta_crit lies in
(ln of the highest stable LR, ln of the lowest diverged LR] (a group that never diverged
gives only the lower end, one that always diverged only the upper end; a group whose
outcomes are not monotone in LR gives the interval of its least-error split, widened over
ties). Each group's true ln eta_crit is the formula above plus Gaussian scatter, and the
likelihood is a product of normal-CDF differences, one per group: every group weighs the
same, however many of its runs sit near the edge. The scatter has two parts: ``tau``, an
offset shared by the groups of one (N, D) *cell* (same model, same data; a random effect
integrated out by Gauss-Hermite quadrature), and ``sigma``, independent per group. A new
(N, D) gets scatter sqrt(sigma^2 + tau^2). When no cell holds two groups (a table of
scattered runs) the two are not separable; ``tau`` is then 0. With one run per group the fit
is a probit regression on runs.

For fixed (S_c, w) the law is linear in the features (ln N, ln B, ln^2 B, ln D, step(S)
[, ln(1+W)]); it is fitted first without the cell effect by Newton's method (the
log-likelihood is concave there), then with it by L-BFGS-B from that start, both with a
small ridge penalty on standardised weights (so separable data still gives a finite
scatter). (S_c, w) are profiled over a grid (the pair with the lowest penalised negative
log-likelihood).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import optimize, special

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
CELL_SHARE_MAX = 0.8
"""Upper bound of tau / sqrt(sigma^2 + tau^2): beyond it the quadrature below loses accuracy."""
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(40)
_LOG_WEIGHTS = np.log(_WEIGHTS / math.sqrt(2.0 * math.pi))
_LOG_PDF0 = -0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class CriterionParams:
    """A fitted criterion: ``ln_eta_c`` (ln of LR units), the coefficients of :data:`EXPONENTS`
    in use (warmup last, only when fitted with warmup), the scatter of ln eta_crit within a cell
    (``sigma``) and between (N, D) cells (``tau``), both in ln LR, ``ln_s_c`` (ln of tokens per
    batch row) and ``w`` (width in ln S)."""

    ln_eta_c: float
    exponents: NDArray[np.float64]
    sigma: float
    tau: float
    ln_s_c: float
    w: float

    @property
    def scale(self) -> float:
        """The scatter of ln eta_crit for a run of a new (N, D) cell: sqrt(sigma^2 + tau^2)."""
        return math.hypot(self.sigma, self.tau)


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


def _check_outcomes(diverged: NDArray[np.bool_]) -> None:
    """Raise :class:`InputError` unless ``diverged`` holds both outcomes."""
    n = int(np.sum(diverged))
    if n == 0 or n == diverged.size:
        which = "diverged" if n else "stable"
        raise InputError(f"column diverged: every run is {which}; fitting needs both diverged and stable runs")


@dataclass(frozen=True)
class Groups:
    """Runs grouped by everything but their peak LR: ``first`` (index of one run of each group),
    ``lo`` and ``hi`` (ln eta_crit of the group lies in (lo, hi], ln LR units, -inf / +inf when
    open), ``cell`` (index of each group's (N, D) cell) and ``of_run`` (each run's group)."""

    first: NDArray[np.int64]
    lo: NDArray[np.float64]
    hi: NDArray[np.float64]
    cell: NDArray[np.int64]
    of_run: NDArray[np.int64]


def level_counts(
    lr: NDArray[np.float64], diverged: NDArray[np.bool_]
) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """The distinct peak LRs of one group's runs (ascending, any unit), each run's index
    among them, and the diverged and stable runs at each."""
    levels, rank = np.unique(lr, return_inverse=True)
    rank = rank.ravel()
    pos = np.bincount(rank[diverged], minlength=levels.size)
    neg = np.bincount(rank[~diverged], minlength=levels.size)
    return levels, rank, pos, neg


def group_runs(log_lr: NDArray[np.float64], group_keys: NDArray[np.float64], cell_keys: NDArray[np.float64],
               diverged: NDArray[np.bool_]) -> Groups:
    """Group runs by the rows of ``group_keys`` and bound each group's ln eta_crit.

    ``log_lr``: ln peak LR per run; ``group_keys``, ``cell_keys``: one row per run (runs with the
    same row share a group, a cell; a group must lie in one cell); ``diverged``: the outcomes.
    The bound is the split "diverged from LR level j up" with the fewest runs on the wrong side
    (all of them when the group is monotone in LR, which gives the usual interval); tied splits
    widen the interval to cover them all.
    """
    _, of_run = np.unique(group_keys, axis=0, return_inverse=True)
    of_run = of_run.ravel()
    n_groups = int(of_run.max()) + 1
    first = np.zeros(n_groups, dtype=np.int64)
    lo = np.empty(n_groups)
    hi = np.empty(n_groups)
    for g in range(n_groups):
        idx = np.flatnonzero(of_run == g)
        levels, _, pos, neg = level_counts(log_lr[idx], diverged[idx])
        # split j (j = 0..m): levels j.. called diverged; errors = stable at or above j + diverged below j
        errors = np.append(np.cumsum(neg[::-1])[::-1], 0) + np.r_[0, np.cumsum(pos)]
        best = np.flatnonzero(errors == errors.min())
        j0, j1 = int(best[0]), int(best[-1])
        first[g] = idx[0]
        lo[g] = levels[j0 - 1] if j0 > 0 else -np.inf
        hi[g] = levels[j1] if j1 < levels.size else np.inf
    _, cell = np.unique(cell_keys[first], axis=0, return_inverse=True)
    return Groups(first=first, lo=lo, hi=hi, cell=cell.ravel().astype(np.int64), of_run=of_run)


def _log_prob(z_lo: NDArray[np.float64], z_hi: NDArray[np.float64]) -> NDArray[np.float64]:
    """ln(Phi(z_hi) - Phi(z_lo)) for z_lo < z_hi (either may be infinite), accurate in both tails."""
    upper = z_lo > 0  # both in the upper tail: difference of survival functions instead
    a = np.where(upper, -z_hi, z_lo)
    out = np.asarray(special.log_ndtr(np.where(upper, -z_lo, z_hi)), dtype=np.float64)
    two = np.isfinite(a)  # a = -inf: a one-sided bound, ln Phi(b) alone
    with np.errstate(divide="ignore"):
        out[two] += np.log1p(-np.exp(special.log_ndtr(a[two]) - out[two]))
    return out


def _ratio(z: NDArray[np.float64], log_p: NDArray[np.float64]) -> NDArray[np.float64]:
    """phi(z) / P with P = exp(log_p); 0 where z is infinite."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(np.isfinite(z), np.exp(_LOG_PDF0 - 0.5 * z * z - log_p), 0.0)


def _times(r: NDArray[np.float64], z: NDArray[np.float64]) -> NDArray[np.float64]:
    """r * z with 0 where r is 0 (z may be infinite there)."""
    return np.where(r != 0.0, r * np.where(np.isfinite(z), z, 0.0), 0.0)


class _Problem:
    """The penalised negative log-likelihood of the censored model in standardised units.

    z(x) = c x' + u_g with x' = (x - mean) / sd the standardised ln LR and u_g = b + f'_g . v the
    standardised features of group g: z is (x - ln eta_crit) / scale. The cell effect takes the
    share ``r`` of the scale: z given a cell offset e ~ N(0, 1) is (z - r e) / sqrt(1 - r^2).
    """

    def __init__(self, lo: NDArray[np.float64], hi: NDArray[np.float64], feats: NDArray[np.float64],
                 cell: NDArray[np.int64], ridge: float) -> None:
        ends = np.r_[lo[np.isfinite(lo)], hi[np.isfinite(hi)]]
        self.x_mean = float(ends.mean())
        self.x_sd = float(ends.std()) or 1.0
        self.f_mean = feats.mean(axis=0)
        self.f_sd = feats.std(axis=0)
        self.f_sd[self.f_sd < 1e-12] = 1.0
        fz = (feats - self.f_mean) / self.f_sd
        n = lo.size
        self.open_lo, self.open_hi = ~np.isfinite(lo), ~np.isfinite(hi)
        x_lo = np.where(self.open_lo, 0.0, (lo - self.x_mean) / self.x_sd)
        x_hi = np.where(self.open_hi, 0.0, (hi - self.x_mean) / self.x_sd)
        self.v_lo = np.column_stack([x_lo, np.ones(n), fz])
        self.v_hi = np.column_stack([x_hi, np.ones(n), fz])
        self.penalty = np.r_[ridge, 0.0, np.full(fz.shape[1], ridge)]
        counts = np.bincount(cell)
        self.shared = counts[cell] > 1  # groups whose cell holds others: the cell effect matters there
        _, self.cell = np.unique(cell[self.shared], return_inverse=True)
        self.n_shared_cells = int(self.cell.max()) + 1 if self.shared.any() else 0

    def z(self, t: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """z at each group's two ends (-inf / +inf at open ends)."""
        return (np.where(self.open_lo, -np.inf, self.v_lo @ t), np.where(self.open_hi, np.inf, self.v_hi @ t))

    def _fixed_terms(self, t: NDArray[np.float64]) -> tuple[float, NDArray[np.float64], NDArray[np.float64],
                                                              NDArray[np.float64]]:
        z_lo, z_hi = self.z(t)
        log_p = _log_prob(z_lo, z_hi)
        return float(-np.sum(log_p) + np.sum(self.penalty * t * t)), z_lo, z_hi, log_p

    def fixed(self, t: NDArray[np.float64]) -> float:
        """Without the cell effect (r = 0): the objective."""
        return self._fixed_terms(t)[0]

    def newton(self) -> tuple[NDArray[np.float64], float]:
        """Minimise :meth:`fixed` (convex) by Newton's method with step halving."""
        t = np.zeros(self.v_lo.shape[1])
        t[0] = 1.0
        value, z_lo, z_hi, log_p = self._fixed_terms(t)
        for _ in range(100):
            r_lo, r_hi = _ratio(z_lo, log_p), _ratio(z_hi, log_p)
            g = r_hi[:, None] * self.v_hi - r_lo[:, None] * self.v_lo  # d ln P / dt, per group
            grad = -g.sum(axis=0) + 2.0 * self.penalty * t
            # d2 ln P = -z_hi r_hi v_hi v_hi' + z_lo r_lo v_lo v_lo' - g g'
            hess = (((self.v_hi * _times(r_hi, z_hi)[:, None]).T @ self.v_hi)
                    - ((self.v_lo * _times(r_lo, z_lo)[:, None]).T @ self.v_lo)
                    + g.T @ g + np.diag(2.0 * self.penalty + 1e-9))
            step = np.linalg.solve(hess, grad)
            scale = 1.0
            while scale > 1e-8:
                trial, *terms = self._fixed_terms(t - scale * step)
                if trial <= value:
                    break
                scale *= 0.5
            else:
                break  # no descent along the Newton step: at the optimum to rounding
            t = t - scale * step
            done = value - trial < 1e-10 * max(1.0, abs(value))
            value, (z_lo, z_hi, log_p) = trial, terms
            if done:
                break
        return t, value

    def mixed(self, theta: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        """With the cell effect: the objective and its gradient in theta = (t, r)."""
        t, r = theta[:-1], float(theta[-1])
        k = math.sqrt(1.0 - r * r)
        z_lo, z_hi = self.z(t)
        own = ~self.shared
        log_p = _log_prob(z_lo[own], z_hi[own])
        r_lo, r_hi = _ratio(z_lo[own], log_p), _ratio(z_hi[own], log_p)
        grad_t = -(r_hi[:, None] * self.v_hi[own] - r_lo[:, None] * self.v_lo[own]).sum(axis=0)
        value = -float(np.sum(log_p))
        grad_r = 0.0
        if self.n_shared_cells:
            # groups x nodes: z given the cell offset at each node
            q_lo = (z_lo[self.shared, None] - r * _NODES[None, :]) / k
            q_hi = (z_hi[self.shared, None] - r * _NODES[None, :]) / k
            log_q = _log_prob(q_lo, q_hi)
            per_cell = np.zeros((self.n_shared_cells, _NODES.size))
            np.add.at(per_cell, self.cell, log_q)
            joint = per_cell + _LOG_WEIGHTS[None, :]
            log_cell = special.logsumexp(joint, axis=1)
            value -= float(np.sum(log_cell))
            post = np.exp(joint - log_cell[:, None])[self.cell]  # each group's cell posterior over the nodes
            s_lo, s_hi = post * _ratio(q_lo, log_q), post * _ratio(q_hi, log_q)
            grad_t -= (s_hi.sum(axis=1)[:, None] * self.v_hi[self.shared]
                       - s_lo.sum(axis=1)[:, None] * self.v_lo[self.shared]).sum(axis=0) / k
            # dq/dr = -node / k + q r / k^2
            dq_lo = -_NODES[None, :] / k + np.where(np.isfinite(q_lo), q_lo, 0.0) * r / k**2
            dq_hi = -_NODES[None, :] / k + np.where(np.isfinite(q_hi), q_hi, 0.0) * r / k**2
            grad_r = -float(np.sum(s_hi * dq_hi - s_lo * dq_lo))
        value += float(np.sum(self.penalty * t * t))
        return value, np.r_[grad_t + 2.0 * self.penalty * t, grad_r]

    def solve(self) -> tuple[NDArray[np.float64], float, float]:
        """The fitted (t, r) and the objective (nats). The search for r starts mid-range: r = 0
        (the Newton fit's model) is a stationary point of the likelihood, so never a start."""
        t, value = self.newton()
        if not self.n_shared_cells or t[0] <= 0:
            return t, 0.0, value
        bounds = [(1e-6, None)] + [(None, None)] * (t.size - 1) + [(0.0, CELL_SHARE_MAX)]
        res = optimize.minimize(self.mixed, np.r_[t, 0.5 * CELL_SHARE_MAX], jac=True, method="L-BFGS-B",
                                bounds=bounds)
        if not (np.isfinite(res.fun) and res.fun <= value):
            return t, 0.0, value
        return res.x[:-1], float(res.x[-1]), float(res.fun)

    def natural(self, t: NDArray[np.float64], r: float) -> tuple[float, NDArray[np.float64], float, float]:
        """(ln eta_c, coefficients, sigma, tau) from standardised (t, r); raises when c <= 0."""
        c = t[0] / self.x_sd  # 1 / scale, per ln LR
        if c <= 0:
            raise InputError(
                "column peak_lr: a higher peak LR does not make divergence more likely in this table; "
                "no stability edge to fit"
            )
        coefs = t[2:] / self.f_sd
        intercept = t[1] - c * self.x_mean - float(np.sum(coefs * self.f_mean))
        scale = 1.0 / c
        # z = c ln(lr) + intercept + f . coefs = 0 at ln eta_crit
        return float(-intercept * scale), -coefs * scale, float(scale * math.sqrt(1.0 - r * r)), float(scale * r)


def fit_censored(
    lo: NDArray[np.float64], hi: NDArray[np.float64], feats: NDArray[np.float64], cell: NDArray[np.int64],
    *, ridge: float = 1e-2,
) -> tuple[float, NDArray[np.float64], float, float, float]:
    """Fit ``ln eta_crit = ln eta_c + feats @ coefficients`` to groups bounded by (lo, hi].

    One row per group: ``lo``, ``hi`` in ln LR (-inf / +inf for open ends), ``feats`` the columns
    ln eta_crit is linear in, ``cell`` each group's cell index (groups of a cell share an
    offset of scatter ``tau``). Returns ``(ln eta_c, coefficients, sigma, tau, value)``, value
    being the penalised negative log-likelihood (nats). Raises :class:`InputError` when a
    higher peak LR does not make divergence more likely (no stability edge to fit).
    """
    problem = _Problem(lo, hi, feats, cell, ridge)
    t, r, value = problem.solve()
    return (*problem.natural(t, r), value)


def fit_criterion(
    log_lr: NDArray[np.float64],
    model_size: NDArray[np.float64],
    batch_size: NDArray[np.float64],
    tokens: NDArray[np.float64],
    warmup_steps: NDArray[np.float64] | None,
    diverged: NDArray[np.bool_],
    *,
    ridge: float = 1e-2,
) -> tuple[CriterionParams, Groups]:
    """Fit the whole criterion: profile (S_c, w) over a grid, a censored fit at each.

    Runs are grouped by (N, B, D[, W]) and cells are the distinct (N, D). The candidate ln S_c
    span the runs' own ln(D/B) in steps of :data:`GRID_STEP`; the candidate w are
    :data:`WIDTHS`. Returns the parameters and the groups (for diagnostics).
    """
    _check_outcomes(diverged)
    extra = [warmup_steps] if warmup_steps is not None else []
    groups = group_runs(log_lr, np.column_stack([model_size, batch_size, tokens, *extra]),
                        np.column_stack([model_size, tokens]), diverged)
    ln_s = np.log(tokens / batch_size)
    lo, hi = (float(v) for v in np.quantile(ln_s, [QUANTILE, 1.0 - QUANTILE]))
    grid = np.arange(lo, hi + GRID_STEP, GRID_STEP) if hi - lo > GRID_STEP else np.array([0.5 * (lo + hi)])
    g = groups.first
    best: tuple[float, CriterionParams] | None = None
    last_error: InputError | None = None
    for w in WIDTHS:
        for ln_s_c in grid:
            feats = features(model_size[g], batch_size[g], tokens[g], None if warmup_steps is None else warmup_steps[g],
                             float(ln_s_c), w)
            try:
                ln_eta_c, coefs, sigma, tau, value = fit_censored(groups.lo, groups.hi, feats, groups.cell, ridge=ridge)
            except InputError as exc:
                last_error = exc
                continue
            if best is None or value < best[0]:
                best = (value, CriterionParams(ln_eta_c, coefs, sigma, tau, float(ln_s_c), w))
    if best is None:
        assert last_error is not None
        raise last_error
    return best[1], groups


def log_eta_crit(params: CriterionParams, feats: NDArray[np.float64]) -> NDArray[np.float64]:
    """ln eta_crit of each run, ``feats`` from :func:`features` at ``params``' (S_c, w)."""
    return params.ln_eta_c + feats @ params.exponents


def probability(
    log_lr: NDArray[np.float64], params: CriterionParams, feats: NDArray[np.float64]
) -> NDArray[np.float64]:
    """p_diverge of each run: Phi((ln lr - ln eta_crit) / sqrt(sigma^2 + tau^2))."""
    return np.asarray(special.ndtr((log_lr - log_eta_crit(params, feats)) / params.scale), dtype=np.float64)
