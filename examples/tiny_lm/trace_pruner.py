"""Trace OptLawsPruner's checks on trials of a recorded, sequential study: why a trial was
pruned when it was (or not at all).

The study is replayed into an in-memory study one trial at a time, in order, as it ran:
each trial is created with its recorded parameters and schedule, the sampler's law store
is asked for the law where :class:`~optuna_optlaws.OptLawsSampler` asked for it (at the
trial's first schedule parameter; ``--no-sampler`` for studies that used another
sampler), every recorded report is checked by :class:`~optuna_optlaws.OptLawsPruner` (with
the settings given here, which must be the study's), and the trial ends as it ended in
the study. The law is therefore refitted exactly when the live study refitted it, and
every decision can be compared with the live one: the report says how many trials the
replay prunes at the same report as the study did (or, for a COMPLETE trial, never).

For each trial asked for (``--trials``), every check is printed: the step, the reported
loss, the predicted final loss and its interval, the frontier, and the *excess*, how far
the lower end is above the frontier plus the pruner's threshold (``margin - tolerance``):
the check prunes when it is positive. Usage (repository root)::

    python examples/tiny_lm/trace_pruner.py studies/tiny_lm/tiny_lm.db tiny_lm-optlaws-tolerant \\
        --tolerance 0.01 --trials 12,26 --out studies/tiny_lm/trace_optlaws-tolerant.md
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from optuna_optlaws import OptLawsPruner, OptLawsSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recorded import load_recorded


@dataclass(frozen=True)
class Check:
    """One traced check: the report's step and loss, the predicted final loss and its
    interval (NaN when the law did not predict), the frontier (nats) and whether it pruned."""

    step: int
    loss: float
    mean: float
    lo: float
    hi: float
    frontier: float
    threshold: float
    prune: bool

    @property
    def excess(self) -> float:
        """Nats the lower end is above frontier + threshold (positive: prune)."""
        return self.lo - (self.frontier + self.threshold)


@dataclass
class Replayed:
    """One trial of the replay: the recorded trial, its traced checks (only for the
    trials asked for) and the report at which the replay pruned it (``None``: never)."""

    trial: FrozenTrial
    rows: list[Check] = field(default_factory=list)
    pruned_at: int | None = None

    @property
    def agrees(self) -> bool:
        """Whether the replay ended the trial where the study did."""
        if self.trial.state == TrialState.PRUNED:
            return self.pruned_at is not None and self.pruned_at == max(self.trial.intermediate_values)
        return self.pruned_at is None


def _start_copy(study: optuna.Study, me: FrozenTrial) -> int:
    """A RUNNING trial in ``study`` with ``me``'s parameters and attributes, no reports."""
    storage = study._storage
    tid = storage.create_new_trial(study._study_id)
    for key, value in me.system_attrs.items():
        storage.set_trial_system_attr(tid, key, value)
    for key, value in me.user_attrs.items():
        if not key.startswith("optlaws_"):  # the pruner's own records are what is replayed
            storage.set_trial_user_attr(tid, key, value)
    for name, value in me.params.items():
        dist = me.distributions[name]
        storage.set_trial_param(tid, name, dist.to_internal_repr(value), dist)
    return tid


def replay(
    trials: Sequence[FrozenTrial], upto: int, traced: set[int], pruner: OptLawsPruner,
    sampler: OptLawsSampler | None,
) -> list[Replayed]:
    """Replay trials ``0..upto`` of a sequential study (see the module docstring)."""
    study = optuna.create_study()
    out: list[Replayed] = []
    for me in trials[: upto + 1]:
        tid = _start_copy(study, me)
        if sampler is not None:
            sampler.law_store.get(study, study.get_trials(deepcopy=False))
        rec = Replayed(me)
        for step in sorted(me.intermediate_values):
            study._storage.set_trial_intermediate_value(tid, step, me.intermediate_values[step])
            decision = pruner._decide(study, study._storage.get_trial(tid))
            if decision is None:
                raise SystemExit(f"trace_pruner.py: trial {me.number} has no readable schedule")
            if me.number in traced:
                mean, lo, hi = decision.pred if decision.pred is not None else (math.nan,) * 3
                front = decision.frontier.value if decision.frontier is not None else math.nan
                rec.rows.append(Check(step, me.intermediate_values[step], mean, lo, hi, front,
                                      pruner._gates.threshold, decision.prune))
            if decision.prune and rec.pruned_at is None:
                rec.pruned_at = step
        values = None if me.value is None else [me.value]
        finished = me.state if me.state in (TrialState.COMPLETE, TrialState.PRUNED) else TrialState.FAIL
        study._storage.set_trial_state_values(tid, finished, values)
        out.append(rec)
    return out


