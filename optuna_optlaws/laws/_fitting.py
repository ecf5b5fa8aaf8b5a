"""The shared fitting harness: robust multi-start least squares, a Laplace posterior,
predictive intervals, and conditioning on an observed prefix.

Every parametric law (the baselines and the Opt-Law) fits and predicts through these
functions, so the statistics live in one place.

Parameters
    A law declares its parameters as a :class:`ParamSpace` of :class:`Param` (name,
    bounds, ``log=True`` for a positive parameter optimised as its log, ``init`` range
    for random starts). The optimiser works in *internal* coordinates ``z`` (``log`` of
    log-parameters, the value itself otherwise); laws only ever see natural values
    ``theta`` (a float array in the space's order).

Fitting: :func:`fit_least_squares`
    ``residuals(theta) -> r`` gives one residual per observation (laws use
    ``log(observed) - log(predicted)``, nats of log-loss); optionally
    ``jacobian(theta) -> dr/dtheta`` (shape ``(n_obs, n_params)``, natural coordinates;
    finite differences otherwise). The harness runs
    :func:`scipy.optimize.least_squares` (``trf``, bounds, Huber loss with scale
    ``huber_delta``) from the law's own starts plus ``n_random`` seeded random starts
    drawn in the ``init`` ranges, keeps the lowest robust cost, and returns a
    :class:`FitResult`. Deterministic for a given ``seed``. ``agree=k`` stops once ``k``
    starts reach the best cost; ``loco=True`` also estimates the model discrepancy below.
    :class:`~optuna_optlaws.laws._parametric.ParametricLaw` wires all of this up for a
    law that only writes its formula.

Transfer prior: :class:`ParamPrior` (``fit_least_squares(..., prior=)``)
    A Gaussian on some parameters, centred on a law fitted elsewhere, entered as one
    robust residual per parameter after the data's; the posterior adds its precision.

Laplace posterior: :class:`Posterior` (``FitResult.posterior``)
    Gaussian in internal coordinates around the optimum, covariance
    ``(J^T J / s^2 + P0)^-1``: ``J`` the residual Jacobian at the optimum, ``s^2`` the
    residual variance ``sum r^2 / (n - p)`` inflated by ``(1 + rho) / (1 - rho)`` for the
    lag-1 autocorrelation ``rho`` of residuals along each curve (neighbouring points of a
    loss curve are not independent), and ``P0`` a weak prior precision (a Gaussian of a
    quarter of each ``init`` range) so that parameters the data cannot identify get wide,
    not zero, variance. ``Posterior.noise`` is the per-point residual standard deviation
    (log-loss), used to widen predictive intervals for new observations.

Model discrepancy: :func:`loco_discrepancy`
    A law fitted on a few schedules errs on others by more than its parameter
    uncertainty says (misspecification). With two or more curves, the harness refits
    leaving each curve out (one start, warm from the optimum), predicts the
    last quarter of the left-out curve's points, and sets ``Posterior.model_sd``
    (log-loss) to ``sqrt(max(0, mean over curves of the mean squared error - noise^2))``.
    It is added to every prediction's variance (the law's own error on an unseen
    schedule). Whether conditioning on a prefix may remove it is the caller's choice:
    pass ``noise=hypot(noise, model_sd)`` to :func:`condition_on_prefix` to keep it
    (what :class:`~optuna_optlaws.laws._parametric.ParametricLaw` does: on the MPL
    held-out runs observed to 80%, 90% intervals then cover 15/18 final losses for the
    multi-power law instead of 12/18), ``noise=noise`` to let the prefix remove it.

Predictive intervals: :func:`predictive`
    ``predict_log(theta) -> log loss at the target steps`` (natural ``theta``).
    ``method="delta"`` (default, fast: ``p + 1`` evaluations, or one with an analytic
    ``predict_log_jac``) linearises around the optimum; ``method="draws"`` pushes
    ``n_draws`` seeded parameter draws through the law. Either way the predictive
    log-loss has variance ``var_params + model_sd^2 + noise^2`` and the result is a
    :class:`~optuna_optlaws.laws._base.Prediction` with the point prediction as ``mean``
    and the central ``level`` interval ``[lo, hi]`` (nats).

Conditioning on an observed prefix: :func:`condition_on_prefix`
    Given a prediction at target steps and the run's own observed prefix (its steps, its
    losses, and the law's unconditioned prediction there), estimate the run's offset
    ``b`` (in log-loss) as the mean residual over its most recent points, and shift each
    target by ``w(t) b`` with ``w(t) = exp(-(t - t_last) / tau)``, ``tau = persistence x
    t_last`` (steps; ``w = 1`` at and before the last observed step). The offset is
    taken at face value (a flat prior: the run decides its own level). The interval's log
    half-width is scaled by ``sqrt(((v - s^2)(1 - w^2) + s^2 + w^2 se_b^2) / v)``: ``v``
    the prior predictive variance, ``s`` the per-point noise (never conditioned away),
    ``se_b`` the offset's standard error. Near the prefix the parameter and model parts
    of the variance vanish; far from it the law's own interval returns. Limitation: a
    law's error that only appears in a phase the prefix has not reached (a WSD run's
    final decay) is not an offset, and intervals shrunk by a long prefix can miss it.
    All laws call this one function.

Progress: fits with several starts report through :class:`optuna_optlaws._progress.Progress`
(stderr, only on a terminal).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import optimize

from optuna_optlaws._errors import InputError
from optuna_optlaws._progress import Progress
from optuna_optlaws.laws._base import Prediction, z_quantile

FloatArray = NDArray[np.float64]
ResidualFn = Callable[[FloatArray], FloatArray]
JacobianFn = Callable[[FloatArray], FloatArray]


# ---------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Param:
    """One fitted parameter: bounds (natural units), log transform, random-start range."""

    name: str
    lower: float = -math.inf
    upper: float = math.inf
    log: bool = False
    """Optimise ``log(value)`` (the parameter must be > 0; bounds must be > 0 or inf)."""
    init: tuple[float, float] | None = None
    """Range (natural units) random starts are drawn from (log-uniform for ``log``);
    defaults to the bounds, which must then be finite."""

    def __post_init__(self) -> None:
        if self.log and self.lower < 0:
            raise ValueError(f"parameter {self.name}: log parameter needs lower >= 0")
        if not self.lower < self.upper:
            raise ValueError(f"parameter {self.name}: lower must be < upper")

    def init_range(self) -> tuple[float, float]:
        """The random-start range in natural units."""
        if self.init is not None:
            return self.init
        lo = self.lower if not (self.log and self.lower == 0) else 1e-8
        if not (math.isfinite(lo) and math.isfinite(self.upper)):
            raise ValueError(f"parameter {self.name}: give an init range for unbounded parameters")
        return lo, self.upper


@dataclass(frozen=True)
class ParamSpace:
    """An ordered set of :class:`Param`; converts natural <-> internal coordinates."""

    params: tuple[Param, ...]

    def __init__(self, params: Sequence[Param]) -> None:
        object.__setattr__(self, "params", tuple(params))

    @property
    def names(self) -> list[str]:
        """Parameter names, in order."""
        return [p.name for p in self.params]

    @property
    def size(self) -> int:
        """Number of parameters."""
        return len(self.params)

    @property
    def _log(self) -> NDArray[np.bool_]:
        return np.array([p.log for p in self.params], dtype=bool)

    def to_internal(self, theta: Sequence[float] | FloatArray) -> FloatArray:
        """Natural values -> internal coordinates ``z``."""
        t = np.asarray(theta, dtype=np.float64)
        with np.errstate(divide="ignore"):
            return np.where(self._log, np.log(np.maximum(t, 1e-300)), t)

    def to_natural(self, z: FloatArray) -> FloatArray:
        """Internal coordinates ``z`` (any leading shape) -> natural values."""
        z = np.asarray(z, dtype=np.float64)
        return np.where(self._log, np.exp(np.clip(z, -700, 700)), z)

    def dtheta_dz(self, theta: FloatArray) -> FloatArray:
        """Diagonal of ``d theta / d z`` at ``theta``."""
        return np.where(self._log, np.asarray(theta, dtype=np.float64), 1.0)

    def bounds_internal(self) -> tuple[FloatArray, FloatArray]:
        """Lower and upper bounds in internal coordinates."""
        lo = np.array([p.lower for p in self.params], dtype=np.float64)
        hi = np.array([p.upper for p in self.params], dtype=np.float64)
        with np.errstate(divide="ignore"):
            lo = np.where(self._log, np.log(np.maximum(lo, 0.0)), lo)
            hi = np.where(self._log, np.log(hi), hi)
        return lo, hi

    def init_internal(self) -> tuple[FloatArray, FloatArray]:
        """Random-start ranges in internal coordinates."""
        rng = [p.init_range() for p in self.params]
        lo = np.array([r[0] for r in rng], dtype=np.float64)
        hi = np.array([r[1] for r in rng], dtype=np.float64)
        return self.to_internal(lo), self.to_internal(hi)

    def clip_internal(self, z: FloatArray) -> FloatArray:
        """``z`` moved strictly inside the bounds."""
        lo, hi = self.bounds_internal()
        span = np.where(np.isfinite(hi - lo), hi - lo, 1.0)
        eps = 1e-9 * np.maximum(span, 1.0)
        return np.clip(z, lo + eps, hi - eps)

    def as_dict(self, theta: FloatArray) -> dict[str, float]:
        """``{name: value}`` of natural values."""
        return {p.name: float(v) for p, v in zip(self.params, theta, strict=True)}

    def from_mapping(self, values: Mapping[str, Any], where: str = "params") -> FloatArray:
        """Natural values from ``{name: value}``; KeyError/ValueError on missing or bad."""
        out = np.empty(self.size)
        for i, p in enumerate(self.params):
            v = float(values[p.name])
            if not math.isfinite(v):
                raise ValueError(f"{where}: parameter {p.name} is not finite")
            out[i] = v
        return out


# ---------------------------------------------------------------------- transfer prior
@dataclass(frozen=True)
class ParamPrior:
    """A Gaussian prior on some of a fit's parameters, from a law fitted elsewhere (on
    another corpus, say): each parameter named in ``centre`` is drawn towards that value
    (natural units) with standard deviation ``sd`` in internal coordinates (for a ``log``
    parameter 0.2 is about 20% either way; for the others, 0.2 in the parameter's units).

    It enters the fit as one extra residual per parameter, ``scale (z - z_prior) / sd``,
    where ``scale`` (log-loss, nats) is the fitted points' noise: the prior on a parameter
    weighs as much as one point that pins it to within ``sd``. The fit's Huber loss treats
    these residuals like the data's, so a prior the curves clearly contradict gives way
    (its pull stops growing past about ``1.345 sd``) instead of dragging the fit. The
    Laplace posterior adds ``1 / sd^2`` to those parameters' precision."""

    centre: Mapping[str, float]
    sd: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sd) and self.sd > 0):
            raise ValueError(f"prior sd must be a positive number, got {self.sd!r}")

    def bind(self, space: ParamSpace, scale: float) -> BoundPrior | None:
        """The prior on the parameters of ``space`` it names (``None`` when it names none)."""
        idx = [i for i, n in enumerate(space.names) if n in self.centre]
        if not idx:
            return None
        z_all = space.clip_internal(space.to_internal(
            [self.centre.get(n, p.init_range()[0]) for n, p in zip(space.names, space.params, strict=True)]
        ))
        return BoundPrior(np.asarray(idx, dtype=np.int64), z_all[idx], float(scale) / self.sd, self.sd)


