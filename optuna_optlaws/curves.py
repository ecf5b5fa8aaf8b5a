"""Training curves: one run's schedule, observed losses and sizes; the curves-file reader.

The curves file is the long CSV of ``interface.md`` section 1: one row per (run, step),
columns ``run_id, step`` required, ``lr, loss, model_size, tokens_per_step, batch_size,
resume_from, resume_step`` optional. Every problem is an :class:`InputError` whose one
line names the file, the line and the column.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from optuna_optlaws._csvio import open_input_csv
from optuna_optlaws._errors import InputError
from optuna_optlaws.schedules import Schedule

REQUIRED_COLUMNS = ("run_id", "step")
RUN_CONSTANT_COLUMNS = ("model_size", "tokens_per_step", "batch_size")

MAX_STEP = 10**12
"""The largest step a curves file may hold (a trillion optimizer steps; exact as a float)."""

MAX_KNOTS = 2000
"""Evenly spaced ``lr`` knots per run (besides the schedule's own breakpoints) that
:func:`knotted` starts from: a 600-step schedule is written step by step."""

KNOT_TOLERANCE = 1e-5
"""The curves reader interpolates the LR linearly between rows; knots are added where
that would miss the schedule's LR by more than this fraction of its peak (a ``1-sqrt``
cooldown's start, which no even grid follows)."""


@dataclass(frozen=True)
class Curve:
    """One training run: its LR schedule and the losses observed along it.

    ``steps`` are optimizer steps (sorted, unique) and ``losses`` the loss (nats) at each;
    a NaN or inf loss marks a diverged point. ``model_size`` is N (parameters),
    ``tokens_per_step`` turns steps into data size D (tokens). A continued run names its
    parent in ``resume_from`` and the parent's step it started from in ``resume_step``.
    """

    run_id: str
    schedule: Schedule
    steps: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    losses: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    model_size: float | None = None
    tokens_per_step: float | None = None
    batch_size: float | None = None
    resume_from: str | None = None
    resume_step: int | None = None

    def __post_init__(self) -> None:
        steps = np.asarray(self.steps, dtype=np.int64).ravel()
        losses = np.asarray(self.losses, dtype=np.float64).ravel()
        if steps.size != losses.size:
            raise InputError(f"run {self.run_id!r}: {steps.size} steps but {losses.size} losses")
        order = np.argsort(steps, kind="stable")
        steps, losses = steps[order], losses[order]
        if steps.size and np.any(np.diff(steps) == 0):
            # keep the last report of a repeated step
            keep = np.append(np.diff(steps) != 0, True)
            steps, losses = steps[keep], losses[keep]
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "losses", losses)

    @property
    def finite(self) -> NDArray[np.bool_]:
        """Mask of the points with a finite loss."""
        return np.isfinite(self.losses)

    @property
    def diverged(self) -> bool:
        """True when any observed loss is NaN or infinite."""
        return bool(np.any(~self.finite))

    @property
    def final_loss(self) -> float:
        """The loss at the last observed step (NaN when nothing was observed)."""
        return float(self.losses[-1]) if self.losses.size else math.nan

    @property
    def last_step(self) -> int:
        """The last observed step (-1 when nothing was observed)."""
        return int(self.steps[-1]) if self.steps.size else -1

    def prefix(self, until_step: int) -> Curve:
        """This run with only the points at steps ``<= until_step`` (same schedule)."""
        keep = self.steps <= until_step
        return replace(self, steps=self.steps[keep], losses=self.losses[keep])


def evenly_spaced(n: int, most: int) -> NDArray[np.int64]:
    """Indices of at most ``most`` of ``n`` points, evenly spread, the first and the last
    always kept (how a long curve is thinned)."""
    if n <= most:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.round(np.linspace(0, n - 1, most)).astype(np.int64))


def _parse_float(text: str, where: str, column: str) -> float | None:
    text = text.strip()
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{where} column {column!r}: {text!r} is not a number") from None


