"""``optlaws noise``: how far a final loss moves when a schedule is trained again.

Reads runs from a curves file, or a study's COMPLETE trials from its storage, finds the
runs that repeat a schedule exactly (:mod:`optuna_optlaws._repeats`) and prints their
pooled run-to-run standard deviation of the final loss (nats) with a confidence
interval: the value to pass as ``OptLawsPruner(final_noise=...)``.
"""

from __future__ import annotations

import argparse
from collections.abc import Hashable, Sequence
from typing import Any

from optuna_optlaws._errors import InputError
from optuna_optlaws.curves import Curve


def register(subparsers: Any) -> None:
    """Add ``noise`` to the ``optlaws`` parser."""
    p = subparsers.add_parser(
        "noise",
        help="measure the run-to-run noise of a final loss on runs that repeat a schedule",
        description="Find the runs that repeat a schedule exactly (the same LR at every step, model size, "
        "tokens per step and parent) and print the pooled standard deviation of their final losses (nats; a "
        "run's last observed loss, a trial's last report), with a confidence interval: the value of "
        "OptLawsPruner(final_noise=...).",
    )
    p.add_argument("source", metavar="CURVES.csv|STORAGE",
                   help="curves file; with --study, an Optuna storage URL or SQLite file")
    p.add_argument("--study", default=None, metavar="NAME", help="read this study's COMPLETE trials instead")
    p.add_argument("--level", type=float, default=0.9, help="confidence level of the interval (default 0.9)")
    p.set_defaults(handler=_run_noise)


def _run_noise(args: argparse.Namespace) -> int:
    from optuna_optlaws._repeats import repeat_key, repeat_noise

    if not 0.0 < args.level < 1.0:
        raise InputError(f"--level {args.level!r}: must lie strictly between 0 and 1")
    source = args.source if args.study is None else f"{args.source}, study {args.study!r}"
    curves = _curves(args.source, args.study)
    keys = {c.run_id: repeat_key(c.schedule, c.model_size, c.tokens_per_step, c.resume_from, c.resume_step)
            for c in curves}
    counted, early = _finished(curves, keys)
    noise = repeat_noise((c.run_id, keys[c.run_id], c.final_loss) for c in counted)
    by_id = {c.run_id: c for c in curves}
    print(f"{source}: {len(curves)} runs, {len(noise.sets) + len(noise.identical)} schedules trained more than once")
    for members in noise.sets:
        finals = ", ".join(f"{by_id[r].final_loss:.4f}" for r in members)
        print(f"  {', '.join(members)}: final losses {finals}")
    for members in noise.identical:
        print(f"  left out: {', '.join(members)} repeat a schedule with exactly equal final losses "
              "(not independent runs: the same seed?)")
    for run_id, (step, last) in early.items():
        print(f"  left out: {run_id} stopped at step {step}, before its repeats (step {last})")
    if not noise.df:
        raise InputError(
            f"{source}: no schedule was trained more than once with different final losses; train one "
            "again with another seed (in a study: study.enqueue_trial(trial.params)) to measure its noise"
        )
    lo, hi = noise.interval(args.level)
    schedules = f"{len(noise.sets)} schedule{'s' if len(noise.sets) > 1 else ''}"
    freedom = f"{noise.df} degree{'s' if noise.df > 1 else ''} of freedom"
    print(f"run-to-run noise of the final loss: {noise.sd:.4f} nats (pooled standard deviation: {noise.runs} runs "
          f"repeating {schedules}, {freedom}; {args.level:.0%} interval {lo:.4f}-{hi:.4f})")
    print(f"OptLawsPruner(final_noise={noise.sd:.4f}) uses it; the default final_noise='auto' measures it the "
          "same way on a study's COMPLETE trials that repeat a schedule")
    return 0


def _curves(source: str, study: str | None) -> list[Curve]:
    """The runs of a curves file, or of a study's COMPLETE trials that carry a schedule."""
    if study is None:
        from optuna_optlaws.curves import read_curves_csv

        return read_curves_csv(source)
    from optuna_optlaws._cli_export import study_curves

    return study_curves(source, study, ["complete"])[1].curves


def _finished(curves: Sequence[Curve], keys: dict[str, Hashable]) -> tuple[list[Curve], dict[str, tuple[int, int]]]:
    """The runs whose final loss counts: each repeated schedule's runs that reached its
    latest observed step; the others as ``run_id -> (their last step, that step)``."""
    last: dict[Hashable, int] = {}
    for c in curves:
        last[keys[c.run_id]] = max(last.get(keys[c.run_id], -1), c.last_step)
    counted = [c for c in curves if c.last_step == last[keys[c.run_id]]]
    early = {c.run_id: (c.last_step, last[keys[c.run_id]]) for c in curves if c.last_step < last[keys[c.run_id]]}
    return counted, early
