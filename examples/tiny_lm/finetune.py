"""Fine-tuning curves: the tiny LM pretrained on the standard library's sources, then
fine-tuned on a small text corpus under several LR schedules; writes the curves file.

Base model: the stage-1 run of ``continual.py`` (``--pre-steps`` steps on ``stdlib``,
cosine ``3e-3 -> 3e-4``; cached, so running both trains it once). Fine-tuning: ``--steps``
optimizer steps on the first ``--train-bytes`` bytes of the ``site_docs`` corpus (the
installed packages' text files: mostly English prose and reStructuredText; small, so it
is seen for several epochs and the held-out loss can rise again), fresh AdamW state, under
constant, cosine, linear and WSD schedules at peak LRs 1e-4 to 3e-3 and warmups of 0 to 60
steps (21 runs), plus one run from random weights as the reference. Each fine-tuning
run is trained again under ``--seeds`` beyond the first (the seed orders the training
batches; the weights start from the same ``pre``): their held-out curves, in ``runs.json``
(``other_seeds``: seed -> losses at the run's ``steps``; the first seed's are ``losses`` and
``curves.csv``), give each schedule's expected final loss (the mean over seeds of the last
held-out loss, in the README) and the seed noise, which the transfer benchmark uses as the
truth to rank against (and, averaged over seeds, as the curves of a second fit).

Writes ``studies/finetune/curves.csv`` (long curves format with ``resume_from`` and
``resume_step``, as in ``continual.py``: steps count from 0 at the start of fine-tuning, the
run starts from the weights its parent had after the parent's step ``resume_step``; the
``pre`` run's losses are on ``stdlib``, the fine-tuning runs' on ``site_docs``),
``runs.json`` and ``README.md``.

Usage (repository root; ~10 minutes of one CPU core with the default three seeds)::

    nice -n 10 python examples/tiny_lm/finetune.py
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from optuna_optlaws import Schedule
from optuna_optlaws.curves import Curve, write_curves_csv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from continual import pre_schedule
from tinylm import TinyLMConfig, corpus_files, curve_of, loss_of_state, pretrained, train

ROOT = Path(__file__).resolve().parents[2]


def finetune_plan(steps: int) -> list[tuple[str, Schedule, bool]]:
    """``(run_id, schedule, from_pretrained)`` of the fine-tuning runs."""
    w = steps // 10
    plan: list[tuple[str, Schedule, bool]] = []
    for peak, tag in ((1e-4, "1e-4"), (3e-4, "3e-4"), (1e-3, "1e-3"), (3e-3, "3e-3")):
        plan.append((f"ft_const_p{tag}", Schedule.constant(peak, steps, 0), True))
    for peak, tag in ((3e-4, "3e-4"), (1e-3, "1e-3"), (3e-3, "3e-3")):
        plan.append((f"ft_cos_p{tag}", Schedule.cosine(peak, steps, w, final_lr=0.0), True))
    plan.append(("ft_linear_p1e-3", Schedule.linear(1e-3, steps, w, final_lr=0.0), True))
    plan.append(("ft_wsd_p1e-3", Schedule.wsd(1e-3, steps, w, final_lr=1e-5, cooldown_fraction=0.2), True))
    plan.append(("scratch_cos_p3e-3", Schedule.cosine(3e-3, steps, w, final_lr=0.0), False))
    # Added later (appended so the runs above keep their order and curves): fill the
    # family x peak-LR grid (1e-4, 3e-4, 1e-3, 3e-3; warmup ``w``; WSD ending at peak/100),
    # then warmup variants (0, ``w``, ``2 w`` steps) at peak 1e-3.
    plan.append(("ft_cos_p1e-4", Schedule.cosine(1e-4, steps, w, final_lr=0.0), True))
    for peak, tag in ((1e-4, "1e-4"), (3e-4, "3e-4"), (3e-3, "3e-3")):
        plan.append((f"ft_linear_p{tag}", Schedule.linear(peak, steps, w, final_lr=0.0), True))
    for peak, tag in ((1e-4, "1e-4"), (3e-4, "3e-4"), (3e-3, "3e-3")):
        plan.append((f"ft_wsd_p{tag}", Schedule.wsd(peak, steps, w, final_lr=peak / 100, cooldown_fraction=0.2), True))
    for wu in (0, 2 * w):
        plan.append((f"ft_cos_p1e-3_w{wu}", Schedule.cosine(1e-3, steps, wu, final_lr=0.0), True))
    for wu in (0, 2 * w):
        plan.append((f"ft_wsd_p1e-3_w{wu}", Schedule.wsd(1e-3, steps, wu, final_lr=1e-5, cooldown_fraction=0.2), True))
    plan.append((f"ft_const_p1e-3_w{w}", Schedule.constant(1e-3, steps, w), True))
    return plan


def _last_by_seed(record: dict[str, Any]) -> list[float]:
    """A run's last finite held-out loss (nats/byte) under each training seed, the first seed's first."""
    curves = [record["losses"], *record["other_seeds"].values()]
    return [next((v for v in reversed(c) if math.isfinite(v)), math.nan) for c in curves]


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"finetune.py: --seeds {text!r} is not a comma-separated list of integers") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"finetune.py: --seeds {text!r} needs at least one seed, none repeated")
    return seeds


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pre-steps", type=int, default=600, help="pretraining optimizer steps (default 600)")
    ap.add_argument("--steps", type=int, default=300, help="fine-tuning optimizer steps (default 300)")
    ap.add_argument("--train-bytes", type=int, default=100_000, help="fine-tuning set size in bytes (default 1e5)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "studies" / "finetune")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", default="0,1,2",
                    help="training seeds, comma-separated (default 0,1,2); the first one's curves go to curves.csv")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = _seeds(args.seeds)
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    base = TinyLMConfig()
    ft_cfg = replace(base, corpus="site_docs", train_bytes=args.train_bytes, seed=seeds[0])
    pre_sched = pre_schedule(args.pre_steps)
    pre_res, pre_state = pretrained(pre_sched, base)
    records: dict[str, dict[str, Any]] = {
        "pre": {"schedule": pre_sched.to_json(), "config": asdict(base), "final_loss": pre_res.final_loss,
                "seconds": round(pre_res.seconds, 2), "corpus": "stdlib"}
    }
    curves: list[Curve] = [curve_of("pre", pre_sched, pre_res, base.batch_size)]
    pre_on_ft = loss_of_state(pre_state, ft_cfg)
    for run_id, sched, from_pre in finetune_plan(args.steps):
        res, state = train(sched, ft_cfg, init_state=pre_state if from_pre else None, return_state=True)  # type: ignore[misc]
        parent, rstep = ("pre", args.pre_steps - 1) if from_pre else (None, None)
        curves.append(curve_of(run_id, sched, res, ft_cfg.batch_size, parent, rstep))
        best = min(res.losses) if res.losses else float("nan")
        other: dict[str, list[float]] = {}
        if from_pre:
            for seed in seeds[1:]:
                again = train(sched, replace(ft_cfg, seed=seed), init_state=pre_state)
                assert not isinstance(again, tuple)
                other[str(seed)] = again.losses
        records[run_id] = {"other_seeds": other, "schedule": sched.to_json(), "config": asdict(ft_cfg),
                           "steps": res.steps,
                           "losses": res.losses, "final_loss": res.final_loss, "best_loss": best,
                           "final_loss_stdlib": loss_of_state(state, base), "seconds": round(res.seconds, 2),
                           "resume_from": parent, "resume_step": rstep, "corpus": "site_docs"}
        print(f"{run_id}: last {res.losses[-1]:.4f} best {best:.4f} final {res.final_loss:.4f} ({res.seconds:.0f} s); "
              f"last by seed {', '.join(f'{v:.4f}' for v in _last_by_seed(records[run_id]))}", flush=True)
    write_curves_csv(out / "curves.csv", curves)
    (out / "runs.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    epochs = args.steps * ft_cfg.tokens_per_step / args.train_bytes
    lines = [
        "# Fine-tuning curves of the tiny LM (generated)",
        "",
        "Written by `examples/tiny_lm/finetune.py`; do not edit by hand.",
        "",
        f"Command: `{' '.join(['python examples/tiny_lm/finetune.py', *argv])}`",
        "",
        f"Base `pre`: {args.pre_steps} steps on `stdlib` ({pre_sched.family}, peak {pre_sched.peak_lr:g}).",
        f"Fine-tuning: {args.steps} steps on the first {args.train_bytes} bytes of `site_docs` "
        f"({len(corpus_files('site_docs'))} files of this machine's site-packages; {epochs:.1f} epochs), "
        "fresh AdamW state, `resume_from=pre`, `resume_step` = pre's last step; `scratch_*` from random weights.",
        f"Loss of `pre` on the fine-tuning corpus before fine-tuning: {pre_on_ft:.4f} nats/byte.",
        f"Machine: {platform.machine()}, torch {torch.__version__}, 1 thread. Training seed {seeds[0]} for `pre`, "
        f"the scratch run and the curves in `curves.csv`; each fine-tuning run also trained with seeds "
        f"{', '.join(map(str, seeds[1:])) or '(none)'} (batch order; same starting weights).",
        "",
        "Loss columns in nats/byte on `site_docs` held-out text: lowest and last of the periodic held-out "
        "measurements, the final objective on a larger held-out set, and the last periodic measurement "
        "averaged over the seeds (with their standard deviation).",
        "",
        "| run_id | family | peak lr | warmup | lowest held-out loss | last held-out loss | final loss "
        "| last, mean over seeds | seed sd | final loss on stdlib | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    sds = []
    for run_id, rec in records.items():
        if run_id == "pre":
            continue
        s = Schedule.from_json(rec["schedule"])
        vals = _last_by_seed(rec)
        sd = float(statistics.stdev(vals)) if len(vals) > 1 else float("nan")
        if len(vals) > 1:
            sds.append(sd)
        lines.append(f"| {run_id} | {s.family} | {s.peak_lr:g} | {s.warmup_steps} | {rec['best_loss']:.4f} | "
                     f"{vals[0]:.4f} | {rec['final_loss']:.4f} | {statistics.fmean(vals):.4f} | {sd:.4f} | "
                     f"{rec['final_loss_stdlib']:.4f} | {rec['seconds']:.0f} |")
    if sds:
        lines += ["", f"Seed noise of the last held-out loss: root mean square of the per-run seed sd "
                      f"{math.sqrt(statistics.fmean(v * v for v in sds)):.4f} nats over {len(sds)} runs."]
    lines.append("")
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {out / 'curves.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
