"""How well does a law fit the tiny LM's real curves? In-sample and one horizon out.

Fits each law on the 600-step runs of the base model in ``studies/curves/tiny_lm_curves.csv``
and writes ``studies/curves/law_check.md`` (written by this script): per run, the observed
loss at the last step, each law's prediction and its error (nats), for the fitted runs
(in-sample) and for the 1200-step runs (a longer horizon, held out). This is the check
that explains what a sampler driven by the law will prefer on this model.

Usage (repository root; ~1-3 minutes per law, about 20 times that with ``--loco``)::

    python examples/tiny_lm/check_law.py --laws optlaw,multipower [--loco] [--without-fast]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from optuna_optlaws.curves import read_curves_csv
from optuna_optlaws.laws import Law, make_law
from optuna_optlaws.laws.optlaw import OptLaw

ROOT = Path(__file__).resolve().parents[2]


NO_FAST = "optlaw-nofast"
"""The Opt-Law without its fast excess (``--without-fast``)."""


def new_law(name: str) -> Law:
    """An unfitted law by name; :data:`NO_FAST` is the Opt-Law that never tries its fast excess."""
    return OptLaw(fast_excess=False) if name == NO_FAST else make_law(name)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--curves", type=Path, default=ROOT / "studies" / "curves" / "tiny_lm_curves.csv")
    ap.add_argument("--laws", default="optlaw,multipower", help="comma-separated law names")
    ap.add_argument("--fit-steps", type=int, default=600, help="fit on the runs of this many steps")
    ap.add_argument("--out", type=Path, default=ROOT / "studies" / "curves" / "law_check.md")
    ap.add_argument("--without-fast", action="store_true",
                    help="also fit the Opt-Law without its fast excess (column optlaw-nofast), to see what it adds")
    ap.add_argument("--loco", action="store_true",
                    help="also fit each law once per fitted run without it and predict that run (leave one run out)")
    args = ap.parse_args(argv)
    curves = read_curves_csv(args.curves)
    base_size = min(c.model_size or 0.0 for c in curves)
    base = [c for c in curves if c.model_size == base_size]
    fit_on = [c for c in base if c.schedule.total_steps == args.fit_steps]
    held = [c for c in base if c.schedule.total_steps != args.fit_steps]
    laws = [name for name in args.laws.split(",") if name]
    if args.without_fast:
        laws.append(NO_FAST)
    preds: dict[str, dict[str, float]] = {}
    loco: dict[str, dict[str, float]] = {name: {} for name in laws}
    info: dict[str, str] = {}
    for name in laws:
        t0 = time.perf_counter()
        law = new_law(name).fit(fit_on, seed=0)
        preds[name] = {}
        for c in fit_on + held:
            p = law.predict(c.schedule, [c.last_step], model_size=c.model_size, tokens_per_step=c.tokens_per_step)
            preds[name][c.run_id] = float(p.mean[0])
        if args.loco:
            for i, c in enumerate(fit_on):
                held_law = new_law(name).fit([g for j, g in enumerate(fit_on) if j != i], seed=0)
                p = held_law.predict(
                    c.schedule, [c.last_step], model_size=c.model_size, tokens_per_step=c.tokens_per_step
                )
                loco[name][c.run_id] = float(p.mean[0])
        info[name] = f"{time.perf_counter() - t0:.0f} s"
        print(f"{name}: fitted on {len(fit_on)} runs ({info[name]})", flush=True)
    lines = [
        "# Laws on the tiny LM's real curves (generated)",
        "",
        "Written by `examples/tiny_lm/check_law.py`; do not edit by hand.",
        f"Command: `{' '.join(['python examples/tiny_lm/check_law.py', *argv])}`",
        "",
        f"Fitted on the {len(fit_on)} runs of {args.fit_steps} steps of the base model (N = {base_size:g}); "
        "`held out` rows are the other horizons. Loss at each run's last step (nats/byte); "
        "error = predicted - observed.",
        "",
        *(
            [f"`loo err` columns: the error on a fitted run of the law fitted on the other {len(fit_on) - 1} "
             "runs (leave one run out).", ""] if args.loco else []
        ),
        "| run_id | set | observed | "
        + " | ".join(f"{n} pred | {n} err" + (f" | {n} loo err" if args.loco else "") for n in laws) + " |",
        "|---|---|---|" + ("---|---|---|" if args.loco else "---|---|") * len(laws),
    ]
    for c in fit_on + held:
        row = f"| {c.run_id} | {'fit' if c in fit_on else 'held out'} | {c.final_loss:.4f} | "
        cells = []
        for n in laws:
            cell = f"{preds[n][c.run_id]:.4f} | {preds[n][c.run_id] - c.final_loss:+.4f}"
            if args.loco:
                cell += f" | {loco[n][c.run_id] - c.final_loss:+.4f}" if c.run_id in loco[n] else " | -"
            cells.append(cell)
        lines.append(row + " | ".join(cells) + " |")
    lines.append("")
    for n in laws:
        sets = [("fit", fit_on, preds[n]), ("held out", held, preds[n])]
        if args.loco:
            sets.append(("left out one at a time", fit_on, loco[n]))
        for label, group, pred in sets:
            if not group:
                continue
            err = np.array([pred[c.run_id] - c.final_loss for c in group])
            wsd = np.array([pred[c.run_id] - c.final_loss for c in group if c.run_id.startswith("wsd")])
            extra = f"; WSD runs mean error {wsd.mean():+.4f}" if wsd.size else ""
            lines.append(
                f"- {n}, {label}: mean abs error {np.abs(err).mean():.4f}, rms {np.sqrt(np.mean(err**2)):.4f}, "
                f"worst {np.abs(err).max():.4f}, mean error {err.mean():+.4f}{extra}."
            )
    lines.append("")
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