@dataclass(frozen=True)
class BoundPrior:
    """A :class:`ParamPrior` on one parameter space: the parameters' indices, their
    centres (internal coordinates), the residual weight ``scale / sd`` and ``sd``."""

    idx: NDArray[np.int64]
    z: FloatArray
    weight: float
    sd: float

    def wrap(
        self, space: ParamSpace, residuals: ResidualFn, jacobian: JacobianFn | None
    ) -> tuple[ResidualFn, JacobianFn | None]:
        """``residuals`` (and ``jacobian``, natural coordinates) with the prior's residuals
        appended after the data's."""

        def res(theta: FloatArray) -> FloatArray:
            z = space.to_internal(theta)
            data = np.asarray(residuals(theta), dtype=np.float64)
            return np.concatenate([data, self.weight * (z[self.idx] - self.z)])

        if jacobian is None:
            return res, None

        def jac(theta: FloatArray) -> FloatArray:
            rows = np.zeros((self.idx.size, theta.size))
            rows[np.arange(self.idx.size), self.idx] = self.weight / space.dtheta_dz(theta)[self.idx]
            return np.vstack([np.asarray(jacobian(theta), dtype=np.float64), rows])

        return res, jac

    def folds_groups(self, groups: NDArray[np.int64]) -> NDArray[np.int64]:
        """``groups`` (the curve of each data residual) with the prior's residuals in group
        -1, which no leave-one-curve-out fold leaves out."""
        return np.concatenate([groups, np.full(self.idx.size, -1, dtype=np.int64)])

    def precision(self, n_params: int) -> FloatArray:
        """The prior's precision matrix (internal coordinates)."""
        out = np.zeros((n_params, n_params))
        out[self.idx, self.idx] = 1.0 / self.sd**2
        return out


