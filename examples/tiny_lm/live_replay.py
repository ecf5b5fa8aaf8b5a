"""Replay recorded live tiny-LM studies, every run trained to the end, under other pruners.

A live study only shows what its own pruner did. Once its pruned trials have been trained to
the end (``audit_pruned.py``, which keeps their whole curves in ``audit_<arm>.json``),
every trial of the study has a complete curve, and the study can be replayed: the same
schedules in the same order (the sampler's proposals are held fixed), each run reported
to a fresh Optuna study with another pruner (``optlaws replay``'s ``replay_order``). Per
study and pruner the report gives the optimizer steps trained (share of the study's runs
all trained to the end), the best objective among the runs that completed, its regret
against the best of all runs, and the live target's terms against the same storage's
``tpe`` study (best within 0.5% with at most half of its steps). Usage (repository root)::

    python examples/tiny_lm/live_replay.py studies/tiny_lm:optlaws-regret \\
        studies/tiny_lm/seed1:optlaws-regret --pruner optlaws optlaws:tolerance=0.02 \\
        --out studies/tiny_lm/live_replay.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from optuna_optlaws._errors import InputError
from optuna_optlaws._study_state import raw_points, readable_schedule, trial_sizes
from optuna_optlaws.benchmarks.replay import ReplayGroup, make_pruner, parse_pruner, pruner_settings, replay_order
from optuna_optlaws.curves import Curve
from optuna_optlaws.pruner import DEFAULT_MARGIN

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recorded import load_recorded, recorded_study
from study import summarize, target_met


@dataclass(frozen=True)
class LiveStudy:
    """A recorded study with every run's whole curve: the runs in trial order, their
    objectives (nats/byte; NaN for a diverged run) and the ``tpe`` study's best objective
    and optimizer steps in the same storage."""

    label: str
    group: ReplayGroup
    objectives: list[float]
    tpe_best: float
    tpe_steps: int


def load(folder: Path, arm: str) -> LiveStudy:
    """The study ``tiny_lm-<arm>`` of ``folder/tiny_lm.db``, its pruned runs' curves read
    from ``folder/audit_<arm>.json``."""
    storage = f"sqlite:///{folder / 'tiny_lm.db'}"
    study = load_recorded(folder / "tiny_lm.db", f"tiny_lm-{arm}", "live_replay.py")
    audit_path = folder / f"audit_{arm}.json"
    if not audit_path.exists():
        raise SystemExit(f"live_replay.py: {audit_path} is missing; run audit_pruned.py on {arm} first")
    audited = {int(r["number"]): r for r in json.loads(audit_path.read_text(encoding="utf-8"))}
    curves, objectives = [], []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        schedule = readable_schedule(t)
        if schedule is None or t.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            continue
        if t.state == TrialState.PRUNED:
            if t.number not in audited:
                raise SystemExit(f"live_replay.py: pruned trial {t.number} of {arm} is not in {audit_path}")
            r = audited[t.number]
            steps, losses = np.asarray(r["steps"], dtype=np.int64), np.asarray(r["losses"], dtype=np.float64)
            objective = float(r["objective"])
        else:
            steps, losses = raw_points(t)
            objective = float(t.value) if t.value is not None else math.nan
        n, tps = trial_sizes(t)
        curves.append(Curve(f"trial_{t.number}", schedule, steps, losses, model_size=n, tokens_per_step=tps))
        objectives.append(objective if math.isfinite(objective) else math.nan)
    grid = np.unique(np.concatenate([c.steps for c in curves]))
    tpe = summarize(optuna.load_study(study_name="tiny_lm-tpe", storage=storage))
    return LiveStudy(f"{folder}:{arm}", ReplayGroup(f"{folder}:{arm}", tuple(curves), grid), objectives,
                     float(tpe["best_value"]), int(tpe["steps_trained"]))


def replay(live: LiveStudy, spec: str) -> dict[str, float]:
    """One replay of ``live`` in its trial order with pruner ``spec``."""
    group = live.group
    t0 = time.perf_counter()
    out = replay_order(group, range(len(group.curves)), make_pruner(spec, group))
    name, kwargs = parse_pruner(spec)
    accepted = 0.0
    if name == "optlaws":
        accepted = max(0.0, kwargs.get("tolerance", 0.0) - kwargs.get("margin", DEFAULT_MARGIN))
    finals = [c.final_loss for c in group.curves]
    broken = 0  # pruned runs that would have beaten the frontier at the prune by more than the accepted regret
    for i, at in enumerate(out.pruned_at):
        before = [finals[j] for j in range(i) if out.completed[j] and math.isfinite(finals[j])]
        if at is not None and before and min(before) - finals[i] > accepted:
            broken += 1
    done = [o for o, c in zip(live.objectives, out.completed, strict=True) if c and math.isfinite(o)]
    best = min(done, default=math.inf)
    overall = min(o for o in live.objectives if math.isfinite(o))
    steps = sum(out.steps_trained)
    return {
        "steps": steps,
        "share": steps / sum(c.schedule.total_steps for c in group.curves),
        "best": best,
        "regret": best - overall,
        "vs_tpe": 100 * (best - live.tpe_best) / live.tpe_best,
        "vs_tpe_steps": steps / live.tpe_steps,
        "pruned": sum(p is not None for p in out.pruned_at),
        "broken": broken,
        "seconds": time.perf_counter() - t0,
    }


def render(rows: list[tuple[str, str, dict[str, float]]], specs: list[str], seconds: float) -> str:
    lines = [
        "# Live tiny-LM studies replayed, every run trained to the end (generated)",
        "",
        "Written by `examples/tiny_lm/live_replay.py`; do not edit by hand.",
        "",
        f"Command: `{' '.join(['python examples/tiny_lm/live_replay.py', *sys.argv[1:]])}` ({seconds:.0f} s)",
        "",
        "Each study's runs (its pruned ones trained to the end by `audit_pruned.py`) replayed in its "
        "trial order, the sampler's proposals held fixed, under each pruner. Steps: share of the runs "
        "all trained to the end; best: the best objective (nats/byte) among the runs that completed; "
        "regret: against the best of all the study's runs; vs tpe: the live target's terms against the "
        "same storage's TPE study without pruning (best within 0.5% with at most 0.5x its steps). Beyond "
        "the accepted regret: pruned runs whose final loss (last report) would have beaten the frontier "
        "when they were pruned (the best final of the runs completed before) by more than the pruner "
        "accepts (`tolerance - margin`, at least 0).",
        "",
        "Pruners:",
        "",
        *[f"- `{s}`: {pruner_settings(s)}" for s in specs],
        "",
        "| study | pruner | steps (share) | pruned | beyond the accepted regret | best | regret (nats) | best vs tpe "
        "| steps vs tpe | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, spec, r in rows:
        lines.append(f"| {label} | `{spec}` | {r['share']:.2f} | {r['pruned']:.0f} | {r['broken']:.0f} | "
                     f"{r['best']:.4f} | "
                     f"{r['regret']:.4f} | {r['vs_tpe']:+.2f}% | {r['vs_tpe_steps']:.2f}x | "
                     f"{'met' if target_met(r['vs_tpe'], r['vs_tpe_steps']) else ''} |")
    lines += ["", "Over the studies:", "", "| pruner | steps (share), mean | pruned beyond the accepted regret "
              "| regret mean | regret worst | best vs tpe, mean | targets met |", "|---|---|---|---|---|---|---|"]
    for spec in specs:
        rs = [r for _, s, r in rows if s == spec]
        met = sum(target_met(r["vs_tpe"], r["vs_tpe_steps"]) for r in rs)
        lines.append(f"| `{spec}` | {np.mean([r['share'] for r in rs]):.2f} | "
                     f"{sum(r['broken'] for r in rs):.0f} of {sum(r['pruned'] for r in rs):.0f} | "
                     f"{np.mean([r['regret'] for r in rs]):.4f} "
                     f"| {max(r['regret'] for r in rs):.4f} | {np.mean([r['vs_tpe'] for r in rs]):+.2f}% "
                     f"| {met} of {len(rs)} |")
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("studies", nargs="+", type=recorded_study,
                    help="FOLDER:ARM, e.g. studies/tiny_lm/seed1:optlaws-regret")
    ap.add_argument("--pruner", nargs="+", default=["optlaws"], help="pruner specs as in `optlaws replay`")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown report here")
    args = ap.parse_args(argv)
    for spec in args.pruner:
        try:
            parse_pruner(spec)
        except InputError as exc:
            raise SystemExit(f"live_replay.py: {exc}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    rows = []
    for folder, arm in args.studies:
        live = load(folder, arm)
        for spec in args.pruner:
            r = replay(live, spec)
            print(f"{live.label} {spec}: steps {r['share']:.2f}, best {r['best']:.4f}, regret {r['regret']:.4f}, "
                  f"vs tpe {r['vs_tpe']:+.2f}% at {r['vs_tpe_steps']:.2f}x ({r['seconds']:.0f} s)", flush=True)
            rows.append((live.label, spec, r))
    text = render(rows, list(args.pruner), time.perf_counter() - t0)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
