"""The Opt-Law's fitting problem: residuals and their analytic Jacobian over all fitted
points at once.

Every fitted point ``o`` of every curve reads its noise excess through the relaxation
kernel ``K[j, o, m]`` of its curve's chunk grid (:func:`~._optlaw_dynamics.relaxation_kernel`),
padded to one chunk count so that all curves are evaluated together: the mode weights
contract ``K`` once per spectrum (cached), and each point's noise is the product with its
curve's equilibrium targets. Residuals are ``log(observed) - log(predicted)`` (the
harness's convention).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from optuna_optlaws.curves import Curve, evenly_spaced
from optuna_optlaws.laws import _optlaw_dynamics as dyn
from optuna_optlaws.laws._optlaw_terms import Terms, Theta, escape_target, held_power, instability_target
from optuna_optlaws.schedules import Schedule

FloatArray = NDArray[np.float64]


class FitProblem:
    """The fitted points of several curves, ready for repeated evaluation."""

    def __init__(
        self, terms: Terms, curves: Sequence[Curve], grids: Sequence[dyn.ChunkGrid], log_y: FloatArray
    ) -> None:
        self.terms = terms
        self.names = terms.space().names
        self.col = {n: i for i, n in enumerate(self.names)}
        self.grids = list(grids)
        self.log_y = log_y
        n_c = len(grids)
        m_max = max(g.area.size for g in grids)
        counts = [g.target_chunk.size for g in grids]
        self.curve_of = np.repeat(np.arange(n_c), counts)
        n_o = int(sum(counts))
        kern = np.zeros((dyn.KAPPA.size, n_o, m_max))
        self.eta = np.zeros((n_c, m_max))
        self.s_mid = np.ones((n_c, m_max))
        self.s_target = np.empty(n_o)
        o = 0
        for i, g in enumerate(grids):
            m, t = g.area.size, g.target_chunk.size
            kern[:, o : o + t, :m] = dyn.relaxation_kernel(g, dyn.KAPPA)
            self.eta[i, :m] = g.eta
            self.s_mid[i, :m] = g.s_mid
            self.s_target[o : o + t] = g.s_target
            o += t
        self.kern = kern
        self.kern_flat = kern.reshape(kern.shape[0], -1)
        with np.errstate(divide="ignore"):
            self.log_eta = np.where(self.eta > 0, np.log(np.maximum(self.eta, 1e-300)), 0.0)
        n_ref = terms.n_ref
        sizes = np.array([c.model_size if (terms.multi_size and c.model_size) else n_ref for c in curves])
        self.log_x = np.log(sizes / n_ref)
        self._w_key: tuple[float, float] | None = None
        self._w_kern: FloatArray = np.zeros(0)

    def _weighted_kernel(self, beta: float, c_cut: float) -> FloatArray:
        """``sum_j w_j K[j]`` flattened to ``(points, chunks)``, cached for the last spectrum."""
        if self._w_key != (beta, c_cut):
            w = dyn.spectrum_weights(beta, c_cut)
            self._w_kern = (w @ self.kern_flat).reshape(self.kern.shape[1:])
            self._w_key = (beta, c_cut)
        return self._w_kern

    def _size_terms(self, p: Theta) -> dict[str, FloatArray]:
        """Per-curve ``L0, A, B, alpha, eps`` and the size scale of ``L0``'s reducible part."""
        lx = self.log_x
        terms = self.terms
        if not terms.multi_size:
            one = np.ones_like(lx)
            return {"l0": p["L0"] * one, "amp": p["A"] * one, "bb": p["B"] * one, "alpha": p["alpha"] * one,
                    "eps": p["eps"] * one, "scale": one}
        scale = np.exp(-p["g_l0"] * lx)
        out = {
            "amp": p["A"] * np.exp(-p["g_a"] * lx),
            "bb": p["B"] * np.exp(-p["g_b"] * lx),
            "alpha": p["alpha"] * np.exp(-p["g_alpha"] * lx),
            "scale": scale,
        }
        if terms.size_form == "power":
            out["l0"] = p["L0"] * scale
            out["eps"] = p["eps"] * np.ones_like(lx)
        else:
            out["l0"] = p["E"] + p["delta"] * scale
            out["eps"] = 1.0 / (p["delta"] * scale)
        return out

    def _parts(self, theta: FloatArray) -> tuple[Theta, dict[str, FloatArray], FloatArray, FloatArray, FloatArray]:
        p = Theta(self.terms, self.names, theta)
        st = self._size_terms(p)
        base = np.where(self.eta > 0, np.exp(p["phi"] * self.log_eta), 0.0)
        pm = np.power(self.s_mid + p["s_w"], -st["alpha"][:, None])
        target = base * (1.0 + (st["eps"] * st["amp"])[:, None] * pm)
        return p, st, base, pm, target

    def loss(self, theta: FloatArray) -> FloatArray:
        """Predicted loss (nats) at every fitted point."""
        p, st, _, _, target = self._parts(theta)
        ci = self.curve_of
        wk = self._weighted_kernel(p["beta"], p["c_cut"])
        noise = np.einsum("om,om->o", wk, target[ci])
        pt = np.power(self.s_target + p["s_w"], -st["alpha"][ci])
        loss = st["l0"][ci] + st["amp"][ci] * pt + st["bb"][ci] * noise
        if self.terms.escape and p["k_esc"] > 0:
            loss = loss + p["k_esc"] * self._escape(p["kappa_esc"])
        if self.terms.fast and p["k_fast"] > 0:
            loss = loss + p["k_fast"] * self._fast(p["kappa_fast"], p["p_fast"])[0]
        if self.terms.warmup and p["k_warm"] > 0:
            loss = loss + p["k_warm"] * self._instability(p["kappa_warm"], p["s_edge"])[0]
        return np.asarray(loss, dtype=np.float64)

    def _relaxed(self, kappa: float, *targets: Callable[[dyn.ChunkGrid], FloatArray]) -> list[FloatArray]:
        """At every fitted point, an excess that relaxes at rate ``kappa`` (per area unit)
        towards each of ``targets(grid)`` (one equilibrium per chunk), from zero: one
        array per target, the relaxation kernel computed once for all of them."""
        out: list[list[FloatArray]] = [[] for _ in targets]
        for g in self.grids:
            ek = dyn.relaxation_kernel(g, np.array([kappa]))[0]
            for acc, target in zip(out, targets, strict=True):
                acc.append(ek @ target(g))
        return [np.concatenate(acc) for acc in out]

    def _escape(self, kappa: float) -> FloatArray:
        """The escape excess at every fitted point (per unit ``k_esc``)."""
        return self._relaxed(kappa, lambda g: escape_target(g.eta))[0]

    def _fast(self, kappa: float, *powers: float) -> list[FloatArray]:
        """The fast excess at every fitted point (per unit ``k_fast``), one array per LR power."""
        return self._relaxed(kappa, *(lambda g, pw=pw: held_power(g.eta, pw) for pw in powers))

    def _instability(self, kappa: float, *s_edges: float) -> list[FloatArray]:
        """The early-instability excess at every fitted point (per unit ``k_warm``), one
        array per ``s_edge``."""
        return self._relaxed(kappa, *(lambda g, se=se: instability_target(g.eta, g.s_mid, se) for se in s_edges))

    def residuals(self, theta: FloatArray) -> FloatArray:
        """``log(observed) - log(predicted)`` at every fitted point."""
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            return np.asarray(self.log_y - np.log(self.loss(theta)), dtype=np.float64)

    def jacobian(self, theta: FloatArray) -> FloatArray:
        """``d residual / d theta`` (natural units), analytic; ``kappa_esc``, ``kappa_fast``,
        ``p_fast``, ``kappa_warm`` and ``s_edge`` by forward differences."""
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            loss, grad = self._loss_grad(theta)
            return np.asarray(-grad / loss[:, None], dtype=np.float64)

    def _loss_grad(self, theta: FloatArray) -> tuple[FloatArray, FloatArray]:
        """The predicted loss (nats) at every fitted point and its gradient ``d loss / d
        theta`` (natural units), ``(points,)`` and ``(points, parameters)``, in one pass."""
        p, st, base, pm, target = self._parts(theta)
        ci = self.curve_of
        col = self.col
        log_kappa = np.log(dyn.KAPPA)
        w = dyn.spectrum_weights(p["beta"], p["c_cut"])
        dw_beta = w * (log_kappa - w @ log_kappa)
        u = dyn.KAPPA / p["c_cut"] ** 2
        dw_c = w * (u - w @ u)
        tgt = target[ci]
        k_tau = np.einsum("jom,om->jo", self.kern, tgt)
        wk = self._weighted_kernel(p["beta"], p["c_cut"])
        sm = self.s_mid + p["s_w"]
        eps, amp, alpha = st["eps"][:, None], st["amp"][:, None], st["alpha"][:, None]
        v = np.stack(
            [
                base * eps * pm,  # d target / d A(N)
                -base * eps * amp * pm * np.log(sm),  # d target / d alpha(N)
                -base * eps * amp * alpha * pm / sm,  # d target / d s_w
                target * self.log_eta,  # d target / d phi
                base * amp * pm,  # d target / d eps(N)
            ]
        )
        wv = np.einsum("om,vom->vo", wk, v[:, ci])
        noise = w @ k_tau
        l0, a_o, b_o, al_o = st["l0"][ci], st["amp"][ci], st["bb"][ci], st["alpha"][ci]
        s_t = self.s_target + p["s_w"]
        pt = np.power(s_t, -al_o)
        loss = l0 + a_o * pt + b_o * noise
        d_amp = pt + b_o * wv[0]
        d_alpha = -a_o * pt * np.log(s_t) + b_o * wv[1]
        d_eps = b_o * wv[4]
        jac = np.zeros((loss.size, len(self.names)))
        jac[:, col["A"]] = d_amp * a_o / p["A"]
        jac[:, col["B"]] = noise * b_o / p["B"]
        jac[:, col["alpha"]] = d_alpha * al_o / p["alpha"]
        jac[:, col["s_w"]] = -a_o * al_o * pt / s_t + b_o * wv[2]
        jac[:, col["phi"]] = b_o * wv[3]
        jac[:, col["beta"]] = b_o * (dw_beta @ k_tau)
        jac[:, col["c_cut"]] = b_o * (dw_c @ k_tau)
        lx = self.log_x[ci]
        scale = st["scale"][ci]
        eps_o = st["eps"][ci]
        if self.terms.size_form == "entropy":
            jac[:, col["E"]] = 1.0
            jac[:, col["delta"]] = scale - d_eps * eps_o / p["delta"]
            jac[:, col["g_l0"]] = -p["delta"] * scale * lx + d_eps * eps_o * lx
        else:
            jac[:, col["L0"]] = scale
            jac[:, col["eps"]] = d_eps
        if self.terms.multi_size:
            if self.terms.size_form == "power":
                jac[:, col["g_l0"]] = -l0 * lx
            jac[:, col["g_a"]] = -d_amp * a_o * lx
            jac[:, col["g_b"]] = -noise * b_o * lx
            jac[:, col["g_alpha"]] = -d_alpha * al_o * lx
        if self.terms.escape:
            esc = self._escape(p["kappa_esc"])
            loss = loss + p["k_esc"] * esc
            jac[:, col["k_esc"]] = esc
            h = 1e-6 * p["kappa_esc"]
            jac[:, col["kappa_esc"]] = p["k_esc"] * (self._escape(p["kappa_esc"] + h) - esc) / h
        if self.terms.fast:
            kf, pf = p["kappa_fast"], p["p_fast"]
            hk, hp = 1e-6 * kf, 1e-6 * max(pf, 1.0)
            fast, fast_hp = self._fast(kf, pf, pf + hp)
            loss = loss + p["k_fast"] * fast
            jac[:, col["k_fast"]] = fast
            jac[:, col["kappa_fast"]] = p["k_fast"] * (self._fast(kf + hk, pf)[0] - fast) / hk
            jac[:, col["p_fast"]] = p["k_fast"] * (fast_hp - fast) / hp
        if self.terms.warmup:
            kw, se = p["kappa_warm"], p["s_edge"]
            hk, hs = 1e-6 * kw, 1e-6 * se
            inst, inst_hs = self._instability(kw, se, se + hs)
            loss = loss + p["k_warm"] * inst
            jac[:, col["k_warm"]] = inst
            jac[:, col["kappa_warm"]] = p["k_warm"] * (self._instability(kw + hk, se)[0] - inst) / hk
            jac[:, col["s_edge"]] = p["k_warm"] * (inst_hs - inst) / hs
        return np.asarray(loss, dtype=np.float64), jac


