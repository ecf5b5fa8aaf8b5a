"""Continual pre-training curves: pretrain the tiny LM on one corpus, continue on another
under several re-warm schedules, and write the curves file.

Stage 1 (``pre``): ``--pre-steps`` optimizer steps on the standard library's sources
(corpus ``stdlib``) under a cosine schedule (peak ``3e-3`` to ``3e-4``). Stage 2: from the
final weights of stage 1 (a fresh AdamW state), ``--steps`` steps on the standard library's
test suites (corpus ``stdlib_tests``, a shifted distribution) under each re-warm schedule:
re-warmup length, new peak LR, decay shape. One run trains on the new corpus from scratch,
as the reference.

Writes ``studies/continual/curves.csv`` (the long curves format plus ``resume_from`` and
``resume_step`` columns: a continued run's ``step`` counts its own optimizer steps from 0,
and it starts from the weights its parent had after the parent's step ``resume_step``,
i.e. the state whose loss the parent reported at that step), ``runs.json`` and
``README.md``. The loss of the ``pre`` run is on the held-out part of ``stdlib``; the loss of
every stage-2 run is on the held-out part of ``stdlib_tests``; ``runs.json`` also has each
stage-2 run's final loss on ``stdlib`` (forgetting).

Usage (repository root; ~15 minutes of one CPU core)::

    nice -n 10 python examples/tiny_lm/continual.py
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from optuna_optlaws import Schedule
from optuna_optlaws.curves import Curve, write_curves_csv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tinylm import TinyLMConfig, curve_of, loss_of_state, pretrained, train

ROOT = Path(__file__).resolve().parents[2]
PRE_PEAK = 3e-3


def pre_schedule(steps: int) -> Schedule:
    """Stage 1 (also the base model of ``finetune.py``): cosine ``3e-3 -> 3e-4``, 5% warmup."""
    return Schedule.cosine(PRE_PEAK, steps, steps // 20, final_lr=PRE_PEAK / 10)


def stage2_plan(steps: int) -> list[tuple[str, Schedule, bool]]:
    """``(run_id, schedule, from_pretrained)`` of stage 2."""
    plan: list[tuple[str, Schedule, bool]] = []
    for warm in (0, steps // 20, steps // 5):
        plan.append((f"cpt_w{warm}_p3e-3_cos", Schedule.cosine(3e-3, steps, warm, final_lr=3e-4), True))
    w = steps // 20
    for peak, tag in ((3e-4, "3e-4"), (1e-3, "1e-3"), (1e-2, "1e-2")):
        plan.append((f"cpt_w{w}_p{tag}_cos", Schedule.cosine(peak, steps, w, final_lr=peak / 10), True))
    plan.append((f"cpt_w{w}_p3e-3_wsd", Schedule.wsd(3e-3, steps, w, final_lr=3e-5, cooldown_fraction=0.2), True))
    plan.append((f"cpt_w{w}_p1e-3_wsd", Schedule.wsd(1e-3, steps, w, final_lr=1e-5, cooldown_fraction=0.2), True))
    plan.append((f"cpt_w{w}_p3e-3_const", Schedule.constant(3e-3, steps, w), True))
    plan.append(("cpt_p3e-4_const_nowarm", Schedule.constant(3e-4, steps, 0), True))
    plan.append(("scratch_p3e-3_cos", Schedule.cosine(3e-3, steps, w, final_lr=3e-4), False))
    return plan


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pre-steps", type=int, default=600, help="stage-1 optimizer steps (default 600)")
    ap.add_argument("--steps", type=int, default=400, help="stage-2 optimizer steps (default 400)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "studies" / "continual")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    base = TinyLMConfig()
    records: dict[str, dict[str, Any]] = {}
    curves: list[Curve] = []

    def record(run_id: str, sched: Schedule, cfg: TinyLMConfig, res: Any, parent: str | None, rstep: int | None,
               extra: dict[str, Any]) -> None:
        records[run_id] = {"schedule": sched.to_json(), "config": asdict(cfg), "steps": res.steps, "losses": res.losses,
                           "final_loss": res.final_loss, "seconds": round(res.seconds, 2), "resume_from": parent,
                           "resume_step": rstep, **extra}
        curves.append(curve_of(run_id, sched, res, cfg.batch_size, parent, rstep))
        print(f"{run_id}: last loss {res.losses[-1]:.4f} final {res.final_loss:.4f} ({res.seconds:.0f} s)", flush=True)

    pre_sched = pre_schedule(args.pre_steps)
    pre_res, pre_state = pretrained(pre_sched, base)
    record("pre", pre_sched, base, pre_res, None, None, {"corpus": "stdlib"})
    new_cfg = replace(base, corpus="stdlib_tests")
    pre_on_new = loss_of_state(pre_state, new_cfg)
    for run_id, sched, from_pre in stage2_plan(args.steps):
        t0 = time.perf_counter()
        res, state = train(sched, new_cfg, init_state=pre_state if from_pre else None, return_state=True)  # type: ignore[misc]
        extra = {"corpus": "stdlib_tests", "final_loss_stdlib": loss_of_state(state, base),
                 "wall_seconds": round(time.perf_counter() - t0, 1)}
        parent, rstep = ("pre", args.pre_steps - 1) if from_pre else (None, None)
        record(run_id, sched, new_cfg, res, parent, rstep, extra)
    write_curves_csv(out / "curves.csv", curves)
    (out / "runs.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    lines = [
        "# Continual pre-training curves of the tiny LM (generated)",
        "",
        "Written by `examples/tiny_lm/continual.py`; do not edit by hand.",
        "",
        f"Command: `{' '.join(['python examples/tiny_lm/continual.py', *argv])}`",
        "",
        f"Stage 1 `pre`: {args.pre_steps} steps on `stdlib` (cosine {PRE_PEAK:g} -> {PRE_PEAK / 10:g}, 5% warmup).",
        f"Stage 2: {args.steps} steps on `stdlib_tests` from `pre`'s final weights (fresh AdamW state), "
        "`resume_from=pre`, `resume_step` = pre's last step; `scratch_*` starts from random weights.",
        f"Loss of `pre` on the new corpus before stage 2: {pre_on_new:.4f} nats/byte.",
        f"Machine: {platform.machine()}, torch {torch.__version__}, 1 thread. Seed 0 everywhere.",
        "",
        "| run_id | family | peak lr | warmup | final loss (new corpus) | final loss on stdlib | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for run_id, rec in records.items():
        s = Schedule.from_json(rec["schedule"])
        up = rec.get("final_loss_stdlib", rec["final_loss"])
        lines.append(f"| {run_id} | {s.family} | {s.peak_lr:g} | {s.warmup_steps} | "
                     f"{rec['final_loss']:.4f} | {up:.4f} | {rec['seconds']:.0f} |")
    lines.append("")
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {out / 'curves.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