def read_curves_csv(path: str | Path, runs: Iterable[str] | None = None) -> list[Curve]:
    """Read a curves file into :class:`Curve` objects, one per run, in file order.

    ``runs``: keep only these run ids (an unknown id is an error). Rows with ``lr`` but no
    ``loss`` are schedule knots; rows with ``loss`` are observations.
    """
    path = Path(path)
    name = str(path)
    with open_input_csv(path, "curves file") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise InputError(f"{name}: the curves file is empty (no header line)") from None
        except csv.Error as exc:
            raise InputError(f"{name} line 1: malformed CSV ({exc})") from None
        cols = {c.strip(): i for i, c in enumerate(header)}
        for req in REQUIRED_COLUMNS:
            if req not in cols:
                raise InputError(f"{name} line 1: missing required column {req!r} (header: {','.join(header)})")
        if "lr" not in cols:
            raise InputError(f"{name} line 1: missing column 'lr': every run needs its LR schedule")
        rows: dict[str, dict[str, list]] = {}
        order: list[str] = []
        run_const: dict[str, dict[str, tuple[float, int]]] = {}
        resume: dict[str, tuple[str | None, int | None]] = {}
        resume_line: dict[str, int] = {}
        line = 1
        try:
            for record in reader:
                line += 1
                if not record or all(not c.strip() for c in record):
                    continue
                where = f"{name} line {line}"
                if len(record) < len(header):
                    record = record + [""] * (len(header) - len(record))
                elif len(record) > len(header):
                    raise InputError(f"{where}: {len(record)} fields but the header has {len(header)}")
                run_id = record[cols["run_id"]].strip()
                if not run_id:
                    raise InputError(f"{where} column 'run_id': empty run id")
                step = _parse_float(record[cols["step"]], where, "step")
                if step is None or not math.isfinite(step):
                    raw = record[cols["step"]]
                    raise InputError(f"{where} column 'step': step must be a finite number, got {raw!r}")
                if step < 0 or step > MAX_STEP or step != int(step):
                    raw = record[cols["step"]]
                    raise InputError(
                        f"{where} column 'step': step must be a whole number in [0, {MAX_STEP:.0e}], got {raw!r}"
                    )
                lr = _parse_float(record[cols["lr"]], where, "lr")
                if lr is not None and (not math.isfinite(lr) or lr < 0):
                    raise InputError(f"{where} column 'lr': lr must be finite and >= 0, got {record[cols['lr']]!r}")
                loss = _parse_float(record[cols["loss"]], where, "loss") if "loss" in cols else None
                if run_id not in rows:
                    rows[run_id] = {"lr_steps": [], "lrs": [], "steps": [], "losses": []}
                    order.append(run_id)
                    run_const[run_id] = {}
                r = rows[run_id]
                if lr is not None:
                    r["lr_steps"].append(step)
                    r["lrs"].append(lr)
                if loss is not None:
                    r["steps"].append(int(step))
                    r["losses"].append(loss)
                for col in RUN_CONSTANT_COLUMNS:
                    if col in cols:
                        val = _parse_float(record[cols[col]], where, col)
                        if val is None:
                            continue
                        if not math.isfinite(val) or val <= 0:
                            raw = record[cols[col]]
                            raise InputError(f"{where} column {col!r}: must be a finite number > 0, got {raw!r}")
                        seen = run_const[run_id].get(col)
                        if seen is not None and seen[0] != val:
                            raise InputError(
                                f"{where} column {col!r}: run {run_id!r} has {col}={val:g} here "
                                f"but {seen[0]:g} on line {seen[1]}"
                            )
                        run_const[run_id].setdefault(col, (val, line))
                if "resume_from" in cols and record[cols["resume_from"]].strip():
                    parent_id = record[cols["resume_from"]].strip()
                    rstep = None
                    if "resume_step" in cols:
                        rstep = _parse_float(record[cols["resume_step"]], where, "resume_step")
                    if rstep is None or not 0 <= rstep <= MAX_STEP or rstep != int(rstep):
                        raise InputError(
                            f"{where} column 'resume_step': a resumed run needs a whole resume_step in "
                            f"[0, {MAX_STEP:.0e}]"
                        )
                    resume[run_id] = (parent_id, int(rstep))
                    resume_line[run_id] = line
        except csv.Error as exc:
            raise InputError(f"{name} line {line}: malformed CSV ({exc})") from None
    if not order:
        raise InputError(f"{name}: the curves file has a header but no rows")
    for child_id, (par_id, rstep) in resume.items():
        # a parent in this file must reach the resume step (one outside it is checked by its user)
        if par_id is not None and par_id in rows and rstep is not None:
            par = rows[par_id]
            last = int(max([*par["lr_steps"], *par["steps"]], default=-1))
            if rstep > last:
                raise InputError(
                    f"{name} line {resume_line[child_id]} column 'resume_step': run {child_id!r} resumes from "
                    f"{par_id!r} at step {rstep}, past the parent's last step {last}"
                )
    wanted = list(order) if runs is None else [r.strip() for r in runs if r.strip()]
    for run_id in wanted:
        if run_id not in rows:
            raise InputError(f"{name}: run {run_id!r} (asked for with --runs) is not in the file")
    curves = []
    for run_id in wanted:
        r = rows[run_id]
        if not r["lrs"]:
            raise InputError(f"{name}: run {run_id!r} has no 'lr' value on any row, so its schedule is unknown")
        first = min(r["lr_steps"])
        if first > 0:
            warnings.warn(
                f"{name}: run {run_id!r} has its first lr at step {first:g}; holding that value back to step 0",
                stacklevel=2,
            )
        last_loss_step = max(r["steps"], default=-1)
        lr_steps, lrs = list(r["lr_steps"]), list(r["lrs"])
        if last_loss_step > max(lr_steps):
            lr_steps.append(float(last_loss_step))
            lrs.append(lrs[int(np.argmax(r["lr_steps"]))])
        const = {k: v[0] for k, v in run_const[run_id].items()}
        parent, rstep = resume.get(run_id, (None, None))
        curves.append(
            Curve(
                run_id=run_id,
                schedule=Schedule.from_knots(lr_steps, lrs),
                steps=np.asarray(r["steps"], dtype=np.int64),
                losses=np.asarray(r["losses"], dtype=np.float64),
                model_size=const.get("model_size"),
                tokens_per_step=const.get("tokens_per_step"),
                batch_size=const.get("batch_size"),
                resume_from=parent,
                resume_step=rstep,
            )
        )
    return curves


