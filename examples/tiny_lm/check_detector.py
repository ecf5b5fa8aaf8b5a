"""Run the online divergence detector on real curves and say where it fires.

For every run of the given curves files: the first step at which the loss (its logged
value) is above 5 nats or not finite, the step at which
:func:`optuna_optlaws.divergence.online.detect_divergence` fires on the run's reports
(in order, as a pruner would see them) and its reason. Writes a markdown table (written
by this script).

Usage (repository root; seconds)::

    python examples/tiny_lm/check_detector.py studies/diverge_tiny/tiny_lm_curves.csv \\
        studies/warmup/tiny_lm_curves.csv --out studies/diverge_tiny/detector.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from optuna_optlaws.curves import read_curves_csv
from optuna_optlaws.divergence.online import detect_divergence

LABEL_NATS = 5.0
"""A logged loss above this many nats (or not finite) counts as diverged in the table."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("curves", nargs="+", type=Path, help="curves CSV files")
    ap.add_argument("--out", type=Path, required=True, help="markdown file to write")
    args = ap.parse_args(argv)
    lines = [
        "# Online divergence detector on real curves (generated)",
        "",
        "Written by `examples/tiny_lm/check_detector.py`; do not edit by hand.",
        f"Command: `python examples/tiny_lm/check_detector.py {' '.join(argv)}`",
        "",
        f"`above {LABEL_NATS:g} nats`: first logged step whose loss is above {LABEL_NATS:g} nats or not finite. "
        "`detector`: the step at which `detect_divergence` fires on the reports so far, and why.",
        "",
        "| file | run_id | reports | last loss | above 5 nats | detector | reason |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in args.curves:
        for c in read_curves_csv(path):
            bad = np.flatnonzero(~np.isfinite(c.losses) | (c.losses > LABEL_NATS))
            sig = detect_divergence(c.steps, c.losses)
            lines.append(
                f"| {path} | {c.run_id} | {c.steps.size} | {c.losses[-1]:.4f} | "
                f"{int(c.steps[bad[0]]) if bad.size else '-'} | {sig.step if sig else '-'} | "
                f"{sig.reason if sig else '-'} |"
            )
    text = "\n".join([*lines, ""])
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
