"""The Opt-Law's mode dynamics, integrated exactly on a coarse grid of chunks.

Physics (design.md section 3). The loss is ``L0`` plus a *convergence* (river) term, a
power law in the LR area, plus the *noise* excess held in ``J`` Hessian modes. Mode ``j``
relaxes with rate ``kappa_j`` per unit of LR area towards an equilibrium set by the
current LR and the current gradient-noise scale:

    d n_j = -kappa_j (n_j - target) dS,   target = (eta / eta_ref)^phi * h(S)

so at a constant LR the noise excess is a floor ``B (eta/eta_ref)^phi h`` and a decay
removes it at the speed of each mode. ``h(S) = 1 + eps * A * (S + s_w)^(-alpha)``: the
gradient-noise covariance is proportional to the loss above an entropy floor
``E = L0 - 1/eps`` (multiplicative noise), so the floor that an LR decay can remove
shrinks as training progresses; ``eps = 0`` is additive noise. The modes' shares of the
floor follow a Gamma-like spectrum ``w_j ~ kappa_j^beta exp(-kappa_j / c_cut)``.

Numerics. Within a chunk the target is held at its value for the chunk's mean LR and
mid-chunk area; the update ``n <- n e^{-kappa a} + (1 - e^{-kappa a}) target`` (``a`` the
chunk's area) is then exact, so the cost is the number of chunks, not of steps. Chunk
boundaries are the schedule's breakpoints (and LR jumps of logged schedules), the
steps asked for, and a uniform grid of ``max_chunks`` chunks (long logged schedules keep
only their jumps and kinks).

Units: steps are optimizer steps; LR areas are measured in *area units* of
``eta_ref * 1000`` (a thousand steps at the reference peak LR), so the fitted shape
parameters do not depend on the LR scale of the data; ``kappa`` is per area unit.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from optuna_optlaws.schedules import Schedule

FloatArray = NDArray[np.float64]

KAPPA: FloatArray = np.logspace(-2.5, 3.0, 17)
"""Relaxation rates of the modes, per area unit: from about a thousand area units (the
slowest) to a few steps at the peak LR (the fastest)."""

STEPS_PER_AREA_UNIT = 1000.0
"""An area unit is this many steps at the reference LR."""

_MAX_KNOT_BREAKS = 1024
"""Logged schedules with more knots than this keep only their jumps and kinks as breakpoints."""

KINK_TOL = 1e-3
"""A knot of a thinned schedule is kept when its LR departs from the straight line
through its neighbours by more than this fraction of the schedule's largest LR."""


@dataclass(frozen=True)
class ChunkGrid:
    """One schedule cut into chunks; chunk ``k`` holds the updates of steps
    ``bounds[k] .. bounds[k+1]-1``."""

    bounds: NDArray[np.int64]
    area: FloatArray
    """LR area of each chunk (area units)."""
    eta: FloatArray
    """Mean LR of each chunk over ``eta_ref`` (dimensionless)."""
    s_end: FloatArray
    """Cumulative LR area after each chunk (area units)."""
    target_chunk: NDArray[np.int64]
    """For each target step ``t``: the chunk after which the state is that of step ``t``
    (the loss at step ``t`` is measured after the updates of steps ``0..t``)."""

    @property
    def s_mid(self) -> FloatArray:
        """Cumulative area at the middle of each chunk (area units)."""
        return np.asarray(self.s_end - 0.5 * self.area, dtype=np.float64)

    @property
    def s_target(self) -> FloatArray:
        """Cumulative area at each target step (area units)."""
        return np.asarray(self.s_end[self.target_chunk], dtype=np.float64)

    @functools.cached_property
    def relax_distance(self) -> FloatArray:
        """``D[o, k]``: area from the end of chunk ``k`` to target ``o`` (``inf`` for chunks
        after the target), the part of :func:`relaxation_kernel` that no rate changes:
        computed once per grid (a fit evaluates the kernel at many rates)."""
        d = self.s_target[:, None] - self.s_end[None, :]
        after = np.arange(self.area.size)[None, :] > self.target_chunk[:, None]
        return np.asarray(np.where(after, np.inf, np.maximum(d, 0.0)), dtype=np.float64)