TRANSIENT_FRACTION = 0.1
"""The fit skips each curve's first 10% of steps (the initial transient, where the
quadratic picture behind the law is poor)."""

HUBER_EFFICIENCY = 1.345
"""Huber scale in units of the point noise (95% efficiency for Gaussian noise)."""


def transient_end(schedule: Schedule, transient: float = TRANSIENT_FRACTION) -> int:
    """The first step past a run's warmup and its first ``transient`` of steps: the initial
    transient the law does not describe."""
    return max(schedule.peak_reached_at(), int(transient * schedule.total_steps))


def fit_points(
    curve: Curve, steps: NDArray[np.int64], losses: FloatArray, most: int, transient: float = TRANSIENT_FRACTION
) -> tuple[NDArray[np.int64], FloatArray]:
    """The points of a curve the fit uses: from :func:`transient_end` on, at most ``most``,
    evenly spread."""
    keep = steps >= transient_end(curve.schedule, transient)
    steps, losses = steps[keep], losses[keep]
    if steps.size > most:
        idx = evenly_spaced(steps.size, most)
        steps, losses = steps[idx], losses[idx]
    return steps, losses


def log_point_noise(log_y: FloatArray, groups: NDArray[np.int64]) -> float:
    """Robust per-point noise of the fitted log-losses (log-loss units): per curve the
    scaled median absolute deviation of second differences over ``sqrt(6)`` (a smooth
    curve's second differences are its noise's), median over curves; 0 when no curve has
    four points."""
    sds = []
    for g in np.unique(groups):
        d = np.diff(log_y[groups == g], 2)
        if d.size >= 2:
            sds.append(1.4826 * float(np.median(np.abs(d - np.median(d)))) / np.sqrt(6.0))
    return float(np.median(sds)) if sds else 0.0


