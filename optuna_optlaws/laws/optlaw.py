"""The Opt-Law: this project's SDE-derived law of the loss along any LR schedule.

    L(t) = L0(N) + A(N) (S(t) + s_w)^(-alpha)               convergence (river)
         + B(N) sum_j w_j n_j(t)                             noise excess in J modes
         + k_esc m(t)                                        escape / instability

``S(t)`` is the LR area up to step ``t`` (area units of 1000 steps at the reference LR
``eta_ref``, the largest peak LR of the fitting data). Mode ``j`` relaxes at rate
``kappa_j`` per area unit towards ``(eta/eta_ref)^phi (1 + eps A (S + s_w)^(-alpha))``:
the noise floor is a power ``phi`` of the LR, and it is proportional to the loss above an
entropy floor ``E = L0 - 1/eps`` because the gradient-noise covariance shrinks with the
loss (multiplicative noise). That coupling is what makes a late, short decay after a
long stable phase gain less than an early one (design.md section 4); ``eps = 0`` is the
plain additive-noise recursion. The modes' shares ``w_j ~ kappa_j^beta exp(-kappa_j /
c_cut)`` form a Gamma-like Hessian spectrum. See :mod:`._optlaw_dynamics` for the exact
chunked integrator (cost independent of the number of steps).

Model size. Fitted on curves of two or more model sizes, ``L0, A, B`` are power laws in
``N`` around the geometric-mean size ``n_ref`` (``L0(N) = L0 (N / n_ref)^(-g_l0)``, the
same for ``A`` and ``B``) and the law predicts any ``N``; fitted on one size it predicts
only that size (InputError otherwise), since the size exponents are then unknown.

Escape term. Time near or past the stability edge leaves an excess ``m(t)`` that relaxes
at rate ``kappa_esc`` towards ``(eta/eta_ref)^4``; with ``k_esc > 0`` the final loss is
U-shaped in the peak LR (more area helps, too high a peak hurts). The term is only
identifiable when the fitting curves use different peak LRs (at least a factor 1.25
apart); otherwise it is off (``k_esc = 0``, not a fitted parameter). Too short a warmup
is not modelled separately.

Fitting: Huber (delta 1e-3) on log-loss through the shared harness
(:func:`~optuna_optlaws.laws._fitting.fit_least_squares`), several seeded starts, a
Laplace posterior and a leave-one-curve-out model discrepancy added to every predictive
interval; ``predict(..., observed=prefix)`` conditions on the run's own prefix with
:func:`~optuna_optlaws.laws._fitting.condition_on_prefix`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from optuna_optlaws._errors import InputError
from optuna_optlaws.curves import Curve
from optuna_optlaws.laws import _optlaw_dynamics as dyn
from optuna_optlaws.laws._base import Law, Prediction
from optuna_optlaws.laws._features import check_steps, observations
from optuna_optlaws.laws._fitting import (
    Param,
    ParamSpace,
    Posterior,
    condition_on_prefix,
    fit_least_squares,
    loco_discrepancy,
    predictive,
)
from optuna_optlaws.schedules import Schedule

FloatArray = NDArray[np.float64]
_L = TypeVar("_L", bound="OptLaw")

ESCAPE_POWER = 4.0
"""Steepness of the escape excess in the LR: its equilibrium is ``(eta/eta_ref)^4``."""

_STATE_VERSION = 2

_PREFIX_WINDOW = 0.2
"""Conditioning on a prefix estimates the run's offset from its last 20% of steps."""
_PREFIX_MIN_POINTS = 3

SIZE_FORMS = ("single", "power", "entropy")
"""The model-size forms of ``L0(N)``; see :class:`_Terms`."""