# ---------------------------------------------------------------------- posterior
@dataclass
class Posterior:
    """Laplace posterior of a fit: Gaussian in internal coordinates."""

    space: ParamSpace
    z: FloatArray
    """Optimum, internal coordinates."""
    cov: FloatArray
    """Covariance of ``z`` (internal coordinates)."""
    noise: float
    """Per-observation residual standard deviation (log-loss, nats)."""
    model_sd: float = 0.0
    """Standard deviation of the law's own error on a schedule it was not fitted on
    (log-loss; leave-one-curve-out estimate, 0 when not estimated)."""

    @property
    def theta(self) -> FloatArray:
        """Optimum in natural units."""
        return self.space.to_natural(self.z)

    def std_natural(self) -> FloatArray:
        """Approximate standard deviation of each parameter, natural units (delta method)."""
        return np.sqrt(np.maximum(np.diag(self.cov), 0.0)) * np.abs(self.space.dtheta_dz(self.theta))

    def draws(self, n: int, seed: int = 0) -> FloatArray:
        """``n`` parameter draws (natural units, shape ``(n, p)``), clipped to the bounds."""
        rng = np.random.default_rng(seed)
        zs = rng.multivariate_normal(self.z, self.cov, size=n, method="eigh")
        return self.space.to_natural(self.space.clip_internal(zs))

    def to_state(self) -> dict[str, Any]:
        """JSON-ready dict (exact float round trip)."""
        return {
            "z": self.z.tolist(),
            "cov": self.cov.tolist(),
            "noise": float(self.noise),
            "model_sd": float(self.model_sd),
        }

    @classmethod
    def from_state(cls, space: ParamSpace, state: Mapping[str, Any]) -> Posterior:
        """Rebuild from :meth:`to_state`; ValueError on a bad shape."""
        z = np.asarray(state["z"], dtype=np.float64)
        cov = np.asarray(state["cov"], dtype=np.float64)
        noise = float(state["noise"])
        model_sd = float(state.get("model_sd", 0.0))
        if z.shape != (space.size,) or cov.shape != (space.size, space.size):
            raise ValueError(f"posterior needs {space.size} parameters, got shape {z.shape} / {cov.shape}")
        finite = np.all(np.isfinite(z)) and np.all(np.isfinite(cov)) and math.isfinite(noise + model_sd)
        if not finite or noise < 0 or model_sd < 0:
            raise ValueError("posterior holds non-finite or negative values")
        return cls(space=space, z=z, cov=cov, noise=noise, model_sd=model_sd)


