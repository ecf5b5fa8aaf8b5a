"""Audit the pruned trials of a recorded tiny-LM study: train each one to the end and see
what pruning it cost.

A pruner is only as good as the runs it should not have killed. Every PRUNED trial of the
study is retrained from scratch with its recorded schedule and the study's training
settings (same seed, or the trial's own for an enqueued repeat: the retrained prefix must
reproduce the recorded reports, which the report checks), to the end of its schedule. For each it reports

* where it was pruned and the pruner's predicted final loss there (its interval, from the
  trial's ``optlaws_pred_*`` attributes),
* its true final loss (the last periodic held-out loss, what the pruner predicts and
  compares; nats/byte) and whether that fell below the predicted lower end,
* the frontier when it was pruned (the best final loss of the COMPLETE trials before it,
  in this sequential study) and by how much the run would have beaten it,
* its objective (the final loss on the larger held-out set) against the study's best.

Summary: how many true finals fell below the lower end (nominal at most 5% for a 90%
interval), how many pruned runs would have beaten the frontier by more than the regret
the pruner accepts (``tolerance - margin``), and how much better the study's best would
have been with every pruned run trained to the end (the regret that pruning cost).
A fine-tuning study of ``finetune_study.py`` (``--finetune``): each pruned trial is
retrained from the parent's weights on the fine-tuning corpus, as that script trains it.

Usage (repository root)::

    python examples/tiny_lm/audit_pruned.py studies/tiny_lm/seed3/tiny_lm.db tiny_lm-optlaws-regret \\
        --accepted 0.01 --out studies/tiny_lm/seed3/audit_optlaws-regret.md
    python examples/tiny_lm/audit_pruned.py studies/finetune_study/finetune_study.db finetune-optlaws-regret \\
        --finetune --accepted 0.01 --out studies/finetune_study/audit_optlaws-regret.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from optuna_optlaws import get_schedule
from optuna_optlaws._pruner._frontier import PRED_FINAL, PRED_HI, PRED_LO, completed_final

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recorded import load_recorded
from study import training_config, trial_config
from tinylm import TinyLMConfig, default_device, train

PREFIX_TOLERANCE = 1e-4
"""Nats by which a retrained report may differ from the recorded one (the runs are
deterministic on one CPU thread; a larger gap means other training settings)."""


@dataclass(frozen=True)
class Audited:
    """One pruned trial trained to the end (losses in nats/byte)."""

    number: int
    pruned_at: int
    pred: tuple[float, float, float]
    frontier: float
    objective: float
    prefix_gap: float
    steps: list[int]
    losses: list[float]
    """The retrained run's whole curve: report steps and held-out losses (nats/byte)."""

    @property
    def true_final(self) -> float:
        """The retrained run's last held-out loss: what the pruner predicted (nats/byte)."""
        return self.losses[-1] if self.losses else math.nan

    @property
    def below_lower_end(self) -> bool:
        return self.true_final < self.pred[1]

    @property
    def beats_frontier_by(self) -> float:
        """Nats the run would have ended below the frontier (negative: above it)."""
        return self.frontier - self.true_final


