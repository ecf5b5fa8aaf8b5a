"""Opt-Law predictions for given parameter sets: the loss at a schedule's target steps
(one chunked pass per parameter set) and the final loss of many schedules (one kernel
contraction), plus the forward-difference parameter sets the delta-method interval uses."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from optuna_optlaws.laws import _optlaw_dynamics as dyn
from optuna_optlaws.laws._fitting import ParamSpace, Posterior
from optuna_optlaws.laws._optlaw_terms import (
    Terms,
    Theta,
    escape_target,
    held_power,
    instability_target,
    shift_excess,
)

FloatArray = NDArray[np.float64]


def loss_at_targets(
    terms: Terms, space: ParamSpace, thetas: FloatArray, grid: dyn.ChunkGrid, model_size: float | None,
    resume_area: float | None = None,
) -> FloatArray:
    """Loss (nats) at a grid's target steps under parameter sets ``thetas`` ``(P, p)``: ``(T, P)``.

    ``resume_area``: for a continued run, the LR area before its resume (area units):
    adds the data-shift excess when ``terms`` has one (:mod:`._optlaw_lineage`)."""
    n_p = thetas.shape[0]
    pars = [Theta(terms, space.names, t) for t in thetas]
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
    systems = [(target, weights, dyn.KAPPA)]

    # the excesses (amp * m, m relaxing at rate towards its target: one equilibrium per
    # chunk and parameter set), every excess and parameter set in one pass, stepped
    # together with the noise modes
    excesses: list[tuple[str, str, FloatArray]] = []
    if terms.escape:
        excesses.append(("k_esc", "kappa_esc", np.repeat(escape_target(grid.eta)[:, None], n_p, axis=1)))
    if terms.fast:
        p_fast = np.array([p["p_fast"] for p in pars])
        excesses.append(("k_fast", "kappa_fast", held_power(grid.eta[:, None], p_fast[None, :])))
    if terms.warmup:
        s_edge = np.array([p["s_edge"] for p in pars])
        excesses.append(("k_warm", "kappa_warm", instability_target(grid.eta[:, None], grid.s_mid[:, None], s_edge)))
    if excesses:
        kap = np.concatenate([[p[rate] for p in pars] for _, rate, _ in excesses])[:, None]
        targets = np.hstack([tgt for _, _, tgt in excesses])
        systems.append((targets, np.ones((kap.size, 1)), kap))
    states = [part[grid.target_chunk] for part in dyn.simulate_many(grid.area, systems)]
    noise = states[0]
    s_t = grid.s_target[:, None]
    river = amps[None, :, 1] * np.power(s_t + col["s_w"][None, :], -col["alpha"][None, :])
    loss = amps[None, :, 0] + river + amps[None, :, 2] * noise
    if excesses:
        m = states[1]
        amp = np.concatenate([[p[a] for p in pars] for a, _, _ in excesses])
        loss = loss + (amp[None, :] * m).reshape(m.shape[0], len(excesses), n_p).sum(axis=1)
    if terms.shift and resume_area is not None:
        since = grid.s_target - resume_area
        loss = loss + np.stack([shift_excess(p, since) for p in pars], axis=1)
    return np.asarray(loss, dtype=np.float64)


def loss_final(
    terms: Terms,
    space: ParamSpace,
    thetas: FloatArray,
    batch: dyn.GridBatch,
    kern: FloatArray,
    model_size: float | None,
    resume_area: float | None = None,
) -> FloatArray:
    """Final loss (nats) of the candidates of ``batch`` under parameter sets ``thetas``: ``(P, C)``.

    ``kern``: :func:`~._optlaw_dynamics.final_kernel` of the batch. ``resume_area``: when
    every candidate is a run continued from the same parent state, the LR area before
    their resume (area units): adds the data-shift excess when ``terms`` has one."""
    out = np.empty((thetas.shape[0], batch.area.shape[1]))
    esc_target = escape_target(batch.eta) if terms.escape else None
    for i, theta in enumerate(thetas):
        p = Theta(terms, space.names, theta)
        l0, amp, bb = p.amplitudes(model_size)
        alpha = p.alpha(model_size)
        target = dyn.noise_target(
            batch.eta, batch.s_mid, phi=p["phi"], eps=p.eps(model_size), amp=amp, alpha=alpha, s_w=p["s_w"]
        )
        noise = np.einsum("mcj,j,mc->c", kern, dyn.spectrum_weights(p["beta"], p["c_cut"]), target, optimize=True)
        loss = l0 + dyn.river(batch.s_final, amp, alpha, p["s_w"]) + bb * noise
        if esc_target is not None and p["k_esc"] > 0:
            loss = loss + p["k_esc"] * _final_excess(batch, p["kappa_esc"], esc_target)
        if terms.fast and p["k_fast"] > 0:
            loss = loss + p["k_fast"] * _final_excess(batch, p["kappa_fast"], held_power(batch.eta, p["p_fast"]))
        if terms.warmup and p["k_warm"] > 0:
            target = instability_target(batch.eta, batch.s_mid, p["s_edge"])
            loss = loss + p["k_warm"] * _final_excess(batch, p["kappa_warm"], target)
        if terms.shift and resume_area is not None:
            loss = loss + shift_excess(p, batch.s_final - resume_area)
        out[i] = loss
    return out


def _final_excess(batch: dyn.GridBatch, kappa: float, target: FloatArray) -> FloatArray:
    """Each candidate's final value of an excess relaxing at rate ``kappa`` towards
    ``target`` (``(M, C)``), from zero."""
    kern = dyn.final_kernel(batch, np.array([kappa]))[:, :, 0]
    return np.asarray(np.sum(kern * target, axis=0), dtype=np.float64)


def fd_thetas(post: Posterior) -> tuple[FloatArray, FloatArray]:
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


def log_jac(loss: FloatArray, h: FloatArray, post: Posterior) -> FloatArray:
    """``d log L / d theta`` (natural) from losses ``(T, p+1)`` at :func:`fd_thetas`."""
    with np.errstate(invalid="ignore", divide="ignore"):
        logl = np.log(loss)
    dz = (logl[:, 1:] - logl[:, :1]) / h[None, :]
    return np.asarray(dz / post.space.dtheta_dz(post.theta)[None, :], dtype=np.float64)
