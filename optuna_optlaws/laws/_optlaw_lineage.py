"""Continued runs: a run that resumes from its parent's weights (``Curve.resume_from``,
``resume_step``) is the parent's schedule up to ``resume_step`` followed by its own; the
Opt-Law integrates that whole history, so the run starts from its parent's mode state.

Data shift. A continued run usually trains on another corpus (continual pre-training,
fine-tuning): at the resume its weights sit at the parent's state, which is displaced
from where the new corpus's loss is low. In the quadratic picture of the law that
displacement is an initial excess ``e_i(0)`` in every mode, decaying as ``e_i(0) exp(-2
lambda_i S_c)`` in the LR area ``S_c`` since the resume; summed over a spectrum it is

    D (1 + S_c / s_d)^(-gamma_d)                                         (data shift)

added to the law for every continued run (``Terms.shift``), with ``D`` the excess at the
resume. It keeps the parent's state for the dynamics (noise, escape) and gives the
loss drop that comes from adapting to the new data its own term. Without it, fits on
continued runs explained that drop as noise excess inherited from the parent's high-LR
phase, which needs a steep LR power of the noise floor and extrapolated to several
nats at a peak LR above the fitted ones (fine-tuning: +4.2 nats at 3x the largest fitted
peak). When the parent's own losses are fitted too (another corpus), continued runs also
get a constant offset ``d0`` of their floor (``Terms.shift_offset``).

The lineage (whole-history schedule of every run a law knows, by run id) is saved in the
law file (:func:`lineage_state`, :func:`lineage_from_state`), so ``optlaws predict`` can
continue a run the law was fitted on; law files written before that simply have none."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from optuna_optlaws._errors import InputError
from optuna_optlaws.curves import Curve
from optuna_optlaws.laws import _optlaw_dynamics as dyn
from optuna_optlaws.laws._optlaw_fit import FitProblem
from optuna_optlaws.laws._optlaw_terms import Terms, Theta, shift_excess
from optuna_optlaws.schedules import Schedule

FloatArray = NDArray[np.float64]

_COLLINEAR_RTOL = 1e-12
"""A logged knot is dropped from a saved lineage schedule only when it lies on the line
through its neighbours to this relative precision (the schedule is unchanged)."""


def check_resume_step(run_id: str, parent_id: str, resume_step: int, parent_steps: int, where: str) -> None:
    """InputError unless ``resume_step`` is a step of the parent (``0 .. parent_steps - 1``)."""
    if not 0 <= resume_step < parent_steps:
        raise InputError(
            f"{where}: run {run_id!r} resumes from {parent_id!r} at step {resume_step}, past the parent's "
            f"last step {parent_steps - 1}"
        )


def continued(
    parent: Schedule, resume_step: int, child: Schedule, *, parent_offset: int = 0, where: str = "continued run",
    run_id: str = "?", parent_id: str = "?",
) -> tuple[Schedule, int]:
    """The whole-history schedule of a run that starts from its parent's weights after
    the parent's own step ``resume_step`` and then follows ``child`` (its own steps from
    0), and the offset that maps the child's steps to whole-history steps. ``parent`` is
    the parent's whole-history schedule, on which the parent's own step 0 is step
    ``parent_offset`` (non-zero when the parent is itself a continued run). InputError
    when ``resume_step`` is past the parent's last step."""
    check_resume_step(run_id, parent_id, resume_step, parent.total_steps - parent_offset, where)
    at = parent_offset + resume_step
    head = parent.truncated(at + 1)
    tail = child.truncated(child.total_steps)
    offset = at + 1
    hs, hv = np.asarray(head.params["steps"]), np.asarray(head.params["lrs"])
    ts, tv = np.asarray(tail.params["steps"]) + offset, np.asarray(tail.params["lrs"])
    return Schedule.from_knots(np.concatenate([hs, ts]), np.concatenate([hv, tv])), offset


def resolve_lineage_offsets(
    curves: Sequence[Curve], where: str, offsets: Mapping[str, int] | None = None
) -> tuple[list[Curve], dict[str, int]]:
    """Curves with every continued run (``resume_from``) rewritten on its whole-history
    schedule and steps (its parent must be among ``curves``), and the whole-history step
    of each run's own step 0. ``offsets``: that step for runs given without ``resume_from``
    whose schedule is already a whole history (a law's known lineage); 0 otherwise."""
    by_id = {c.run_id: c for c in curves}
    done: dict[str, Curve] = {}
    starts: dict[str, int] = {}
    known = dict(offsets or {})

    def resolve(c: Curve, depth: int = 0) -> Curve:
        if c.run_id in done:
            return done[c.run_id]
        if c.resume_from is None:
            out = c
            starts[c.run_id] = int(known.get(c.run_id, 0))
        else:
            if depth > len(curves) or c.resume_from == c.run_id:
                raise InputError(f"{where}: run {c.run_id!r} has a cycle of resume_from")
            if c.resume_from not in by_id:
                raise InputError(
                    f"{where}: run {c.run_id!r} resumes from {c.resume_from!r}, which is not among the curves"
                )
            parent = resolve(by_id[c.resume_from], depth + 1)
            sched, offset = continued(
                parent.schedule, int(c.resume_step or 0), c.schedule, parent_offset=starts[c.resume_from],
                where=where, run_id=c.run_id, parent_id=c.resume_from,
            )
            out = replace(c, schedule=sched, steps=c.steps + offset, resume_from=None, resume_step=None)
            starts[c.run_id] = offset
        done[c.run_id] = out
        return out

    return [resolve(c) for c in curves], starts


