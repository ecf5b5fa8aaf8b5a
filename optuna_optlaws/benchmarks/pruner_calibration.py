"""How well does the law's prediction of a run's final loss, conditioned on the run's
prefix, know its own error, as a function of the fraction of the schedule seen?

    python -m optuna_optlaws.benchmarks.pruner_calibration CURVES.csv --group-index 0 \\
        [--law optlaw] [--out studies/replay/tiny_lm/calibration.md]

For one replay group (see :func:`optuna_optlaws.benchmarks.replay.group_curves`) and each
of its runs: the law is fitted on the *other* runs (leave one curve out) and, apart, on
all runs (in sample, as the pruner's time-split residuals are); it is conditioned on the
run's prefix up to fraction ``f`` of its schedule (as the pruner does, through
:func:`~optuna_optlaws._pruner._decision.law_prefix`) and its predicted final loss is
compared with the run's true final loss. Per ``f``: the error's mean and spread, its 5%
quantile (how far below the prediction the truth fell), the law's mean 90%
half-width and the interval's coverage. Then how often a held-out run ends below the
lower end, raw and calibrated as the pruner does, with the law fitted on the other runs
and, apart, early in a study, fitted on the few complete runs only (:func:`early_table`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def errors(curves: Sequence, law_name: str, *, loco: bool, seed: int = 0) -> list[dict]:
    """Per run and fraction: true final, predicted mean/lo/hi (conditioned on the prefix)."""
    from optuna_optlaws.laws import make_law

    out = []
    law_all = None if loco else make_law(law_name).fit(list(curves), seed=seed)
    for i, c in enumerate(curves):
        law = make_law(law_name).fit([g for j, g in enumerate(curves) if j != i], seed=seed) if loco else law_all
        assert law is not None
        out += [row for f in FRACTIONS if (row := conditioned(law, c, f)) is not None]
    return out


def conditioned(law: Any, c: Any, f: float) -> dict | None:
    """The law's prediction of run ``c``'s final loss conditioned on its prefix up to
    fraction ``f`` of its schedule (as the pruner hands it over); ``None`` with fewer
    than two finite points in that prefix, or when the law cannot predict it."""
    from optuna_optlaws._pruner._calibration import conditioned_at
    from optuna_optlaws._pruner._decision import law_prefix

    pred = conditioned_at(law, c, f, 2, law_prefix)
    if pred is None:
        return None
    return {"run": c.run_id, "f": f, "true": float(c.final_loss), "mean": float(pred.mean[0]),
            "lo": float(pred.lo[0]), "hi": float(pred.hi[0]),
            "sd": float(pred.sd(law.interval_level)[0]), "schedule": c.schedule}


def residuals_of(rows: Sequence[dict]) -> Any:
    """The calibration residuals (true - predicted final loss, with the law's sd) of
    :func:`conditioned` rows, as the pruner's calibration takes them."""
    from optuna_optlaws._pruner._calibration import Residuals
    from optuna_optlaws._residual_gp import schedule_descriptors

    return Residuals(np.array([r["true"] - r["mean"] for r in rows]), np.array([r["sd"] for r in rows]),
                     schedule_descriptors([r["schedule"] for r in rows], cache=True))


EARLY_FRACTIONS = (0.1, 0.5)


def early_table(curves: Sequence, law_name: str, ns: Sequence[int] = (5, 8, 12, 16), draws: int = 6,
                seed: int = 0) -> list[str]:
    """Early in a study the pruner's law is fitted on the few complete runs there are, not
    on all but one: per ``n``, ``draws`` random sets of ``n`` runs; the law fitted on
    them (and calibrated on their in-sample errors, as the pruner does) predicts each
    other run whose peak LR they bracket as the pruner's extrapolation guard asks
    (:func:`~optuna_optlaws._pruner._calibration.bracketed`; the guard holds back the rest)."""
    from optuna_optlaws._pruner._calibration import BRACKET_RUNS, TRUSTED_CALIBRATION, bracketed, calibrate
    from optuna_optlaws.laws import make_law

    rng = np.random.default_rng(seed)
    lines = [
        "## Early in a study: the law fitted on the n complete runs only",
        "",
        f"{draws} random sets of `n` runs per `n`; the law is fitted on them alone, calibrated on their "
        f"in-sample errors and asked about every other run whose peak LR has {BRACKET_RUNS} of theirs on each side, "
        "as the pruner's extrapolation guard asks "
        f"(below {TRUSTED_CALIBRATION} runs the calibrated interval is never narrower than the law's own). "
        "Nominal rate below the lower end: 5%.",
        "",
        "| complete runs n | fraction seen | predictions | below lower end, raw | below lower end, calibrated "
        "| lower half-width raw (nats) | calibrated |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in ns:
        if n >= len(curves):
            continue
        stats: dict[float, list[tuple[bool, bool, float, float]]] = {f: [] for f in EARLY_FRACTIONS}
        for _ in range(draws):
            pick = set(int(i) for i in rng.choice(len(curves), n, replace=False))
            fit = [c for i, c in enumerate(curves) if i in pick]
            peaks = [c.schedule.peak_lr for c in fit]
            law = make_law(law_name).fit(fit, seed=seed)
            for f in EARLY_FRACTIONS:
                rows = [r for c in fit if (r := conditioned(law, c, f)) is not None]
                if len(rows) < 3:
                    continue
                res = residuals_of(rows)
                for i, c in enumerate(curves):
                    if i in pick or not bracketed(c.schedule.peak_lr, peaks):
                        continue
                    t = conditioned(law, c, f)
                    if t is None:
                        continue
                    cal = calibrate(t["mean"], t["sd"], t["schedule"], res, 0.9, 0.0, t["mean"] - t["lo"],
                                    t["hi"] - t["mean"])
                    stats[f].append((t["true"] < t["lo"], t["true"] < cal.lo, t["mean"] - t["lo"], cal.mean - cal.lo))
        for f, st in stats.items():
            if st:
                a = np.array(st, dtype=np.float64)
                lines.append(f"| {n} | {f:.1f} | {len(st)} | {a[:, 0].mean():.2f} | {a[:, 1].mean():.2f} "
                             f"| {a[:, 2].mean():.3f} | {a[:, 3].mean():.3f} |")
    return [*lines, ""]


def table(rows: list[dict]) -> list[str]:
    """Markdown table of the error by fraction."""
    lines = ["| fraction seen | error mean (nats) | error sd | error 5% quantile | law 90% half-width | coverage |",
             "|---|---|---|---|---|---|"]
    for f in FRACTIONS:
        rs = [r for r in rows if r["f"] == f]
        if not rs:
            continue
        e = np.array([r["true"] - r["mean"] for r in rs])
        hw = np.array([(r["hi"] - r["lo"]) / 2 for r in rs])
        cov = np.mean([r["lo"] <= r["true"] <= r["hi"] for r in rs])
        lines.append(f"| {f:.1f} | {e.mean():+.4f} | {e.std():.4f} | {np.quantile(e, 0.05):+.4f} | "
                     f"{hw.mean():.4f} | {cov:.2f} |")
    return lines


def calibrated_table(loco: list[dict], insample: list[dict], repeats: int = 20, seed: int = 0) -> list[str]:
    """How often a held-out run ends below the lower end of the law's 90% interval, raw and
    calibrated as the pruner does (:func:`~optuna_optlaws._pruner._calibration.calibrate`: a GP on
    the residuals over the runs' schedules)
    on the in-sample residuals of ``n`` other runs drawn at random (``repeats`` draws)."""
    from optuna_optlaws._pruner._calibration import calibrate

    runs = sorted({r["run"] for r in loco})
    index = {(r["run"], r["f"]): r for r in insample}
    held_out = {(r["run"], r["f"]): r for r in loco}
    rng = np.random.default_rng(seed)
    lines = [
        "## The lower end of the interval: raw law vs calibrated",
        "",
        "Held-out run (law fitted on the other runs); calibration residuals: the in-sample errors of `n` "
        f"other runs drawn at random ({repeats} draws; all {len(runs) - 1} once). "
        "Nominal rate below the lower end: 5%.",
        "",
        "| complete runs n | fraction seen | below lower end, raw | below lower end, calibrated "
        "| lower half-width raw (nats) | calibrated |",
        "|---|---|---|---|---|---|",
    ]
    for n in sorted({3, 5, 8, 12, len(runs) - 1}):
        if n > len(runs) - 1 or n < 3:
            continue
        for f in (0.1, 0.2, 0.5, 0.9):
            raw = cal = tot = 0
            hw_raw, hw_cal = [], []
            for _ in range(repeats if n < len(runs) - 1 else 1):
                for run in runs:
                    t = held_out.get((run, f))
                    others = [o for o in runs if o != run and (o, f) in index]
                    if t is None or len(others) < n:
                        continue
                    pick = [others[k] for k in rng.choice(len(others), n, replace=False)]
                    res = residuals_of([index[(o, f)] for o in pick])
                    c = calibrate(t["mean"], t["sd"], t["schedule"], res, 0.9, 0.0, t["mean"] - t["lo"],
                                  t["hi"] - t["mean"])
                    raw += t["true"] < t["lo"]
                    cal += t["true"] < c.lo
                    tot += 1
                    hw_raw.append(t["mean"] - t["lo"])
                    hw_cal.append(c.mean - c.lo)
            if tot:
                lines.append(f"| {n} | {f:.1f} | {raw / tot:.2f} | {cal / tot:.2f} | {np.mean(hw_raw):.3f} "
                             f"| {np.mean(hw_cal):.3f} |")
    return [*lines, ""]


def main(argv: Sequence[str] | None = None) -> int:
    from optuna_optlaws.benchmarks.replay import group_curves
    from optuna_optlaws.curves import read_curves_csv

    p = argparse.ArgumentParser(prog="python -m optuna_optlaws.benchmarks.pruner_calibration")
    p.add_argument("curves")
    p.add_argument("--group-index", type=int, default=0)
    p.add_argument("--law", default="optlaw")
    p.add_argument("--out", default=None)
    p.add_argument("--early-n", default="5,8,12,16",
                   help="complete-run counts of the early-study table, comma-separated (default 5,8,12,16)")
    args = p.parse_args(argv)
    group = group_curves(read_curves_csv(args.curves), ("horizon", "model_size"))[args.group_index]
    lines = [
        f"# Calibration of the conditioned prediction: {args.curves}, group {group.label}",
        "",
        "Written by the command below; do not edit by hand.",
        "",
        "```",
        "python -m optuna_optlaws.benchmarks.pruner_calibration " + " ".join(argv or sys.argv[1:]),
        "```",
        "",
        f"{len(group.curves)} runs. Error = true final loss - predicted final loss (law `{args.law}` "
        "conditioned on the run's prefix up to the fraction of its schedule); negative: the run ended "
        "*below* the prediction (the direction that prunes a winner).",
        "",
    ]
    sets = {}
    for loco, title in ((True, "Law fitted on the other runs (leave one curve out)"),
                        (False, "Law fitted on all runs (in sample: what the pruner's time-split residuals see)")):
        rows = sets[loco] = errors(group.curves, args.law, loco=loco)
        lines += [f"## {title}", "", *table(rows), ""]
        per_run = {run: float(np.mean([r["true"] - r["mean"] for r in rows if r["run"] == run]))
                   for run in {r["run"] for r in rows}}
        lines += ["Per run, mean error over the fractions (most negative first): " + ", ".join(
            f"{run} {per_run[run]:+.3f}" for run in sorted(per_run, key=per_run.__getitem__)), ""]
    lines += calibrated_table(sets[True], sets[False])
    lines += early_table(group.curves, args.law, ns=[int(n) for n in args.early_n.split(",")])
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
