"""The ``optlaws`` command line: fit, predict, rank, divergence, replay, bench, export, import,
noise.

Each subcommand lives in its own module, which exposes ``register(subparsers)``; this
module only wires them and turns :class:`~optuna_optlaws.InputError`, a file it cannot
read or write, and a bad argument into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

from optuna_optlaws._errors import InputError

COMMAND_MODULES = (
    "optuna_optlaws._cli_laws",  # fit, predict, rank
    "optuna_optlaws.divergence._cli",  # divergence fit / predict
    "optuna_optlaws.benchmarks._law_cli",  # bench laws
    "optuna_optlaws.benchmarks._replay_cli",  # replay
    "optuna_optlaws._cli_export",  # export
    "optuna_optlaws._cli_import",  # import
    "optuna_optlaws._cli_noise",  # noise
)
"""Modules that each add their subcommands with ``register(subparsers)``."""


class _OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit code 2), as every
    other error of the command line is; ``--help`` still prints the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (subcommands from :data:`COMMAND_MODULES`; theirs are of
    the same class, so their errors are one line too)."""
    parser = _OneLineParser(
        prog="optlaws",
        description="Fit loss-vs-LR-schedule laws, predict and rank schedules, benchmark pruners.",
    )
    from optuna_optlaws import __version__

    parser.add_argument("--version", action="version", version=f"optlaws (optuna-optlaws) {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def _warning_line(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, *a: object, **k: object
) -> str:
    return f"warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``optlaws`` console script; returns the exit code."""
    warnings.formatwarning = _warning_line  # type: ignore[assignment]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.handler(args)
    except InputError as exc:
        print(f"optlaws {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file the command could not read or write (a folder, no permission)
        if isinstance(exc, BrokenPipeError):
            return 0
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"optlaws {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