@dataclass(frozen=True)
class _Terms:
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
        return ParamSpace(ps)

    def to_state(self) -> dict[str, Any]:
        return {
            "eta_ref": self.eta_ref,
            "sizes": list(self.sizes),
            "escape": self.escape,
            "size_form": self.size_form,
            "area_max": self.area_max,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> _Terms:
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
        return cls(eta_ref=eta_ref, sizes=sizes, escape=bool(state["escape"]), size_form=form, area_max=area_max)


class _Theta:
    """Named view of a natural parameter vector, with the size-dependent amplitudes."""

    def __init__(self, terms: _Terms, names: Sequence[str], theta: FloatArray) -> None:
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


def _loss_at_targets(
    terms: _Terms, space: ParamSpace, thetas: FloatArray, grid: dyn.ChunkGrid, model_size: float | None
) -> FloatArray:
    """Loss (nats) at a grid's target steps under parameter sets ``thetas`` ``(P, p)``: ``(T, P)``."""
    n_p = thetas.shape[0]
    pars = [_Theta(terms, space.names, t) for t in thetas]
    amps = np.array([p.amplitudes(model_size) for p in pars])  # (P, 3)
    col = {k: np.array([p[k] for p in pars]) for k in ("s_w", "phi", "beta", "c_cut")}
    col["eps"] = np.array([p.eps(model_size) for p in pars])
    col["alpha"] = np.array([p.alpha(model_size) for p in pars])
    eta = grid.eta[:, None]
    with np.errstate(divide="ignore"):
        base = np.where(eta > 0, np.power(np.maximum(eta, 1e-300), col["phi"][None, :]), 0.0)
    riv_mid = amps[None, :, 1] * np.power(grid.s_mid[:, None] + col["s_w"][None, :], -col["alpha"][None, :])
    target = base * (1.0 + col["eps"][None, :] * riv_mid)
    weights = np.stack([dyn.spectrum_weights(b, c) for b, c in zip(col["beta"], col["c_cut"], strict=True)])
    noise = dyn.simulate(grid.area, target, weights, dyn.KAPPA)[grid.target_chunk]
    s_t = grid.s_target[:, None]
    river = amps[None, :, 1] * np.power(s_t + col["s_w"][None, :], -col["alpha"][None, :])
    loss = amps[None, :, 0] + river + amps[None, :, 2] * noise
    if terms.escape:
        k_esc = np.array([p["k_esc"] for p in pars])
        kap = np.array([p["kappa_esc"] for p in pars])[:, None]
        tgt = np.repeat(np.power(grid.eta, ESCAPE_POWER)[:, None], n_p, axis=1)
        esc = dyn.simulate(grid.area, tgt, np.ones((n_p, 1)), kap)[grid.target_chunk]
        loss = loss + k_esc[None, :] * esc
    return np.asarray(loss, dtype=np.float64)


def _loss_final(
    terms: _Terms,
    space: ParamSpace,
    thetas: FloatArray,
    batch: dyn.GridBatch,
    kern: FloatArray,
    model_size: float | None,
) -> FloatArray:
    """Final loss (nats) of the candidates of ``batch`` under parameter sets ``thetas``: ``(P, C)``.

    ``kern``: :func:`~._optlaw_dynamics.final_kernel` of the batch."""
    out = np.empty((thetas.shape[0], batch.area.shape[1]))
    for i, theta in enumerate(thetas):
        p = _Theta(terms, space.names, theta)
        l0, amp, bb = p.amplitudes(model_size)
        alpha = p.alpha(model_size)
        target = dyn.noise_target(
            batch.eta, batch.s_mid, phi=p["phi"], eps=p.eps(model_size), amp=amp, alpha=alpha, s_w=p["s_w"]
        )
        noise = np.einsum("mcj,j,mc->c", kern, dyn.spectrum_weights(p["beta"], p["c_cut"]), target, optimize=True)
        loss = l0 + dyn.river(batch.s_final, amp, alpha, p["s_w"]) + bb * noise
        if terms.escape and p["k_esc"] > 0:
            ek = dyn.final_kernel(batch, np.array([p["kappa_esc"]]))[:, :, 0]
            loss = loss + p["k_esc"] * np.sum(ek * np.power(batch.eta, ESCAPE_POWER), axis=0)
        out[i] = loss
    return out


def _fd_thetas(post: Posterior) -> tuple[FloatArray, FloatArray]:
    """The optimum and ``p`` forward-perturbed parameter sets (natural, ``(p+1, p)``), and
    the internal-coordinate steps."""
    z = post.z
    p = z.size
    _, hi = post.space.bounds_internal()
    h = 1e-6 * np.maximum(1.0, np.abs(z))
    h = np.where(z + h > hi, -h, h)
    zs = np.repeat(z[None, :], p + 1, axis=0)
    zs[np.arange(1, p + 1), np.arange(p)] += h
    return post.space.to_natural(zs), h


def _log_jac(loss: FloatArray, h: FloatArray, post: Posterior) -> FloatArray:
    """``d log L / d theta`` (natural) from losses ``(T, p+1)`` at :func:`_fd_thetas`."""
    with np.errstate(invalid="ignore", divide="ignore"):
        logl = np.log(loss)
    dz = (logl[:, 1:] - logl[:, :1]) / h[None, :]
    return np.asarray(dz / post.space.dtheta_dz(post.theta)[None, :], dtype=np.float64)


class OptLaw(Law):
    """The Opt-Law (default law): convergence + multiplicative-noise modes + escape term,
    with model-size terms; see the module docstring."""

    name = "optlaw"
    uses_model_size = True

    huber_delta: float = 1e-3
    """Huber scale on log-loss residuals (nats)."""
    total_fit_points: int = 1200
    """Budget of fitted points over all curves (each curve keeps at least 24)."""
    loco_folds: int = 6
    """Most leave-one-curve-out refits for the model discrepancy (curves spread evenly)."""

    def __init__(self, *, n_random: int = 3, fit_points: int = 96, max_nfev: int = 200, loco: bool = True) -> None:
        """``n_random``: random starts besides the default one; ``fit_points``: at most this
        many points per curve are fitted (evenly spread, the last one always);
        ``loco``: estimate the model discrepancy by leave-one-curve-out refits."""
        super().__init__()
        self.n_random = int(n_random)
        self.fit_points = int(fit_points)
        self.max_nfev = int(max_nfev)
        self.loco = bool(loco)
        self._terms: _Terms | None = None
        self._space: ParamSpace | None = None
        self._members: list[tuple[_Terms, Posterior]] = []
        """The fitted size forms (one, or ``power`` and ``entropy`` when fitted on
        several sizes): predictions mix them with equal weights."""
        self.lineage: dict[str, Schedule] = {}
        """Whole-history schedule of every run fitted on (a continued run's parent part
        included), by run id: :meth:`predict_curve` continues from these. Not saved in the
        law file; :meth:`add_lineage` registers more."""
        self.posterior: Posterior | None = None
        """Laplace posterior of the last fit (None before fitting)."""

    # ------------------------------------------------------------------ fitting
    def fit(self: _L, curves: Sequence[Curve], *, seed: int = 0) -> _L:
        """Fit on the finite losses of ``curves`` after each curve's warmup; returns ``self``."""
        where = f"fit {self.name}"
        given = list(curves)
        curves = _resolve_lineage(given, where)
        self.lineage = {c.run_id: c.schedule for c in curves}
        obs = observations(curves, where=where)
        base = _terms_for(curves, where)
        prepared = []
        per_curve = max(24, min(self.fit_points, self.total_fit_points // max(len(curves), 1)))
        for c, sl in zip(obs.curves, obs.slices(), strict=True):
            steps, losses = obs.steps[sl], obs.losses[sl]
            steps, losses = _fit_points(c, steps, losses, per_curve)
            if steps.size == 0:
                continue
            grid = dyn.chunk_grid(c.schedule, steps, eta_ref=base.eta_ref, max_chunks=128)
            kern = dyn.relaxation_kernel(grid, dyn.KAPPA)
            prepared.append((c, grid, kern, np.log(losses)))
        if not prepared:
            ids = ", ".join(c.run_id for c in curves[:5])
            raise InputError(f"{where}: no finite loss after the warmup in runs {ids}")
        log_y = np.concatenate([p[3] for p in prepared])
        groups = np.concatenate([np.full(p[3].size, i, dtype=np.int64) for i, p in enumerate(prepared)])
        area_max = max(float(grid.s_target[-1]) for _, grid, _, _ in prepared)
        forms = ("power", "entropy") if len(base.sizes) >= 2 else ("single",)
        self._members = []
        infos = []
        for form in forms:
            terms = replace(base, size_form=form, area_max=area_max)
            post, info = self._fit_form(terms, prepared, log_y, groups, seed, where)
            self._members.append((terms, post))
            infos.append({**info, "size_form": form, "params": post.space.as_dict(post.theta)})
        self._terms, self.posterior = self._members[0]
        self._space = self.posterior.space
        self._record_fitted_on(given)
        self.fit_info = {**infos[0], "terms": base.to_state(), "members": infos}
        return self

    def _fit_form(
        self,
        terms: _Terms,
        prepared: list[tuple[Curve, dyn.ChunkGrid, FloatArray, FloatArray]],
        log_y: FloatArray,
        groups: NDArray[np.int64],
        seed: int,
        where: str,
    ) -> tuple[Posterior, dict[str, Any]]:
        """Fit one size form on prepared curves; its posterior (with LOCO discrepancy) and diagnostics."""
        space = terms.space()
        names = space.names
        w_cache: dict[tuple[float, float], list[FloatArray]] = {}

        def predict_all(theta: FloatArray) -> FloatArray:
            p = _Theta(terms, names, theta)
            key = (p["beta"], p["c_cut"])
            if key not in w_cache:
                if len(w_cache) > 64:
                    w_cache.clear()
                w = dyn.spectrum_weights(*key)
                w_cache[key] = [np.einsum("j,jom->om", w, kern) for _, _, kern, _ in prepared]
            outs = []
            for (c, grid, _, _), wk in zip(prepared, w_cache[key], strict=True):
                l0, amp, bb = p.amplitudes(c.model_size)
                alpha = p.alpha(c.model_size)
                target = dyn.noise_target(
                    grid.eta, grid.s_mid, phi=p["phi"], eps=p.eps(c.model_size), amp=amp, alpha=alpha, s_w=p["s_w"]
                )
                loss = l0 + dyn.river(grid.s_target, amp, alpha, p["s_w"]) + bb * (wk @ target)
                if terms.escape and p["k_esc"] > 0:
                    ek = dyn.relaxation_kernel(grid, np.array([p["kappa_esc"]]))[0]
                    loss = loss + p["k_esc"] * (ek @ np.power(grid.eta, ESCAPE_POWER))
                outs.append(loss)
            return np.concatenate(outs)

        def residuals(theta: FloatArray) -> FloatArray:
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                return np.asarray(log_y - np.log(predict_all(theta)), dtype=np.float64)

        col = {n: i for i, n in enumerate(names)}
        log_kappa = np.log(dyn.KAPPA)

        def jacobian(theta: FloatArray) -> FloatArray:
            """``d residual / d theta`` (natural units), analytic; the escape parameters
            (when fitted) by forward differences."""
            p = _Theta(terms, names, theta)
            w = dyn.spectrum_weights(p["beta"], p["c_cut"])
            dw_beta = w * (log_kappa - w @ log_kappa)
            u = dyn.KAPPA / p["c_cut"] ** 2
            dw_c = w * (u - w @ u)
            rows = []
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                for c, grid, kern, _ in prepared:
                    x = (c.model_size / terms.n_ref) if (terms.multi_size and c.model_size) else 1.0
                    l0, amp, bb = p.amplitudes(c.model_size)
                    alpha = p.alpha(c.model_size)
                    eta = grid.eta
                    base = np.where(eta > 0, np.power(np.maximum(eta, 1e-300), p["phi"]), 0.0)
                    log_eta = np.where(eta > 0, np.log(np.maximum(eta, 1e-300)), 0.0)
                    sm = grid.s_mid + p["s_w"]
                    pm = np.power(sm, -alpha)
                    st = grid.s_target + p["s_w"]
                    pt = np.power(st, -alpha)
                    eps = p.eps(c.model_size)
                    target = base * (1.0 + eps * amp * pm)
                    k_tau = np.einsum("jom,m->jo", kern, target)
                    wk = np.einsum("j,jom->om", w, kern)
                    v = np.stack(
                        [
                            base * eps * pm,  # d target / d A(N)
                            -base * eps * amp * pm * np.log(sm),  # d target / d alpha(N)
                            -base * eps * amp * alpha * pm / sm,  # d target / d s_w
                            target * log_eta,  # d target / d phi
                            base * amp * pm,  # d target / d eps
                        ],
                        axis=1,
                    )
                    wv = wk @ v
                    noise = w @ k_tau
                    loss = l0 + amp * pt + bb * noise
                    d_amp = pt + bb * wv[:, 0]
                    d_alpha = -amp * pt * np.log(st) + bb * wv[:, 1]
                    jac = np.zeros((loss.size, len(names)))
                    jac[:, col["A"]] = d_amp * amp / p["A"]
                    jac[:, col["B"]] = noise * bb / p["B"]
                    jac[:, col["alpha"]] = d_alpha * alpha / p["alpha"]
                    jac[:, col["s_w"]] = -amp * alpha * pt / st + bb * wv[:, 2]
                    jac[:, col["phi"]] = bb * wv[:, 3]
                    jac[:, col["beta"]] = bb * (dw_beta @ k_tau)
                    jac[:, col["c_cut"]] = bb * (dw_c @ k_tau)
                    d_eps = bb * wv[:, 4]
                    lx = math.log(x)
                    if terms.size_form == "entropy":
                        scale = x ** (-p["g_l0"])
                        jac[:, col["E"]] = 1.0
                        jac[:, col["delta"]] = scale - d_eps * eps / p["delta"]
                        jac[:, col["g_l0"]] = -p["delta"] * scale * lx + d_eps * eps * lx
                    else:
                        jac[:, col["L0"]] = l0 / p["L0"]
                        jac[:, col["eps"]] = d_eps
                    if terms.multi_size:
                        if terms.size_form == "power":
                            jac[:, col["g_l0"]] = -l0 * lx
                        jac[:, col["g_a"]] = -d_amp * amp * lx
                        jac[:, col["g_b"]] = -noise * bb * lx
                        jac[:, col["g_alpha"]] = -d_alpha * alpha * lx
                    if terms.escape:
                        ek = dyn.relaxation_kernel(grid, np.array([p["kappa_esc"]]))[0]
                        e4 = np.power(eta, ESCAPE_POWER)
                        esc = ek @ e4
                        loss = loss + p["k_esc"] * esc
                        jac[:, col["k_esc"]] = esc
                        h = 1e-6 * p["kappa_esc"]
                        ek2 = dyn.relaxation_kernel(grid, np.array([p["kappa_esc"] + h]))[0]
                        jac[:, col["kappa_esc"]] = p["k_esc"] * (ek2 @ e4 - esc) / h
                    rows.append(-jac / loss[:, None])
            return np.concatenate(rows)

        start = _default_start(terms, float(np.exp(log_y).min()))
        result = fit_least_squares(
            space, residuals, jacobian=jacobian, starts=[start], n_random=self.n_random, seed=seed,
            huber_delta=self.huber_delta, groups=groups, max_nfev=self.max_nfev, agree=2, label=where,
        )
        if self.loco and len(prepared) >= 2:
            result.posterior.model_sd = loco_discrepancy(
                space, result.theta, _loco_folds(residuals, groups, self.loco_folds), noise=result.posterior.noise,
                huber_delta=self.huber_delta,
            )
        return result.posterior, result.info()

    # ------------------------------------------------------------------ prediction
    @property
    def is_fitted(self) -> bool:
        """Whether the law has parameters."""
        return self.posterior is not None

    @property
    def params(self) -> dict[str, float]:
        """Fitted parameters by name (natural units; areas in units of 1000 steps at ``eta_ref``)."""
        post = self._post()
        return post.space.as_dict(post.theta)

    def _post(self) -> Posterior:
        if self.posterior is None or self._terms is None:
            raise InputError(f"law {self.name!r} is not fitted; call fit() or load a law file first")
        return self.posterior

    def check_sizes(self, model_size: float | None, where: str = "") -> None:
        """InputError unless the law can predict ``model_size``: any size when fitted on
        two or more sizes (then a size is required), else only the fitted one."""
        place = f"{where}: " if where else ""
        terms = self._terms
        if terms is not None and terms.multi_size:
            if model_size is None:
                raise InputError(
                    f"{place}law {self.name!r} was fitted on model sizes "
                    f"{', '.join(f'{s:g}' for s in terms.sizes)}: give the model_size to predict"
                )
            if not (math.isfinite(model_size) and model_size > 0):
                raise InputError(f"{place}model_size={model_size!r} must be a finite number > 0")
            return
        if model_size is None or terms is None or not terms.sizes:
            return
        if not math.isclose(model_size, terms.sizes[0], rel_tol=1e-6):
            raise InputError(
                f"{place}law {self.name!r} was fitted on one model size ({terms.sizes[0]:g}), so its "
                f"model-size term is not identified: cannot extrapolate to model_size={model_size:g}; "
                "fit it on curves of two or more sizes"
            )

    def _check_tokens(self, tokens_per_step: float | None, where: str) -> None:
        if tokens_per_step is None:
            return
        fitted = sorted(float(r["tokens_per_step"]) for r in self.fitted_on if r.get("tokens_per_step") is not None)
        if fitted and not any(math.isclose(tokens_per_step, t, rel_tol=1e-6) for t in fitted):
            raise InputError(
                f"{where}: law {self.name!r} has no batch-size term: fitted on tokens_per_step "
                f"{fitted}, cannot predict tokens_per_step={tokens_per_step:g}"
            )

    def _interval(self, post: Posterior, mean: FloatArray, log_jac: FloatArray) -> Prediction:
        """Predictive interval from the mean loss and ``d log L / d theta`` (harness delta method)."""
        return predictive(
            post,
            lambda theta: np.asarray(np.log(mean), dtype=np.float64),
            predict_log_jac=lambda theta: log_jac,
            level=self.interval_level,
        )

    def _widen(self, pred: Prediction, area: FloatArray, terms: _Terms, post: Posterior) -> Prediction:
        """Add the model discrepancy's growth beyond the fitted LR area: variance
        ``model_sd^2 * (area / area_max - 1)`` for targets past the largest fitted area
        (the law's error on an unseen schedule grows with how far it extrapolates)."""
        if post.model_sd <= 0 or terms.area_max <= 0:
            return pred
        extra = post.model_sd**2 * np.maximum(area / terms.area_max - 1.0, 0.0)
        if not np.any(extra > 0):
            return pred
        zq = float(stats.norm.ppf(0.5 + self.interval_level / 2.0))
        m = np.log(pred.mean)
        sd0 = (np.log(pred.hi) - np.log(pred.lo)) / (2.0 * zq)
        half = zq * np.sqrt(sd0**2 + extra)
        return Prediction(pred.mean, np.exp(m - half), np.exp(m + half))

    def _mix(self, preds: Sequence[Prediction]) -> Prediction:
        """Equal-weight mixture of the size forms' predictions (moments in log-loss): the
        forms' disagreement, which grows as ``N`` leaves the fitted sizes, widens the interval."""
        if len(preds) == 1:
            return preds[0]
        zq = float(stats.norm.ppf(0.5 + self.interval_level / 2.0))
        m = np.stack([np.log(p.mean) for p in preds])
        sd = np.stack([(np.log(p.hi) - np.log(p.lo)) / (2.0 * zq) for p in preds])
        mean = m.mean(axis=0)
        half = zq * np.sqrt(np.mean(sd**2, axis=0) + np.mean((m - mean) ** 2, axis=0))
        return Prediction(np.exp(mean), np.exp(mean - half), np.exp(mean + half))

    def _check_predict(self, model_size: float | None, tokens_per_step: float | None) -> _Terms:
        self._post()
        where = f"predict {self.name}"
        self.check_sizes(model_size, where=where)
        self._check_tokens(tokens_per_step, where)
        assert self._terms is not None
        return self._terms

    def predict(
        self,
        schedule: Schedule,
        steps: ArrayLike | None = None,
        *,
        model_size: float | None = None,
        tokens_per_step: float | None = None,
        observed: Curve | None = None,
    ) -> Prediction:
        """Loss (nats) of ``schedule`` at ``steps`` (default its last step) with a central
        90% interval; conditioned on the run's own prefix ``observed`` when given."""
        terms = self._check_predict(model_size, tokens_per_step)
        st = check_steps(steps, schedule, where=f"predict {self.name}")
        if st.size == 0:
            empty = np.zeros(0)
            return Prediction(empty, empty.copy(), empty.copy())
        p_steps = np.zeros(0, dtype=np.int64)
        p_losses = np.zeros(0)
        if observed is not None and observed.steps.size:
            ok = np.isfinite(observed.losses) & (observed.losses > 0)
            p_steps, p_losses = observed.steps[ok], observed.losses[ok]
            if p_steps.size:
                # conditioning reads only the recent window of the prefix: predict just there
                recent = p_steps >= p_steps.max() * (1.0 - _PREFIX_WINDOW)
                recent[-_PREFIX_MIN_POINTS:] = True
                p_steps, p_losses = p_steps[recent], p_losses[recent]
        grid = dyn.chunk_grid(schedule, np.concatenate([st, p_steps]), eta_ref=terms.eta_ref)
        preds, prefix_log = [], []
        for m_terms, post in self._members:
            thetas, h = _fd_thetas(post)
            loss = _loss_at_targets(m_terms, post.space, thetas, grid, model_size)
            pred_m = self._interval(post, loss[: st.size, 0], _log_jac(loss[: st.size], h, post))
            preds.append(self._widen(pred_m, grid.s_target[: st.size], m_terms, post))
            prefix_log.append(np.log(loss[st.size :, 0]))
        pred = self._mix(preds)
        if p_steps.size:
            pred = condition_on_prefix(
                pred, st, p_steps, p_losses, np.exp(np.mean(prefix_log, axis=0)),
                noise=self._post().noise, level=self.interval_level, window=_PREFIX_WINDOW,
                min_points=_PREFIX_MIN_POINTS,
            )
        return pred

    def add_lineage(self, curves: Sequence[Curve]) -> None:
        """Register runs (and their own parents, given in the same list or already known)
        that later continued runs may resume from."""
        known = [Curve(rid, sched) for rid, sched in self.lineage.items() if rid not in {c.run_id for c in curves}]
        for c in _resolve_lineage([*known, *curves], f"{self.name} lineage"):
            self.lineage[c.run_id] = c.schedule

    def predict_curve(self, curve: Curve, *, observed: Curve | None = None) -> Prediction:
        """Predicted loss at every observed step of ``curve``. A continued run
        (``resume_from``) starts from its parent's state at ``resume_step``: its parent
        must be a fitted run or registered with :meth:`add_lineage`."""
        if curve.resume_from is None:
            return super().predict_curve(curve, observed=observed)
        parent = self.lineage.get(curve.resume_from)
        if parent is None:
            raise InputError(
                f"predict {self.name}: run {curve.run_id!r} resumes from {curve.resume_from!r}, which the law "
                "does not know; fit on it or register it with add_lineage()"
            )
        sched, offset = _continued(parent, int(curve.resume_step or 0), curve.schedule)
        shifted = None
        if observed is not None:
            shifted = replace(observed, schedule=sched, steps=observed.steps + offset, resume_from=None)
        return self.predict(
            sched, curve.steps + offset, model_size=curve.model_size, tokens_per_step=curve.tokens_per_step,
            observed=shifted,
        )

    def predict_final(
        self,
        schedules: Sequence[Schedule],
        *,
        model_size: float | None = None,
        tokens_per_step: float | None = None,
    ) -> Prediction:
        """Predicted final loss of many schedules at once (vectorised over schedules)."""
        terms = self._check_predict(model_size, tokens_per_step)
        if len(schedules) == 0:
            empty = np.zeros(0)
            return Prediction(empty, empty.copy(), empty.copy())
        grids = [dyn.chunk_grid(s, np.array([s.total_steps - 1]), eta_ref=terms.eta_ref) for s in schedules]
        batch = dyn.stack_grids(grids)
        kern = dyn.final_kernel(batch, dyn.KAPPA)
        preds = []
        for m_terms, post in self._members:
            thetas, h = _fd_thetas(post)
            loss = _loss_final(m_terms, post.space, thetas, batch, kern, model_size).T  # (C, p+1)
            pred_m = self._interval(post, loss[:, 0], _log_jac(loss, h, post))
            preds.append(self._widen(pred_m, batch.s_final, m_terms, post))
        return self._mix(preds)

    # ------------------------------------------------------------------ law file
    def _state(self) -> dict[str, Any]:
        self._post()
        return {
            "version": _STATE_VERSION,
            "members": [
                {"terms": t.to_state(), "values": p.space.as_dict(p.theta), "posterior": p.to_state()}
                for t, p in self._members
            ],
        }

    def _load_state(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping):
            raise ValueError("params must be a JSON object")
        if int(state.get("version", 0)) != _STATE_VERSION:
            raise ValueError(f"optlaw parameters version {state.get('version')!r}, expected {_STATE_VERSION}")
        members = []
        for m in state["members"]:
            terms = _Terms.from_state(m["terms"])
            space = terms.space()
            post = Posterior.from_state(space, m["posterior"])
            theta = space.from_mapping(m["values"])
            if not np.allclose(theta, post.theta, rtol=1e-9, atol=0):
                raise ValueError("'values' disagree with 'posterior'")
            members.append((terms, post))
        if not members:
            raise ValueError("no fitted members")
        self._members = members
        self._terms, self.posterior = members[0]
        self._space = self.posterior.space


# ---------------------------------------------------------------------- helpers
def _continued(parent: Schedule, resume_step: int, child: Schedule) -> tuple[Schedule, int]:
    """The whole-history schedule of a run that starts from its parent's weights after
    the parent's step ``resume_step`` and then follows ``child`` (its own steps from 0),
    and the offset that maps the child's steps to whole-history steps."""
    head = parent.truncated(resume_step + 1)
    tail = child.truncated(child.total_steps)
    offset = resume_step + 1
    hs, hv = np.asarray(head.params["steps"]), np.asarray(head.params["lrs"])
    ts, tv = np.asarray(tail.params["steps"]) + offset, np.asarray(tail.params["lrs"])
    return Schedule.from_knots(np.concatenate([hs, ts]), np.concatenate([hv, tv])), offset


def _resolve_lineage(curves: Sequence[Curve], where: str) -> list[Curve]:
    """Curves with every continued run (``resume_from``) rewritten on its whole-history
    schedule and steps; its parent must be among ``curves``."""
    by_id = {c.run_id: c for c in curves}
    done: dict[str, Curve] = {}

    def resolve(c: Curve, depth: int = 0) -> Curve:
        if c.run_id in done:
            return done[c.run_id]
        if c.resume_from is None:
            out = c
        else:
            if depth > len(curves) or c.resume_from == c.run_id:
                raise InputError(f"{where}: run {c.run_id!r} has a cycle of resume_from")
            if c.resume_from not in by_id:
                raise InputError(
                    f"{where}: run {c.run_id!r} resumes from {c.resume_from!r}, which is not among the curves"
                )
            parent = resolve(by_id[c.resume_from], depth + 1)
            sched, offset = _continued(parent.schedule, int(c.resume_step or 0), c.schedule)
            out = replace(c, schedule=sched, steps=c.steps + offset, resume_from=None, resume_step=None)
        done[c.run_id] = out
        return out

    return [resolve(c) for c in curves]


def _terms_for(curves: Sequence[Curve], where: str) -> _Terms:
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
    return _Terms(eta_ref=float(positive.max()), sizes=tuple(sizes), escape=escape)


def _fit_points(
    curve: Curve, steps: NDArray[np.int64], losses: FloatArray, most: int
) -> tuple[NDArray[np.int64], FloatArray]:
    """The points of a curve the fit uses: after the warmup (and the first 3% of the run,
    the initial transient the law does not describe), at most ``most``, evenly spread."""
    sched = curve.schedule
    peak = sched.peak_lr
    first_peak = 0
    if peak > 0:
        probe = np.unique(np.concatenate([sched.breakpoints(), [0.0]]))
        lr = sched.lr_at(probe)
        reach = probe[lr >= peak * (1 - 1e-9)]
        first_peak = int(reach[0]) if reach.size else 0
    start = max(first_peak, int(0.03 * sched.total_steps))
    keep = steps >= start
    steps, losses = steps[keep], losses[keep]
    if steps.size > most:
        idx = np.unique(np.round(np.linspace(0, steps.size - 1, most)).astype(np.int64))
        steps, losses = steps[idx], losses[idx]
    return steps, losses


def _loco_folds(residuals: Any, groups: NDArray[np.int64], most: int) -> list[tuple[Any, None, Any]]:
    """Leave-one-curve-out folds for :func:`loco_discrepancy`: the other curves' residuals
    and the left-out curve's last quarter (at most ``most`` curves, spread evenly)."""
    folds = []
    uniq = np.unique(groups)
    if uniq.size > most:
        uniq = uniq[np.unique(np.round(np.linspace(0, uniq.size - 1, most)).astype(np.int64))]
    for g in uniq:
        keep = groups != g
        own = np.flatnonzero(~keep)
        late = own[own.size - max(1, own.size // 4) :]
        folds.append(
            (
                lambda theta, keep=keep: residuals(theta)[keep],
                None,
                lambda theta, late=late: residuals(theta)[late],
            )
        )
    return folds


def _default_start(terms: _Terms, min_loss: float) -> list[float]:
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
    return start