def write_curves_csv(path: str | Path, curves: Sequence[Curve]) -> None:
    """Write curves in the long format: one knot row per schedule knot (lr, no loss) and
    one row per observation (lr at that step and loss); ``resume_from``/``resume_step``
    columns are added when any curve continues another run. A family schedule (cosine,
    WSD, ...) is written as :func:`knotted` knots, so the file reads back with its length
    and its LR at every step (within :data:`KNOT_TOLERANCE` of its peak)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    resumed = any(c.resume_from for c in curves)
    with path.open("w", newline="", encoding="utf-8") as handle:
        w = csv.writer(handle)
        header = ["run_id", "step", "lr", "loss", "model_size", "tokens_per_step", "batch_size"]
        w.writerow(header + (["resume_from", "resume_step"] if resumed else []))
        for c in curves:
            tail = ["" if v is None else repr(float(v)) for v in (c.model_size, c.tokens_per_step, c.batch_size)]
            if resumed:
                tail += [c.resume_from or "", "" if c.resume_step is None else str(c.resume_step)]
            obs = set(c.steps.tolist())
            knots = c.schedule if c.schedule.family == "knots" else knotted(c.schedule)
            for s in np.asarray(knots.params["steps"], dtype=np.float64):
                if int(s) == s and int(s) not in obs and s < c.schedule.total_steps:
                    w.writerow([c.run_id, int(s), repr(float(c.schedule.lr_at([s])[0])), "", *tail])
            lrs = c.schedule.lr_at(c.steps.astype(np.float64))
            for s, lr, loss in zip(c.steps.tolist(), lrs.tolist(), c.losses.tolist(), strict=True):
                w.writerow([c.run_id, s, repr(lr), repr(loss), *tail])


def knotted(schedule: Schedule) -> Schedule:
    """``schedule`` as LR knots the curves file can hold: its breakpoints (the integer
    steps either side of each), :data:`MAX_KNOTS` evenly spaced steps, the last step (a
    curves file's run ends at its last row), and wherever linear interpolation between
    those would miss its LR at some step by more than :data:`KNOT_TOLERANCE` of its peak,
    the worst such step of each gap, until none does."""
    total = schedule.total_steps
    last = total - 1
    brk = np.asarray(schedule.breakpoints(), dtype=np.float64)
    steps = np.concatenate([
        np.floor(brk), np.ceil(brk), np.round(np.linspace(0.0, last, min(total, MAX_KNOTS))),
    ])
    knots = np.unique(np.clip(steps, 0, last)).astype(np.int64)
    exact = schedule.lrs()
    tol = KNOT_TOLERANCE * max(float(np.max(exact)), 1e-300)
    every = np.arange(total)
    while True:
        miss = np.abs(np.interp(every, knots, exact[knots]) - exact)
        bad = np.flatnonzero(miss > tol)
        if bad.size == 0:
            break
        gap = np.searchsorted(knots, bad)  # each bad step lies strictly inside one gap
        worst: dict[int, int] = {}
        for g, step in zip(gap.tolist(), bad.tolist(), strict=True):
            if g not in worst or miss[step] > miss[worst[g]]:
                worst[g] = step
        knots = np.union1d(knots, np.fromiter(worst.values(), dtype=np.int64))
    return Schedule.from_knots(knots, exact[knots])