@dataclass
class FitResult:
    """The best of a multi-start fit."""

    posterior: Posterior
    cost: float
    """Robust (Huber) cost at the optimum, as scipy reports it."""
    rmse: float
    """Root mean square residual (log-loss)."""
    n_obs: int
    starts: int
    seconds: float
    success: bool
    autocorr: float
    """Lag-1 autocorrelation of residuals along curves (used to inflate the covariance)."""
    at_bounds: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Parameters whose optimum sits on a bound of their :class:`Param`, by name:
    ``{"side": "lower" | "upper", "bound": value}`` (natural units; :func:`on_bounds`):
    the fit would have gone past it. An amplitude on its zero floor just switches its
    term off; other bounds are harmless at a natural limit (an offset at ~0, a cut-off at
    ~infinity) and a warning for an amplitude at its cap: the law's form is stretched on
    these curves."""

    @property
    def theta(self) -> FloatArray:
        """Best parameters, natural units."""
        return self.posterior.theta

    def info(self) -> dict[str, Any]:
        """Diagnostics for a law file's ``fit_info``."""
        return {
            "cost": self.cost,
            "rmse_log_loss": self.rmse,
            "n_obs": self.n_obs,
            "starts": self.starts,
            "seconds": round(self.seconds, 3),
            "success": self.success,
            "residual_autocorr": self.autocorr,
            "model_sd_log_loss": self.posterior.model_sd,
            "param_std": self.posterior.space.as_dict(self.posterior.std_natural()),
            "at_bounds": {k: dict(v) for k, v in self.at_bounds.items()},
        }