def _fmt(x: float) -> str:
    return "" if not math.isfinite(x) else f"{x:.4f}"


def render(db: str, study_name: str, pruner: OptLawsPruner, replayed: list[Replayed], traced: set[int]) -> str:
    """The Markdown report of the replay and the traced trials."""
    g = pruner._gates
    agree = [r for r in replayed if r.agrees]
    differ = [f"{r.trial.number} (study: {r.trial.state.name} at {max(r.trial.intermediate_values, default=None)}, "
              f"replay: {'pruned at ' + str(r.pruned_at) if r.pruned_at is not None else 'not pruned'})"
              for r in replayed if not r.agrees]
    lines = [
        f"# Pruner checks replayed: `{study_name}` in `{db}` (generated)",
        "",
        "Written by `examples/tiny_lm/trace_pruner.py`; do not edit by hand.",
        "",
        f"Command: `{' '.join(['python examples/tiny_lm/trace_pruner.py', *sys.argv[1:]])}`",
        "",
        f"Pruner: margin {g.margin:g}, tolerance {g.tolerance:g} (threshold {g.threshold:+g} nats), "
        f"min_reports {g.min_reports}, min_fraction {g.min_fraction:g}, n_min_trials {g.n_min_trials}. "
        "Excess: lower end minus (frontier + threshold), nats; the check prunes when it is positive.",
        "",
        f"The replay ends {len(agree)} of the {len(replayed)} trials 0-{len(replayed) - 1} where the study did"
        + (f"; it differs on trials {', '.join(differ)}." if differ else "."),
    ]
    for rec in replayed:
        if rec.trial.number not in traced:
            continue
        me, rows, number = rec.trial, rec.rows, rec.trial.number
        state = me.state.name
        live = max(me.intermediate_values) if me.intermediate_values else None
        lines += ["", f"## Trial {number}: {state} in the study (last report at step {live}), "
                      f"params {me.params}", "",
                  "| step | loss | predicted final | lower | upper | frontier | excess | prune |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(
                f"| {r.step} | {r.loss:.4f} | {_fmt(r.mean)} | {_fmt(r.lo)} | {_fmt(r.hi)} | "
                f"{_fmt(r.frontier)} | {_fmt(r.excess)} | {'yes' if r.prune else ''} |"
            )
        excess = [r.excess for r in rows if math.isfinite(r.excess)]
        if excess:
            lines += ["", f"Excess over the checks with a prediction: from {min(excess):+.4f} to {max(excess):+.4f} "
                          f"nats (first {excess[0]:+.4f}, last {excess[-1]:+.4f})."]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("db", help="SQLite file of the study")
    ap.add_argument("study", help="study name, e.g. tiny_lm-optlaws-tolerant")
    ap.add_argument("--trials", required=True, help="comma-separated trial numbers to trace")
    ap.add_argument("--law", default="optlaw")
    ap.add_argument("--tolerance", type=float, default=0.0, help="the pruner's tolerance in the study (nats)")
    ap.add_argument("--margin", type=float, default=0.01, help="the pruner's margin in the study (nats)")
    ap.add_argument("--seed", type=int, default=0, help="the pruner's (and sampler's) seed in the study")
    ap.add_argument("--no-sampler", action="store_true", help="the study did not use OptLawsSampler")
    ap.add_argument("--out", type=Path, help="write the Markdown report here (default: print it)")
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    source = load_recorded(args.db, args.study, "trace_pruner.py")
    try:
        numbers = [int(x) for x in args.trials.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"trace_pruner.py: --trials {args.trials!r} is not a list of trial numbers") from None
    trials = source.get_trials(deepcopy=False)
    for n in numbers:
        if not 0 <= n < len(trials):
            raise SystemExit(f"trace_pruner.py: --trials: study {args.study} has no trial {n}")
    pruner = OptLawsPruner(args.law, margin=args.margin, tolerance=args.tolerance, seed=args.seed)
    sampler = None if args.no_sampler else OptLawsSampler(args.law, seed=args.seed)
    replayed = replay(trials, len(trials) - 1, set(numbers), pruner, sampler)
    text = render(args.db, args.study, pruner, replayed, set(numbers))
    if args.out:
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
