"""The fine-tuning runs under every training seed, as one curves file.

``finetune.py`` trains each fine-tuning schedule under several seeds (the seed orders the
training batches): the first seed's curves go to ``studies/finetune/curves.csv``, the
others' held-out losses to ``runs.json`` (``other_seeds``). This script writes them all
as runs of one curves file, ``studies/finetune/seed_curves.csv`` (run ``<run_id>`` for
the first seed, ``<run_id>@seed<s>`` for seed ``s``; the parent ``pre`` once), so that
``optlaws noise studies/finetune/seed_curves.csv`` measures the run-to-run noise of a
fine-tuning run's final loss from the repeated schedules. Trains nothing.

Usage (repository root, a second)::

    python examples/tiny_lm/seed_curves.py
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from optuna_optlaws.benchmarks.transfer import load_setting, read_runs_json
from optuna_optlaws.curves import Curve, write_curves_csv

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--curves", type=Path, default=ROOT / "studies" / "finetune" / "curves.csv")
    ap.add_argument("--out", type=Path, default=ROOT / "studies" / "finetune" / "seed_curves.csv")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    setting = load_setting("finetune", args.curves)
    if setting.seed_losses is None:
        raise SystemExit(f"seed_curves.py: {args.curves.with_name('runs.json')} holds no other seed of every run")
    records = read_runs_json(args.curves.with_name("runs.json"))
    runs: list[Curve] = [setting.parent]
    for c in setting.candidates:
        seeds = ["first", *records[c.run_id]["other_seeds"]]
        for seed, losses in zip(seeds, setting.seed_losses[c.run_id], strict=True):
            runs.append(replace(c, run_id=c.run_id if seed == "first" else f"{c.run_id}@seed{seed}", losses=losses))
    write_curves_csv(args.out, runs)
    print(f"wrote {args.out}: {len(runs) - 1} runs of {len(setting.candidates)} schedules, and the parent "
          f"{setting.parent.run_id!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