def _jump_steps(schedule: Schedule, max_knots: int = _MAX_KNOT_BREAKS) -> NDArray[np.float64]:
    """Breakpoints of a schedule. A knot schedule with more than ``max_knots`` knots keeps
    its ends, its jumps and its kinks (see ``KINK_TOL``): between them the LR is smooth on
    the scale of a chunk, where the chunk's Simpson area and mean LR are accurate."""
    if schedule.family != "knots":
        return np.ceil(schedule.breakpoints())
    ks = np.asarray(schedule.params["steps"], dtype=np.float64)
    if ks.size <= max_knots:
        return ks
    kv = np.asarray(schedule.params["lrs"], dtype=np.float64)
    gap = np.diff(ks)
    jump = (gap <= 1.0) & (np.abs(np.diff(kv)) > 0.0)
    idx = np.flatnonzero(jump)
    keep = [ks[idx], ks[idx + 1], ks[[0, -1]]]
    if ks.size >= 3:
        w = gap[:-1] / (gap[:-1] + gap[1:])
        line = kv[:-2] + w * (kv[2:] - kv[:-2])
        kink = np.abs(kv[1:-1] - line) > KINK_TOL * max(float(np.abs(kv).max()), 1e-300)
        keep.append(ks[1:-1][kink])
    return np.unique(np.concatenate(keep))


def chunk_grid(
    schedule: Schedule,
    targets: NDArray[np.int64],
    *,
    eta_ref: float,
    max_chunks: int = 256,
    max_knots: int = _MAX_KNOT_BREAKS,
) -> ChunkGrid:
    """The chunk grid of ``schedule`` that has a boundary right after every target step;
    ``max_knots``: see :func:`_jump_steps` (the fit thins every knot schedule)."""
    targets = np.asarray(targets, dtype=np.int64)
    horizon = max(schedule.total_steps, int(targets.max()) + 1 if targets.size else 1)
    pts = np.concatenate(
        [
            [0.0, float(horizon)],
            targets.astype(np.float64) + 1.0,
            np.round(np.linspace(0.0, horizon, max_chunks + 1)),
            _jump_steps(schedule, max_knots),
        ]
    )
    bounds = np.unique(np.floor(np.clip(pts, 0, horizon)).astype(np.int64))  # knots may be fractional
    a = bounds[:-1].astype(np.float64)
    last = bounds[1:].astype(np.float64) - 1.0
    dt = last - a + 1.0
    # Simpson's rule over the steps of each chunk: exact for linear pieces
    lr = schedule.lr_at(np.concatenate([a, 0.5 * (a + last), last])).reshape(3, -1)
    total = dt * (lr[0] + 4.0 * lr[1] + lr[2]) / 6.0
    unit = eta_ref * STEPS_PER_AREA_UNIT
    area = total / unit
    eta = total / (dt * eta_ref)
    s_end = np.cumsum(area)
    target_chunk = np.searchsorted(bounds, targets + 1) - 1
    return ChunkGrid(bounds=bounds, area=area, eta=eta, s_end=s_end, target_chunk=target_chunk)


def spectrum_weights(beta: float, c_cut: float) -> FloatArray:
    """Share of the noise floor held by each mode, ``~ kappa^beta exp(-kappa / c_cut)``, summing to 1."""
    logw = beta * np.log(KAPPA) - KAPPA / c_cut
    w = np.exp(logw - logw.max())
    return np.asarray(w / w.sum(), dtype=np.float64)


def river(s: FloatArray, amp: float, alpha: float, s_w: float) -> FloatArray:
    """Convergence term ``amp (S + s_w)^(-alpha)`` (nats), ``S`` in area units."""
    return np.asarray(amp * np.power(s + s_w, -alpha), dtype=np.float64)


def noise_target(
    eta: FloatArray, s_mid: FloatArray, *, phi: float, eps: float, amp: float, alpha: float, s_w: float
) -> FloatArray:
    """Equilibrium noise excess per unit floor: ``eta^phi (1 + eps * river(S))``."""
    with np.errstate(divide="ignore"):
        base = np.where(eta > 0, np.power(np.maximum(eta, 1e-300), phi), 0.0)
    return np.asarray(base * (1.0 + eps * river(s_mid, amp, alpha, s_w)), dtype=np.float64)


