"""Where a recorded live study's optimizer steps went: complete runs, and pruned runs
before and after the first report at which the pruner's evidence gate let the law act.

    python examples/tiny_lm/prune_timing.py studies/tiny_lm/gated/seed0:optlaws-regret ... \\
        --out studies/tiny_lm/gated/prune_timing.md

Each argument is ``FOLDER:ARM`` (the study ``tiny_lm-ARM`` in ``FOLDER/tiny_lm.db``). For
every PRUNED trial it finds the earliest report at which :func:`has_evidence` (the gate
``OptLawsPruner`` applies before it asks the law: ``min_reports`` reports past the law's
initial transient and ``min_fraction`` of the schedule, at the pruner's defaults) held,
and splits the steps the trial trained (its last report's step + 1) into those up to that
report (*gate*: no law-based pruner with these gates could have stopped it sooner) and
those after (*waiting*: the law's interval had not yet cleared the frontier). Runs pruned
as diverged (their recorded reason starts with ``diverged``) are counted apart: the gate
does not apply to them. Reads the storage only; trains nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from optuna_optlaws._pruner._frontier import first_evidence_step
from optuna_optlaws._study_state import raw_points, readable_schedule
from optuna_optlaws.benchmarks.replay import oracle_gates
from optuna_optlaws.pruner import PRUNE_REASON

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recorded import load_recorded, recorded_study
from study import summarize

GATES = oracle_gates()
"""The pruner's default evidence gates (``min_reports``, ``min_fraction``, ...)."""


def earliest_gated_step(trial: FrozenTrial) -> int | None:
    """The step of the first report at which the pruner's evidence gate held for ``trial``
    (``None``: it never did, or the trial has no readable schedule)."""
    schedule = readable_schedule(trial)
    if schedule is None:
        return None
    steps, losses = raw_points(trial)
    return first_evidence_step(steps[np.isfinite(losses)], schedule, GATES["min_reports"], GATES["min_fraction"])


@dataclass
class Timing:
    """Steps of one study (optimizer steps, summed over its trials)."""

    label: str
    complete: int = 0
    pruned: int = 0
    diverged: int = 0
    at_earliest: int = 0
    steps_complete: int = 0
    steps_gate: int = 0
    steps_waiting: int = 0
    steps_diverged: int = 0
    tpe_steps: int = 0

    @property
    def total(self) -> int:
        return self.steps_complete + self.steps_gate + self.steps_waiting + self.steps_diverged


def timing(folder: Path, arm: str) -> Timing:
    """The :class:`Timing` of ``tiny_lm-<arm>`` in ``folder/tiny_lm.db``."""
    storage = f"sqlite:///{folder / 'tiny_lm.db'}"
    study = load_recorded(folder / "tiny_lm.db", f"tiny_lm-{arm}", "prune_timing.py")
    out = Timing(f"{folder}:{arm}")
    out.tpe_steps = int(summarize(optuna.load_study(study_name="tiny_lm-tpe", storage=storage))["steps_trained"])
    for t in study.get_trials(deepcopy=False):
        steps, _ = raw_points(t)
        trained = int(steps[-1]) + 1 if steps.size else 0
        if t.state == TrialState.COMPLETE:
            out.complete += 1
            out.steps_complete += trained
            continue
        if t.state != TrialState.PRUNED:
            continue
        if str(t.user_attrs.get(PRUNE_REASON, "")).startswith("diverged"):
            out.diverged += 1
            out.steps_diverged += trained
            continue
        out.pruned += 1
        first = earliest_gated_step(t)
        gate = trained if first is None else min(first + 1, trained)
        out.steps_gate += gate
        out.steps_waiting += trained - gate
        out.at_earliest += int(first is not None and trained == first + 1)
    return out


def render(rows: list[Timing], command: str, seconds: float) -> str:
    """The Markdown report."""
    lines = [
        "# Where the live studies' optimizer steps went (generated)",
        "",
        "Written by `examples/tiny_lm/prune_timing.py`; do not edit by hand.",
        "",
        f"Command: `{command}` ({seconds:.0f} s)",
        "",
        f"Gate: the pruner's defaults, {GATES['min_reports']} reports past the law's initial transient (warmup and "
        f"first 10% of the schedule) and {GATES['min_fraction']:g} of the schedule. Each pruned run's steps are split "
        "at the first report where the gate held: *gate*, the steps up to it (no pruner with these gates "
        "stops the run sooner); *waiting*, the steps after it, until the law's interval cleared the frontier. "
        "Shares are of the same storage's TPE study without pruning (its optimizer steps). "
        "Diverged: pruned by the divergence detector (no gate).",
        "",
        "| study | complete | pruned on the law (at the first gated report) | diverged | steps vs tpe "
        "| complete runs | pruned: gate | pruned: waiting | diverged runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:

        def share(steps: int, tpe: int = r.tpe_steps) -> str:
            return f"{steps / tpe:.2f}x" if tpe else "n/a"

        lines.append(
            f"| {r.label} | {r.complete} | {r.pruned} ({r.at_earliest}) | {r.diverged} | {share(r.total)} "
            f"| {share(r.steps_complete)} | {share(r.steps_gate)} | {share(r.steps_waiting)} "
            f"| {share(r.steps_diverged)} |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="prune_timing.py", description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("studies", nargs="+", type=recorded_study,
                    help="FOLDER:ARM, e.g. studies/tiny_lm/gated/seed0:optlaws-regret")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown report here")
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    began = time.perf_counter()
    rows = [timing(folder, arm) for folder, arm in args.studies]
    argv_text = " ".join(argv if argv is not None else sys.argv[1:])
    text = render(rows, f"python examples/tiny_lm/prune_timing.py {argv_text}", time.perf_counter() - began)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