def _lag1_autocorr(r: FloatArray, groups: NDArray[np.int64] | None) -> float:
    if r.size < 3:
        return 0.0
    if groups is None:
        groups = np.zeros(r.size, dtype=np.int64)
    same = groups[1:] == groups[:-1]
    if not np.any(same):
        return 0.0
    rc = np.zeros_like(r)
    for g in np.unique(groups):
        m = groups == g
        rc[m] = r[m] - r[m].mean()
    den = float(np.sum(rc**2))
    if den <= 0:
        return 0.0
    return float(np.clip(np.sum(rc[1:][same] * rc[:-1][same]) / den, 0.0, 0.95))


def _jac_internal(
    space: ParamSpace, z: FloatArray, residuals: ResidualFn, jacobian: JacobianFn | None
) -> FloatArray:
    theta = space.to_natural(z)
    if jacobian is not None:
        return np.asarray(jacobian(theta), dtype=np.float64) * space.dtheta_dz(theta)[None, :]
    r0 = residuals(theta)
    J = np.empty((r0.size, z.size))
    _, hi = space.bounds_internal()
    for j in range(z.size):
        h = 1e-6 * max(1.0, abs(z[j]))
        zp = z.copy()
        if zp[j] + h > hi[j]:
            h = -h
        zp[j] += h
        J[:, j] = (residuals(space.to_natural(zp)) - r0) / h
    return J


def laplace_posterior(
    space: ParamSpace,
    z: FloatArray,
    residuals: ResidualFn,
    jacobian: JacobianFn | None = None,
    groups: NDArray[np.int64] | None = None,
    prior: BoundPrior | None = None,
) -> tuple[Posterior, float]:
    """The Laplace posterior at the optimum ``z`` (see the module docstring) and the
    residuals' lag-1 autocorrelation; ``residuals`` are the data's alone, ``prior`` adds
    its precision."""
    theta = space.to_natural(z)
    r = np.asarray(residuals(theta), dtype=np.float64)
    n, p = r.size, z.size
    J = _jac_internal(space, z, residuals, jacobian)
    s2 = float(np.sum(r**2) / max(n - p, 1))
    rho = _lag1_autocorr(r, groups)
    s2_eff = max(s2 * (1 + rho) / (1 - rho), 1e-300)
    ilo, ihi = space.init_internal()
    width = np.maximum(np.abs(ihi - ilo) / 4.0, 1e-6)
    precision = J.T @ J / s2_eff + np.diag(1.0 / width**2)
    if prior is not None:
        precision = precision + prior.precision(p)
    try:
        cov = np.linalg.inv(precision)
    except np.linalg.LinAlgError:
        cov = np.linalg.pinv(precision)
    cov = 0.5 * (cov + cov.T)
    return Posterior(space=space, z=z.copy(), cov=cov, noise=math.sqrt(s2)), rho


# ---------------------------------------------------------------------- fitting
def _internal_problem(
    space: ParamSpace, residuals: ResidualFn, jacobian: JacobianFn | None
) -> tuple[Callable[[FloatArray], FloatArray], Any]:
    """Residuals (non-finite ones replaced by a large value) and Jacobian (or
    ``"2-point"``) in internal coordinates, as :func:`scipy.optimize.least_squares` wants."""

    def fun(z: FloatArray) -> FloatArray:
        r = np.asarray(residuals(space.to_natural(z)), dtype=np.float64)
        return np.where(np.isfinite(r), r, 1e3)

    if jacobian is None:
        return fun, "2-point"

    def jac(z: FloatArray) -> FloatArray:
        th = space.to_natural(z)
        J = np.asarray(jacobian(th), dtype=np.float64) * space.dtheta_dz(th)[None, :]
        return np.where(np.isfinite(J), J, 0.0)

    return fun, jac