def _late(own: NDArray[np.intp]) -> NDArray[np.intp]:
    """The last quarter (at least one) of a curve's point indices."""
    return own[own.size - max(1, own.size // 4) :]


def loco_folds(
    residuals: Any, jacobian: Any, groups: NDArray[np.int64], most: int
) -> list[tuple[Any, Any, Any]]:
    """Folds for :func:`loco_discrepancy`: leave one curve out (at most ``most`` curves,
    spread evenly): the other curves' residuals and Jacobian rows, and the left-out
    curve's last quarter. A single curve has one fold instead: fit its first three
    quarters, predict its last quarter (the error of extrapolating in time; on several
    curves such a fold was not better calibrated than leaving curves out). Residuals of a
    negative group (a prior's) are kept in every fold."""
    folds = []
    uniq = np.unique(groups[groups >= 0])
    if uniq.size > most:
        uniq = uniq[evenly_spaced(uniq.size, most)]
    masks = [(groups != g, _late(np.flatnonzero(groups == g))) for g in uniq]
    if uniq.size == 1:
        late = _late(np.flatnonzero(groups >= 0))
        keep = np.ones(groups.size, dtype=bool)
        keep[late] = False
        masks = [(keep, late)]
    for keep, late in masks:
        folds.append(
            (
                lambda theta, keep=keep: residuals(theta)[keep],
                lambda theta, keep=keep: jacobian(theta)[keep],
                lambda theta, late=late: residuals(theta)[late],
            )
        )
    return folds
