"""Continued runs: a run that resumes from its parent's weights (``Curve.resume_from``,
``resume_step``) is the parent's schedule up to ``resume_step`` followed by its own; the
Opt-Law integrates that whole history, so the run starts from its parent's mode state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from optuna_optlaws._errors import InputError
from optuna_optlaws.curves import Curve
from optuna_optlaws.schedules import Schedule


def continued(parent: Schedule, resume_step: int, child: Schedule) -> tuple[Schedule, int]:
    """The whole-history schedule of a run that starts from its parent's weights after
    the parent's step ``resume_step`` and then follows ``child`` (its own steps from 0),
    and the offset that maps the child's steps to whole-history steps."""
    head = parent.truncated(resume_step + 1)
    tail = child.truncated(child.total_steps)
    offset = resume_step + 1
    hs, hv = np.asarray(head.params["steps"]), np.asarray(head.params["lrs"])
    ts, tv = np.asarray(tail.params["steps"]) + offset, np.asarray(tail.params["lrs"])
    return Schedule.from_knots(np.concatenate([hs, ts]), np.concatenate([hv, tv])), offset


def resolve_lineage(curves: Sequence[Curve], where: str) -> list[Curve]:
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
            sched, offset = continued(parent.schedule, int(c.resume_step or 0), c.schedule)
            out = replace(c, schedule=sched, steps=c.steps + offset, resume_from=None, resume_step=None)
        done[c.run_id] = out
        return out

    return [resolve(c) for c in curves]