def _solve(
    fun: Callable[[FloatArray], FloatArray],
    jac: Any,
    z0: FloatArray,
    bounds: tuple[FloatArray, FloatArray],
    huber_delta: float,
    max_nfev: int,
) -> Any:
    """One bounded Huber ``trf`` solve from ``z0``; ``None`` when it breaks down.

    BLAS is held to one thread: the problems are small (thousands of residuals x ~15
    parameters), and a multi-threaded SVD on a busy machine is hundreds of times slower."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            return optimize.least_squares(
                fun, z0, jac=jac, bounds=bounds, loss="huber", f_scale=huber_delta,
                x_scale="jac", max_nfev=max_nfev, method="trf",
            )
        except (ValueError, np.linalg.LinAlgError):
            return None


def fit_least_squares(
    space: ParamSpace,
    residuals: ResidualFn,
    *,
    jacobian: JacobianFn | None = None,
    starts: Sequence[Sequence[float]] = (),
    n_random: int = 4,
    seed: int = 0,
    huber_delta: float = 1e-3,
    groups: NDArray[np.int64] | None = None,
    max_nfev: int = 200,
    agree: int = 0,
    loco: bool = False,
    label: str = "fit",
    prior: ParamPrior | None = None,
    prior_scale: float | None = None,
) -> FitResult:
    """Robust multi-start nonlinear least squares; see the module docstring.

    ``starts``: the law's own initial guesses (natural units); ``n_random`` more are drawn
    (seeded) in the parameters' ``init`` ranges. ``groups``: curve index of each residual
    (for the autocorrelation inflation of the covariance). ``huber_delta``: Huber scale
    (log-loss units). ``agree``: when > 0, stop once that many starts have reached the
    best cost (relative 1e-6), skipping the remaining starts (the law's own starts come
    first). ``loco``: estimate ``Posterior.model_sd`` by leaving each curve of ``groups``
    out in turn (:func:`loco_discrepancy` with masked residuals: simple, but each fold
    still evaluates every curve; a law that can evaluate a subset of curves cheaply
    should build its own folds). ``prior``: a :class:`ParamPrior` on some parameters,
    its residuals worth ``prior_scale`` (log-loss; default ``huber_delta``) per ``sd``;
    the law's own starts are then preceded by the prior's centre. Raises InputError when
    no start gives a finite residual."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    ilo, ihi = space.init_internal()
    zs = [space.clip_internal(space.to_internal(s)) for s in starts]
    zs += [space.clip_internal(rng.uniform(ilo, ihi)) for _ in range(n_random)]
    if not zs:
        raise ValueError("fit_least_squares needs at least one start")
    lo, hi = space.bounds_internal()
    bound = None if prior is None else prior.bind(space, huber_delta if prior_scale is None else prior_scale)
    fitted, fitted_jac = (residuals, jacobian) if bound is None else bound.wrap(space, residuals, jacobian)
    if bound is not None and zs:
        centred = zs[0].copy()
        centred[bound.idx] = bound.z
        zs.insert(0, centred)

    fun, jac = _internal_problem(space, fitted, fitted_jac)
    best: Any = None
    costs: list[float] = []
    progress = Progress(label, len(zs))
    for z0 in zs:
        r0 = fun(z0)
        if not np.all(np.abs(r0) < 1e3):
            costs.append(math.inf)
            progress.advance()
            continue
        res = _solve(fun, jac, z0, (lo, hi), huber_delta, max_nfev)
        if res is None:
            costs.append(math.inf)
            progress.advance()
            continue
        costs.append(float(res.cost))
        if best is None or res.cost < best.cost:
            best = res
        progress.advance(note=f"best cost {best.cost:.4g}")
        if agree > 0 and sum(c <= best.cost * (1 + 1e-6) + 1e-300 for c in costs) >= agree:
            break
    progress.close()
    if best is None:
        raise InputError(f"{label}: no starting point gave finite predictions; check the curves' losses")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        post, rho = laplace_posterior(space, best.x, residuals, jacobian, groups, bound)
    r = _internal_problem(space, residuals, jacobian)[0](best.x)
    if loco and groups is not None and np.unique(groups).size >= 2:
        fold_groups = groups if bound is None else bound.folds_groups(groups)
        post.model_sd = loco_discrepancy(
            space, post.theta, _masked_folds(fitted, fitted_jac, fold_groups), noise=post.noise,
            huber_delta=huber_delta,
        )
    return FitResult(
        posterior=post,
        cost=float(best.cost),
        rmse=float(np.sqrt(np.mean(r**2))),
        n_obs=int(r.size),
        starts=len(zs),
        seconds=time.perf_counter() - t0,
        success=bool(best.success),
        autocorr=rho,
        at_bounds=on_bounds(space, best.x),
    )


AT_BOUND = 0.01
"""A parameter counts as on a bound within this fraction of its (finite) range, in the
coordinates it is optimised in (the log for ``log`` parameters): ``trf`` keeps its
iterates strictly inside the bounds, so an optimum pressed against one stops just short."""


