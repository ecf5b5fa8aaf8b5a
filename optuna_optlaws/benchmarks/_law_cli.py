"""The ``optlaws bench laws`` subcommand: the law accuracy benchmark
(:mod:`optuna_optlaws.benchmarks.law_accuracy`)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add ``bench laws`` to the ``optlaws`` parser."""
    from optuna_optlaws.benchmarks.law_accuracy import add_arguments

    bench = subparsers.add_parser("bench", help="benchmarks that write their results under studies/")
    which = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    which.required = True
    laws = which.add_parser(
        "laws",
        help="accuracy of every law on held-out schedules, sizes and data; timing",
        description="Fit every law on the same curves, score the held-out ones, write README.md, "
        "results.json and figures.",
    )
    add_arguments(laws)
    laws.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from optuna_optlaws.benchmarks.law_accuracy import main_from_args

    return main_from_args(args, "optlaws bench laws")
