"""Train the tiny LM under many LR schedules and write the real curves file.

Writes ``studies/curves/tiny_lm_curves.csv`` (the long curves format of interface.md
section 1: one knot row per optimizer step with its LR, and one row per held-out loss
measurement every ``eval_every`` steps), ``studies/curves/tiny_lm_runs.json`` (per run: the
schedule as JSON, the model config, the final validation loss on the larger fixed set,
seconds) and ``studies/curves/README.md``, all written by this script.

Usage (from the repository root; ~20-30 minutes of one CPU core for the full set)::

    nice -n 10 python examples/tiny_lm/generate_curves.py
    python examples/tiny_lm/generate_curves.py --only cos,const --out-dir /tmp/curves   # a subset
    nice -n 10 python examples/tiny_lm/generate_curves.py --plan warmup --out-dir studies/warmup
    nice -n 10 python examples/tiny_lm/generate_curves.py --plan diverge --out-dir studies/diverge_tiny

Runs are appended to the JSON as they finish, and a rerun skips runs already there (so an
interrupted generation resumes); ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from optuna_optlaws import Schedule
from optuna_optlaws.curves import Curve, write_curves_csv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tinylm import TinyLMConfig, count_parameters, default_device, train

ROOT = Path(__file__).resolve().parents[2]
BASE = TinyLMConfig()
LARGER = replace(BASE, d_model=96, n_heads=4)
"""The second model size (about 2x the parameters of ``BASE``)."""


def run_plan(peak: float, horizon: int) -> list[tuple[str, Schedule, TinyLMConfig]]:
    """The runs: ``(run_id, schedule, config)``. ``peak`` is the main peak LR, ``horizon``
    the main number of optimizer steps; warmup is 5% of the horizon everywhere."""
    plan: list[tuple[str, Schedule, TinyLMConfig]] = []

    def add(run_id: str, sched: Schedule, cfg: TinyLMConfig = BASE) -> None:
        plan.append((run_id, sched, cfg))

    t = horizon
    w = t // 20
    lo = peak / 100
    for mult, tag in ((1.0, ""), (1 / 3, "_lowlr"), (3.0, "_highlr")):
        p = peak * mult
        add(f"const{tag}_{t}", Schedule.constant(p, t, w))
        add(f"cos{tag}_{t}", Schedule.cosine(p, t, w, final_lr=p / 10))
        add(f"wsd_lin20{tag}_{t}", Schedule.wsd(p, t, w, final_lr=p / 100, cooldown_fraction=0.2))
    add(f"cos_to0_{t}", Schedule.cosine(peak, t, w, final_lr=0.0))
    add(f"linear_{t}", Schedule.linear(peak, t, w, final_lr=0.0))
    for frac in (0.1, 0.4):
        add(f"wsd_lin{int(frac * 100)}_{t}", Schedule.wsd(peak, t, w, final_lr=lo, cooldown_fraction=frac))
    for frac in (0.2, 0.4):
        for shape, tag in (("exp", "exp"), ("1-sqrt", "sqrt")):
            sched = Schedule.wsd(peak, t, w, final_lr=lo, cooldown_fraction=frac, cooldown=shape)
            add(f"wsd_{tag}{int(frac * 100)}_{t}", sched)
    add(f"step811_{t}", Schedule.step(peak, t, w))
    add(f"twostage_{t}", Schedule.step(peak, t, w, milestones=(0.5,), factors=(0.1,)))
    add(f"invsqrt_{t}", Schedule.inverse_sqrt(peak, t, w))
    # a second horizon (2x): the law must carry what it learnt to a longer run
    t2, w2 = 2 * horizon, horizon // 20
    add(f"const_{t2}", Schedule.constant(peak, t2, w2))
    add(f"cos_{t2}", Schedule.cosine(peak, t2, w2, final_lr=peak / 10))
    add(f"wsd_lin20_{t2}", Schedule.wsd(peak, t2, w2, final_lr=lo, cooldown_fraction=0.2))
    add(f"wsd_sqrt20_{t2}", Schedule.wsd(peak, t2, w2, final_lr=lo, cooldown_fraction=0.2, cooldown="1-sqrt"))
    # a second model size
    for run_id, sched in (
        (f"d96_const_{t}", Schedule.constant(peak, t, w)),
        (f"d96_cos_{t}", Schedule.cosine(peak, t, w, final_lr=peak / 10)),
        (f"d96_wsd_lin20_{t}", Schedule.wsd(peak, t, w, final_lr=lo, cooldown_fraction=0.2)),
    ):
        add(run_id, sched, LARGER)
    return plan


WARMUPS = (0, 6, 30, 90)
"""Warmup lengths (optimizer steps) of the warmup plan: none, 1%, 5% and 15% of 600 steps."""


def warmup_plan(peak: float, horizon: int) -> list[tuple[str, Schedule, TinyLMConfig]]:
    """Runs that vary only the warmup length: WSD (20% linear cooldown to peak/100) at the
    main peak, 3x and 6x it, each with every warmup in ``WARMUPS`` (6x: none, 5%, 15%;
    at that peak the shortest warmups may diverge, which is data too)."""
    plan: list[tuple[str, Schedule, TinyLMConfig]] = []
    for mult, tag, warmups in ((1.0, "", WARMUPS), (3.0, "_highlr", WARMUPS), (6.0, "_x6lr", (0, 30, 90))):
        p = peak * mult
        for w in warmups:
            sched = Schedule.wsd(p, horizon, w, final_lr=p / 100, cooldown_fraction=0.2)
            plan.append((f"wsd_lin20{tag}_w{w}_{horizon}", sched, BASE))
    return plan


def diverge_plan(peak: float, horizon: int) -> list[tuple[str, Schedule, TinyLMConfig]]:
    """Runs meant to go unstable: constant LR at 10x, 30x and 100x the main peak, no
    warmup (real curves for the online divergence detector)."""
    return [
        (f"const_x{mult}lr_w0_{horizon}", Schedule.constant(peak * mult, horizon, 0), BASE) for mult in (10, 30, 100)
    ]


PLANS = {"main": run_plan, "warmup": warmup_plan, "diverge": diverge_plan}
"""The run plans ``--plan`` picks from."""


def to_curve(run_id: str, sched: Schedule, cfg: TinyLMConfig, steps: list[int], losses: list[float]) -> Curve:
    """The run as a :class:`Curve` whose schedule is given at every optimizer step (so the
    file's piecewise-linear LR is exact at every step, whatever the family)."""
    grid = np.arange(sched.total_steps, dtype=np.float64)
    return Curve(
        run_id=run_id,
        schedule=Schedule.from_knots(grid, sched.lr_at(grid)),
        steps=np.asarray(steps, dtype=np.int64),
        losses=np.asarray(losses, dtype=np.float64),
        model_size=float(count_parameters(cfg)),
        tokens_per_step=float(cfg.tokens_per_step),
        batch_size=float(cfg.batch_size),
    )


def write_readme(out_dir: Path, records: dict, command: str, csv_name: str) -> None:
    """The folder's README, from the records of the runs."""
    lines = [
        "# Real loss curves of the tiny LM (generated)",
        "",
        "Written by `examples/tiny_lm/generate_curves.py`; do not edit by hand.",
        "",
        f"Command: `{command}`",
        "",
        "Model: byte-level decoder-only transformer (examples/tiny_lm/tinylm.py) trained with AdamW",
        "(betas 0.9/0.95, weight decay 0.1, grad clip 1) on the Python standard library's `*.py`",
        "sources (test suites excluded; every 20th file held out). `loss` is the mean cross-entropy",
        "(nats per byte) on a fixed held-out set of 8 x 32 windows, measured right after optimizer",
        "step `step` (0-based; the LR of that step is the `lr` column). Knot rows (lr, no loss) give",
        "the LR at every step. `final_val` below is the same loss on a larger fixed held-out set",
        "(64 x 32 windows) after the last step. Seed 0 everywhere (same initialisation and batch order).",
        "",
        f"Files: `{csv_name}` (curves), `tiny_lm_runs.json` (schedules as JSON, configs, timings).",
        f"Machine: {platform.machine()}, torch {torch.__version__}, device {default_device()}, 1 thread.",
        "",
        "| run_id | family | steps | peak lr | N (params) | last loss | final_val | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    total_s = 0.0
    for run_id, rec in records.items():
        sched = Schedule.from_json(rec["schedule"])
        total_s += rec["seconds"]
        lines.append(
            f"| {run_id} | {sched.family} | {sched.total_steps} | {sched.peak_lr:.3g} | {rec['model_size']} | "
            f"{rec['losses'][-1]:.4f} | {rec['final_loss']:.4f} | {rec['seconds']:.1f} |"
        )
    lines += ["", f"{len(records)} runs, {total_s / 60:.1f} minutes of training in all.", ""]
    (out_dir / "README.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peak-lr", type=float, default=1e-2, help="main peak LR (default 1e-2)")
    ap.add_argument("--steps", type=int, default=600, help="main horizon, optimizer steps (default 600)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "studies" / "curves")
    ap.add_argument("--plan", choices=sorted(PLANS), default="main", help="which runs (default main)")
    ap.add_argument("--only", default="", help="comma-separated run-id prefixes to run (default all)")
    ap.add_argument("--fresh", action="store_true", help="ignore runs already recorded")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "tiny_lm_runs.json"
    records: dict = {}
    if json_path.exists() and not args.fresh:
        records = json.loads(json_path.read_text(encoding="utf-8"))
    prefixes = [p for p in args.only.split(",") if p]
    plan = [r for r in PLANS[args.plan](args.peak_lr, args.steps) if not prefixes or r[0].startswith(tuple(prefixes))]
    command = "python examples/tiny_lm/generate_curves.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for i, (run_id, sched, cfg) in enumerate(plan):
        if run_id in records:
            continue
        t0 = time.perf_counter()
        res = train(sched, cfg)
        assert not isinstance(res, tuple)
        records[run_id] = {
            "schedule": sched.to_json(),
            "config": asdict(cfg),
            "model_size": res.model_size,
            "tokens_per_step": res.tokens_per_step,
            "steps": res.steps,
            "losses": res.losses,
            "final_loss": res.final_loss,
            "diverged": res.diverged,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        json_path.write_text(json.dumps(records, indent=1), encoding="utf-8")
        print(f"[{i + 1}/{len(plan)}] {run_id}: last loss {res.losses[-1]:.4f} final_val {res.final_loss:.4f} "
              f"({records[run_id]['seconds']:.0f} s)", flush=True)
    curves = []
    for run_id, rec in records.items():
        cfg = TinyLMConfig(**rec["config"])
        curves.append(to_curve(run_id, Schedule.from_json(rec["schedule"]), cfg, rec["steps"], rec["losses"]))
    csv_name = "tiny_lm_curves.csv"
    write_curves_csv(out_dir / csv_name, curves)
    write_readme(out_dir, records, command.strip(), csv_name)
    print(f"wrote {out_dir / csv_name} ({len(curves)} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