def on_bounds(space: ParamSpace, z: FloatArray) -> dict[str, dict[str, Any]]:
    """The parameters of internal point ``z`` on a bound (within :data:`AT_BOUND` of it),
    as :attr:`FitResult.at_bounds` holds them."""
    lo, hi = space.bounds_internal()
    out: dict[str, dict[str, Any]] = {}
    for p, zi, a, b in zip(space.params, np.asarray(z, dtype=np.float64), lo, hi, strict=True):
        tol = AT_BOUND * (b - a) if math.isfinite(b - a) else 0.0
        if math.isfinite(a) and zi - a <= tol:
            out[p.name] = {"side": "lower", "bound": p.lower}
        elif math.isfinite(b) and b - zi <= tol:
            out[p.name] = {"side": "upper", "bound": p.upper}
    return out


def _masked_folds(
    residuals: ResidualFn, jacobian: JacobianFn | None, groups: NDArray[np.int64]
) -> list[tuple[ResidualFn, JacobianFn | None, ResidualFn]]:
    """Leave-one-curve-out folds over ``groups`` (the curve of each residual; a negative
    group marks residuals every fold keeps: a prior's)."""
    folds: list[tuple[ResidualFn, JacobianFn | None, ResidualFn]] = []
    for g in np.unique(groups[groups >= 0]):
        keep = groups != g
        idx = np.flatnonzero(~keep)
        late = idx[idx.size - max(1, idx.size // 4):]

        def res_g(th: FloatArray, keep: NDArray[np.bool_] = keep) -> FloatArray:
            return np.asarray(residuals(th), dtype=np.float64)[keep]

        def held(th: FloatArray, late: NDArray[np.intp] = late) -> FloatArray:
            return np.asarray(residuals(th), dtype=np.float64)[late]

        jac_g: JacobianFn | None = None
        if jacobian is not None:

            def jac_g(th: FloatArray, keep: NDArray[np.bool_] = keep) -> FloatArray:
                return np.asarray(jacobian(th), dtype=np.float64)[keep]

        folds.append((res_g, jac_g, held))
    return folds


def loco_discrepancy(
    space: ParamSpace,
    theta: FloatArray,
    folds: Sequence[tuple[ResidualFn, JacobianFn | None, ResidualFn]],
    *,
    noise: float,
    huber_delta: float = 1e-3,
    max_nfev: int = 50,
) -> float:
    """Leave-one-curve-out model discrepancy (log-loss standard deviation); see the
    module docstring.

    ``folds``: one ``(residuals, jacobian, held_out)`` per left-out curve: the residuals
    (and optional Jacobian, natural coordinates) of the other curves, and the residuals of
    the left-out curve's last quarter of points. Each fold is refitted from ``theta``
    (one start, at most ``max_nfev`` evaluations)."""
    lo, hi = space.bounds_internal()
    z0 = space.clip_internal(space.to_internal(theta))
    mse = []
    for residuals, jacobian, held_out in folds:
        fun, jac = _internal_problem(space, residuals, jacobian)
        res = _solve(fun, jac, z0, (lo, hi), huber_delta, max_nfev)
        if res is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            e = np.asarray(held_out(space.to_natural(res.x)), dtype=np.float64)
        if e.size and np.all(np.isfinite(e)):
            mse.append(float(np.mean(e**2)))
    if not mse:
        return 0.0
    return math.sqrt(max(0.0, float(np.mean(mse)) - noise**2))


# ---------------------------------------------------------------------- prediction
def predictive(
    posterior: Posterior,
    predict_log: Callable[[FloatArray], FloatArray],
    *,
    predict_log_jac: Callable[[FloatArray], FloatArray] | None = None,
    level: float = 0.9,
    method: str = "delta",
    n_draws: int = 200,
    seed: int = 0,
    noise: bool = True,
) -> Prediction:
    """Predictive mean and central ``level`` interval (nats) of a fitted law.

    ``predict_log(theta)``: log-loss at the target steps (natural ``theta``);
    ``predict_log_jac(theta)``: its Jacobian ``d log L / d theta`` (shape
    ``(n_targets, p)``), optional. ``noise``: add the per-observation residual noise
    (an interval for a new observed loss; False gives the interval of the law's mean)."""
    theta = posterior.theta
    m = np.asarray(predict_log(theta), dtype=np.float64)
    noise_var = (posterior.noise**2 if noise else 0.0) + posterior.model_sd**2
    zq = z_quantile(level)
    if method == "delta":
        if predict_log_jac is not None:
            G = np.asarray(predict_log_jac(theta), dtype=np.float64) * posterior.space.dtheta_dz(theta)[None, :]
        else:
            G = np.empty((m.size, theta.size))
            for j in range(theta.size):
                h = 1e-6 * max(1.0, abs(posterior.z[j]))
                z = posterior.z.copy()
                z[j] += h
                G[:, j] = (np.asarray(predict_log(posterior.space.to_natural(z))) - m) / h
        G = np.where(np.isfinite(G), G, 0.0)
        var = np.einsum("ij,jk,ik->i", G, posterior.cov, G) + noise_var
        half = zq * np.sqrt(np.maximum(var, 0.0))
        lo, hi = m - half, m + half
    elif method == "draws":
        thetas = posterior.draws(n_draws, seed=seed)
        preds = np.stack([np.asarray(predict_log(t), dtype=np.float64) for t in thetas])
        preds = preds[np.all(np.isfinite(preds), axis=1)]
        if preds.shape[0] < 2:
            preds = m[None, :]
        if noise_var > 0:
            rng = np.random.default_rng(seed + 1)
            preds = preds + rng.normal(0.0, math.sqrt(noise_var), size=preds.shape)
        q = (1 - level) / 2
        lo = np.quantile(preds, q, axis=0)
        hi = np.quantile(preds, 1 - q, axis=0)
        lo, hi = np.minimum(lo, m), np.maximum(hi, m)
    else:
        raise ValueError(f"unknown interval method {method!r} (delta or draws)")
    return Prediction(np.exp(m), np.exp(lo), np.exp(hi))


def condition_on_prefix(
    prediction: Prediction,
    target_steps: NDArray[np.int64],
    prefix_steps: NDArray[np.int64],
    prefix_losses: FloatArray,
    prefix_pred: FloatArray,
    *,
    noise: float,
    level: float = 0.9,
    window: float = 0.2,
    min_points: int = 3,
    persistence: float = 1.0,
) -> Prediction:
    """Condition a law's prediction on the run's own observed prefix; see module docstring.

    ``prediction``: unconditioned, at ``target_steps``. ``prefix_steps/prefix_losses``:
    the run's observations (non-finite ones are ignored); ``prefix_pred``: the law's
    unconditioned mean loss at ``prefix_steps``. ``noise``: per-point residual standard
    deviation (log-loss) included in ``prediction``'s interval (0 if it holds none).
    ``window``: the offset is averaged over the points in the last
    ``window`` fraction of the observed steps (at least ``min_points`` points).
    ``persistence``: the offset's decay horizon, in units of the last observed step."""
    ok = np.isfinite(prefix_losses) & (prefix_losses > 0) & np.isfinite(prefix_pred) & (prefix_pred > 0)
    if not np.any(ok):
        return prediction
    ps = np.asarray(prefix_steps)[ok]
    r = np.log(prefix_losses[ok]) - np.log(prefix_pred[ok])
    t_last = float(ps.max())
    recent = ps >= t_last * (1 - window)
    if recent.sum() < min_points:
        recent = np.zeros_like(recent)
        recent[np.argsort(ps)[-min_points:]] = True
    rr = r[recent]
    b = float(np.mean(rr))
    k = rr.size
    se_b2 = (noise**2 if k < 2 else max(float(np.var(rr, ddof=1)), noise**2)) / k
    tau = max(persistence * t_last, 1.0)
    t = np.asarray(target_steps, dtype=np.float64)
    w = np.exp(-np.maximum(t - t_last, 0.0) / tau)
    zq = z_quantile(level)
    m = np.log(prediction.mean)
    lo_h = m - np.log(prediction.lo)
    hi_h = np.log(prediction.hi) - m
    v = np.maximum(((lo_h + hi_h) / (2 * zq)) ** 2, 1e-300)
    n2 = np.minimum(noise**2, v)
    shrink = np.sqrt(((v - n2) * (1 - w**2) + n2 + w**2 * se_b2) / v)
    # scale the law's own numbers, so that where the offset's weight vanishes they come back
    # unchanged (exp(log x) need not round-trip: numpy < 2 on AVX-512 is 1 ulp off)
    off = w * b
    mean = prediction.mean
    return Prediction(mean * np.exp(off), mean * np.exp(off - lo_h * shrink), mean * np.exp(off + hi_h * shrink))