def relaxation_kernel(grid: ChunkGrid, kappa: FloatArray) -> FloatArray:
    """``K[j, o, k]``: weight of chunk ``k``'s target in mode ``j``'s state at target ``o``
    (zero for chunks after the target). ``state = K @ target`` reproduces :func:`simulate`."""
    gain = -np.expm1(-kappa[:, None] * grid.area[None, :])
    return np.asarray(np.exp(-kappa[:, None, None] * grid.relax_distance[None]) * gain[:, None, :], dtype=np.float64)


@dataclass(frozen=True)
class GridBatch:
    """Several chunk grids padded to one length, laid out ``(chunk, candidate)``."""

    area: FloatArray
    eta: FloatArray
    s_mid: FloatArray
    s_final: FloatArray
    """Cumulative area at each candidate's last chunk (area units)."""


def stack_grids(grids: Sequence[ChunkGrid]) -> GridBatch:
    """Pad grids with empty chunks (area 0, which leave the state unchanged) at the end."""
    m = max(g.area.size for g in grids)
    c = len(grids)
    area = np.zeros((m, c))
    eta = np.zeros((m, c))
    s_mid = np.zeros((m, c))
    for i, g in enumerate(grids):
        k = g.area.size
        area[:k, i] = g.area
        eta[:k, i] = g.eta
        s_mid[:k, i] = g.s_mid
        s_mid[k:, i] = g.s_end[-1]
    s_final = np.array([g.s_end[-1] for g in grids])
    return GridBatch(area=area, eta=eta, s_mid=s_mid, s_final=s_final)


def simulate(area: FloatArray, target: FloatArray, weights: FloatArray, kappa: FloatArray) -> FloatArray:
    """Run the chunked recursion of every mode for one schedule under ``P`` parameter sets.

    ``area``: chunk areas ``(M,)``; ``target``: equilibrium per chunk ``(M, P)``;
    ``weights``: mode shares ``(P, J)``; ``kappa``: rates ``(J,)`` or ``(P, J)``.
    Returns the weighted excess after every chunk, ``(M, P)``, starting from zero."""
    return simulate_many(area, [(target, weights, kappa)])[0]


def simulate_many(
    area: FloatArray, systems: Sequence[tuple[FloatArray, FloatArray, FloatArray]]
) -> list[FloatArray]:
    """:func:`simulate` of several ``(target, weights, kappa)`` systems on the same chunks,
    their modes stepped together in one recursion over the chunks (the same numbers as
    one :func:`simulate` each, in one Python loop instead of several)."""
    decays, injects, shapes = [], [], []
    for target, weights, kappa in systems:
        kap = np.asarray(kappa, dtype=np.float64)
        if kap.ndim == 1:  # the same rates for every parameter set: one exp per (chunk, mode), copied out
            decay = np.repeat(np.exp(-area[:, None] * kap[None])[:, None, :], weights.shape[0], axis=1)
        else:
            decay = np.exp(-area[:, None, None] * np.broadcast_to(kap, weights.shape)[None])
        decays.append(decay.reshape(area.size, -1))
        injects.append(((1.0 - decay) * target[:, :, None]).reshape(area.size, -1))
        shapes.append(weights.shape)
    decay_all = np.concatenate(decays, axis=1)
    inject_all = np.concatenate(injects, axis=1)
    states = np.empty(decay_all.shape)
    prev = np.zeros(decay_all.shape[1])
    multiply, add = np.multiply, np.add
    for state, dec, inj in zip(states, decay_all, inject_all, strict=True):  # each state written in place
        multiply(prev, dec, out=state)
        add(state, inj, out=state)
        prev = state
    out, start = [], 0
    for (_, weights, _), shape in zip(systems, shapes, strict=True):
        size = shape[0] * shape[1]
        part = states[:, start : start + size].reshape(area.size, *shape)
        out.append(np.asarray(np.einsum("mpj,pj->mp", part, weights), dtype=np.float64))
        start += size
    return out


def final_kernel(batch: GridBatch, kappa: FloatArray) -> FloatArray:
    """``G[k, c, j]``: weight of chunk ``k``'s target in mode ``j``'s state at the end of
    candidate ``c``; ``sum_k G[k, c, :] * target[k, c]`` is the final mode state."""
    s_end = np.cumsum(batch.area, axis=0)
    to_end = np.maximum(batch.s_final[None, :] - s_end, 0.0)
    gain = -np.expm1(-batch.area[:, :, None] * kappa[None, None, :])
    return np.asarray(gain * np.exp(-to_end[:, :, None] * kappa[None, None, :]), dtype=np.float64)