def _thinned(schedule: Schedule) -> Schedule:
    """The same schedule with logged knots that lie exactly on the line through their
    neighbours removed (constant and linear stretches shrink to their ends)."""
    if schedule.family != "knots":
        return schedule
    s = np.asarray(schedule.params["steps"], dtype=np.float64)
    v = np.asarray(schedule.params["lrs"], dtype=np.float64)
    if s.size < 3:
        return schedule
    keep = np.ones(s.size, dtype=bool)
    left, mid, right = s[:-2], s[1:-1], s[2:]
    span = right - left
    with np.errstate(invalid="ignore", divide="ignore"):
        line = v[:-2] + (v[2:] - v[:-2]) * (mid - left) / span
    flat = (span > 0) & (mid > left) & (mid < right)
    keep[1:-1] = ~(flat & (np.abs(v[1:-1] - line) <= _COLLINEAR_RTOL * np.maximum(np.abs(v[1:-1]), 1e-300)))
    return Schedule.from_knots(s[keep], v[keep])


def lineage_state(lineage: Mapping[str, Schedule]) -> dict[str, Any]:
    """The law file's record of whole-history schedules by run id (JSON-ready)."""
    return {rid: _thinned(sched).to_dict() for rid, sched in lineage.items()}


def offsets_from_state(state: Any) -> dict[str, int]:
    """The saved whole-history step of each continued run's own step 0 (missing: none)."""
    if state is None:
        return {}
    if not isinstance(state, Mapping):
        raise ValueError("'lineage_offsets' must be a JSON object of steps by run id")
    return {str(rid): int(v) for rid, v in state.items()}


def lineage_from_state(state: Any) -> dict[str, Schedule]:
    """Inverse of :func:`lineage_state`; ``None`` (a law file written before lineages were
    saved) gives an empty lineage. ValueError on a malformed record."""
    if state is None:
        return {}
    if not isinstance(state, Mapping):
        raise ValueError("'lineage' must be a JSON object of schedules by run id")
    out: dict[str, Schedule] = {}
    for rid, data in state.items():
        try:
            out[str(rid)] = Schedule.from_dict(data)
        except InputError as exc:
            raise ValueError(f"lineage of run {rid!r}: {exc}") from None
    return out


# ---------------------------------------------------------------------- data shift
def resume_area(schedule: Schedule, offset: int, eta_ref: float) -> float | None:
    """LR area (area units) of a whole-history ``schedule`` before its continued run's own
    step 0 (whole-history step ``offset``); ``None`` for a run that is not continued."""
    if offset <= 0:
        return None
    return float(np.sum(schedule.lrs(offset))) / (eta_ref * dyn.STEPS_PER_AREA_UNIT)


def shift_terms(terms: Terms, fitted: Sequence[Curve], offsets: Mapping[str, int]) -> Terms:
    """``terms`` with the data-shift term on when continued runs are fitted (and the
    floor offset when runs that are not continued are fitted beside them)."""
    cont = [bool(offsets.get(c.run_id, 0)) for c in fitted]
    return replace(terms, shift=any(cont), shift_offset=any(cont) and not all(cont))


class ShiftedFitProblem(FitProblem):
    """:class:`~._optlaw_fit.FitProblem` plus the data-shift excess of continued runs."""

    def __init__(
        self, terms: Terms, curves: Sequence[Curve], grids: Sequence[dyn.ChunkGrid], log_y: FloatArray,
        starts: Sequence[float | None],
    ) -> None:
        super().__init__(terms, curves, grids, log_y)
        s0 = np.array([np.nan if a is None else a for a in starts])[self.curve_of]
        self.shifted = np.isfinite(s0)
        self.s_since = np.where(self.shifted, np.maximum(self.s_target - np.nan_to_num(s0), 0.0), 0.0)

    def _shift(self, theta: FloatArray) -> tuple[Theta, FloatArray]:
        p = Theta(self.terms, self.names, theta)
        return p, np.where(self.shifted, shift_excess(p, self.s_since), 0.0)

    def loss(self, theta: FloatArray) -> FloatArray:
        return np.asarray(super().loss(theta) + self._shift(theta)[1], dtype=np.float64)

    def _loss_grad(self, theta: FloatArray) -> tuple[FloatArray, FloatArray]:
        base, grad = super()._loss_grad(theta)
        p, sh = self._shift(theta)
        m = self.shifted.astype(np.float64)
        x = self.s_since / p["s_d"]
        g = np.power(1.0 + x, -p["gamma_d"])
        col = self.col
        grad[:, col["D"]] = m * g
        grad[:, col["s_d"]] = m * p["D"] * p["gamma_d"] * g / (1.0 + x) * x / p["s_d"]
        grad[:, col["gamma_d"]] = -m * p["D"] * g * np.log1p(x)
        if "d0" in col:
            grad[:, col["d0"]] = m
        return np.asarray(base + sh, dtype=np.float64), grad


def fit_problem(
    terms: Terms, curves: Sequence[Curve], grids: Sequence[dyn.ChunkGrid], log_y: FloatArray,
    offsets: Mapping[str, int],
) -> FitProblem:
    """The fitting problem of whole-history ``curves``: with the data-shift term when
    ``terms`` has it (``offsets``: whole-history step of each continued run's step 0)."""
    if not terms.shift:
        return FitProblem(terms, curves, grids, log_y)
    starts = [resume_area(c.schedule, int(offsets.get(c.run_id, 0)), terms.eta_ref) for c in curves]
    return ShiftedFitProblem(terms, curves, grids, log_y, starts)