def audit(
    study: optuna.Study,
    cfg: TinyLMConfig,
    device: torch.device,
    limit: int | None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> list[Audited]:
    """Retrain the study's PRUNED trials (at most ``limit``) to the end of their schedules,
    from ``init_state`` (a fine-tuning study's parent weights) or from scratch."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    out: list[Audited] = []
    for me in trials:
        if me.state != TrialState.PRUNED or not me.intermediate_values:
            continue
        if limit is not None and len(out) >= limit:
            break
        schedule = get_schedule(me)
        if schedule is None:
            continue
        before = [completed_final(study._storage, t)[1] for t in trials
                  if t.number < me.number and t.state == TrialState.COMPLETE]
        frontier = min((v for v in before if math.isfinite(v)), default=math.nan)
        curve: dict[int, float] = {}
        res = train(schedule, trial_config(cfg, me), on_eval=curve.__setitem__, device=device, init_state=init_state)
        assert not isinstance(res, tuple)
        gap = max((abs(curve[s] - v) for s, v in me.intermediate_values.items() if s in curve), default=math.inf)
        attrs = me.user_attrs
        pred = tuple(float(attrs.get(k, math.nan)) for k in (PRED_FINAL, PRED_LO, PRED_HI))
        row = Audited(me.number, max(me.intermediate_values), pred, frontier,  # type: ignore[arg-type]
                      res.final_loss, gap, sorted(curve), [curve[s] for s in sorted(curve)])
        out.append(row)
        print(f"trial {me.number}: pruned at {row.pruned_at}, predicted {pred[0]:.4f} [{pred[1]:.4f}, "
              f"{pred[2]:.4f}], true {row.true_final:.4f}, frontier {frontier:.4f}, prefix gap {gap:.1e}", flush=True)
    return out


def _f(x: float) -> str:
    return "" if not math.isfinite(x) else f"{x:.4f}"


def render(
    db: str, name: str, study: optuna.Study, rows: list[Audited], accepted: float, seconds: float,
    start: str = "from scratch",
) -> str:
    """The Markdown report of the audit; ``start``: where each retrained run started."""
    complete = [t for t in study.get_trials(deepcopy=False)
                if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    best = min((float(t.value) for t in complete), default=math.nan)  # type: ignore[arg-type]
    with_pruned = min([best, *(r.objective for r in rows if math.isfinite(r.objective))])
    n = len(rows)
    below = sum(r.below_lower_end for r in rows if math.isfinite(r.pred[1]))
    with_pred = sum(math.isfinite(r.pred[1]) for r in rows)
    beat = [r for r in rows if r.beats_frontier_by > accepted]
    better = [r for r in rows if r.objective < best]
    lines = [
        f"# Pruned trials trained to the end: `{name}` in `{db}` (generated)",
        "",
        "Written by `examples/tiny_lm/audit_pruned.py`; do not edit by hand.",
        "",
        f"Command: `{' '.join(['python examples/tiny_lm/audit_pruned.py', *sys.argv[1:]])}` ({seconds:.0f} s)",
        "",
        f"Each PRUNED trial retrained {start} with its schedule and the study's training settings "
        f"(largest gap to its recorded reports: {max((r.prefix_gap for r in rows), default=math.nan):.1e} nats). "
        "True final: its last periodic held-out loss, what the pruner predicted. Frontier: the best such "
        "final of the COMPLETE trials before it. Objective: the final loss on the larger held-out set.",
        "",
        f"- Pruned trials audited: {n}.",
        f"- True final below the pruner's lower end at the prune: {below} of {with_pred} "
        f"({100 * below / max(with_pred, 1):.0f}%; nominal at most 5%).",
        f"- Would have beaten the frontier by more than the accepted regret ({accepted:g} nats): {len(beat)}"
        + (f" (trials {', '.join(str(r.number) for r in beat)})" if beat else "") + ".",
        f"- Would have beaten the study's best objective ({_f(best)}): {len(better)}"
        + (f" (trials {', '.join(str(r.number) for r in better)})" if better else "") + ".",
        f"- Study's best objective with every pruned run trained to the end: {_f(with_pruned)} "
        f"(regret of pruning: {best - with_pruned:.4f} nats, {100 * (best - with_pruned) / with_pruned:.2f}%).",
        "",
        "| trial | pruned at step | predicted final | lower end | upper end | true final | below lower end "
        "| frontier | beats frontier by | objective |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.number} | {r.pruned_at} | {_f(r.pred[0])} | {_f(r.pred[1])} | {_f(r.pred[2])} "
                     f"| {_f(r.true_final)} | {'yes' if r.below_lower_end else ''} | {_f(r.frontier)} "
                     f"| {r.beats_frontier_by:+.4f} | {_f(r.objective)} |")
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("db", help="the study's SQLite file")
    ap.add_argument("study", help="study name, e.g. tiny_lm-optlaws-regret")
    ap.add_argument("--accepted", type=float, default=0.0,
                    help="regret (nats) the pruner accepted: its tolerance minus its margin, at least 0 (default 0)")
    ap.add_argument("--train-seed", type=int, default=0, help="the study's training seed (default 0)")
    ap.add_argument("--tiny", action="store_true", help="the study was run with --tiny")
    ap.add_argument("--finetune", action="store_true",
                    help="a finetune_study.py study: retrain each pruned trial from the parent's weights")
    ap.add_argument("--pre-steps", type=int, default=None,
                    help="with --finetune: the study's --pre-steps (default finetune_study.py's)")
    ap.add_argument("--train-bytes", type=int, default=None,
                    help="with --finetune: the study's --train-bytes (default finetune_study.py's)")
    ap.add_argument("--limit", type=int, default=None, help="audit at most this many pruned trials")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown report here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_recorded(args.db, args.study, "audit_pruned.py")
    steps = {s.total_steps for t in study.trials if (s := get_schedule(t)) is not None}
    if len(steps) != 1:
        raise SystemExit(f"audit_pruned.py: the trials of {args.study} do not share one horizon: {sorted(steps)}")
    horizon = steps.pop()
    init_state = None
    if args.finetune:
        from finetune_study import PRE_STEPS, TRAIN_BYTES, build_setup

        setup = build_setup(args.pre_steps or PRE_STEPS, horizon, args.train_bytes or TRAIN_BYTES,
                            args.train_seed, args.tiny)
        cfg, init_state = setup.ft_cfg, setup.pre_state
    else:
        cfg = training_config(args.train_seed, horizon, args.tiny)
    t0 = time.perf_counter()
    rows = audit(study, cfg, default_device(), args.limit, init_state)
    start = "from the parent's weights (fine-tuning)" if args.finetune else "from scratch"
    text = render(args.db, args.study, study, rows, args.accepted, time.perf_counter() - t0, start)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
        args.out.with_suffix(".json").write_text(
            json.dumps([{**r.__dict__, "true_final": r.true_final} for r in rows], indent=1), encoding="utf-8")
    print(text)
    bad = [r.number for r in rows if r.prefix_gap > PREFIX_TOLERANCE]
    if bad:
        print(f"audit_pruned.py: retrained reports differ from the recorded ones by more than "
              f"{PREFIX_TOLERANCE:g} nats in trials {bad}: other training settings?", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
