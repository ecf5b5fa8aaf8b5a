"""The ``optlaws divergence fit`` and ``optlaws divergence predict`` subcommands.

* ``divergence fit TABLE.csv --out DIV.json``: fit the stability criterion on runs with a
  known ``diverged`` (0/1) outcome and write its JSON file (parameters, formula, data,
  training diagnostics); prints the formula on stdout.
* ``divergence predict DIV.json TABLE.csv --out PRED.csv``: write ``run_id,p_diverge,diverged``
  for every run of TABLE.csv (``-`` writes to stdout).

TABLE.csv: ``run_id, peak_lr, batch_size, model_size, tokens`` and optional ``warmup_steps``
(interface.md section 3). Bad input raises :class:`InputError` (one line, exit code 2).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any, TextIO

from optuna_optlaws._errors import InputError


def register(subparsers: Any) -> None:
    """Add ``divergence fit`` and ``divergence predict`` to the ``optlaws`` parser."""
    div = subparsers.add_parser(
        "divergence",
        help="fit / apply a divergence criterion over peak LR, batch size, N, D, warmup",
        description="A stability law: p_diverge = Phi((ln peak_lr - ln eta_crit(N, B, D, warmup)) / scale),"
        " eta_crit a power law in N, B, D (and 1 + warmup) with a curvature in ln B and a lower value for short"
        " runs (D/B, optimizer steps x sequence length, below a fitted S_c); fitted by interval censoring of each"
        " (N, B, D[, warmup]) group's critical LR between its highest stable and lowest diverged peak LR.",
    )
    sub = div.add_subparsers(dest="divergence_command", metavar="ACTION")
    sub.required = True

    fit = sub.add_parser("fit", help="fit the criterion on runs with known outcomes",
                         description="Fit on TABLE.csv (run_id,peak_lr,batch_size,model_size,tokens"
                         "[,warmup_steps],diverged) and write the criterion file (JSON).")
    fit.add_argument("table", metavar="TABLE.csv", help="one row per run, with a diverged column (0/1)")
    fit.add_argument("--out", metavar="DIV.json", required=True, help="where to write the criterion")
    fit.set_defaults(handler=_run_fit)

    pred = sub.add_parser("predict", help="predict p_diverge for runs",
                          description="Write run_id,p_diverge,diverged for every run of TABLE.csv.")
    pred.add_argument("criterion", metavar="DIV.json", help="file written by 'optlaws divergence fit'")
    pred.add_argument("table", metavar="TABLE.csv", help="one row per run (diverged column not needed)")
    pred.add_argument("--out", metavar="PRED.csv", required=True, help="where to write predictions ('-': stdout)")
    pred.set_defaults(handler=_run_predict)


def _run_fit(args: argparse.Namespace) -> int:
    from optuna_optlaws.divergence._table import read_run_table
    from optuna_optlaws.divergence.criterion import DivergenceCriterion

    table = read_run_table(args.table, need_diverged=True)
    try:
        crit = DivergenceCriterion().fit(table)
    except InputError as exc:
        raise InputError(f"{args.table}: {exc}") from None
    try:
        crit.save(args.out)
    except OSError as exc:
        raise InputError(f"--out {args.out}: cannot write: {exc.strerror or exc}") from None
    d = crit.diagnostics
    print(crit.formula())
    print(f"fitted on {len(table)} runs ({int(table.diverged.sum()) if table.diverged is not None else 0} diverged):"
          f" train F1 {d['train_f1']:.3f}, accuracy {d['train_accuracy']:.3f}")
    return 0


def _write_predictions(handle: TextIO, run_ids: list[str], p: Any) -> None:
    w = csv.writer(handle, lineterminator="\n")
    w.writerow(["run_id", "p_diverge", "diverged"])
    for rid, pv in zip(run_ids, p, strict=True):
        w.writerow([rid, f"{float(pv):.6g}", int(pv >= 0.5)])


def _run_predict(args: argparse.Namespace) -> int:
    from optuna_optlaws.divergence._table import read_run_table
    from optuna_optlaws.divergence.criterion import DivergenceCriterion

    crit = DivergenceCriterion.load(args.criterion)
    table = read_run_table(args.table)
    try:
        p = crit.predict_proba(table)
    except InputError as exc:
        raise InputError(f"{args.table}: {exc}") from None
    if args.out == "-":
        _write_predictions(sys.stdout, table.run_ids, p)
        return 0
    try:
        with Path(args.out).open("w", newline="", encoding="utf-8") as handle:
            _write_predictions(handle, table.run_ids, p)
    except OSError as exc:
        raise InputError(f"--out {args.out}: cannot write: {exc.strerror or exc}") from None
    return 0
