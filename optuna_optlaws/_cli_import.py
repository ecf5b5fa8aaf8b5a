"""``optlaws import``: add logged runs (a curves file) to an Optuna study as finished
trials, so the study's OptLawsSampler and OptLawsPruner learn from them before it trains
anything (:mod:`optuna_optlaws.logged_runs`). The inverse of ``optlaws export``."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add ``import`` to the ``optlaws`` parser."""
    p = subparsers.add_parser(
        "import",
        help="add logged runs (a curves file) to an Optuna study as finished trials",
        description="Add each run of a curves file to an Optuna study as a finished trial (complete when its "
        "losses reach the schedule's last step, pruned otherwise) with its schedule, sizes and losses, so the "
        "study's OptLawsSampler and OptLawsPruner learn from it. Runs already added are skipped. Continued runs "
        "(resume_from) join a study whose trials continue their parent: the file's parent run becomes the "
        "parent of a study without one (set_parent_run).",
    )
    p.add_argument("curves", metavar="CURVES.csv", help="curves file (interface.md, section 1)")
    p.add_argument("storage", metavar="STORAGE", help="Optuna storage URL (sqlite:///x.db, postgresql://...) "
                   "or the path of a SQLite file (created when missing)")
    p.add_argument("--study", default=None, help="study name: created (minimise) when the storage lacks it "
                   "(default: the storage's only study)")
    p.add_argument("--runs", default=None, metavar="ID,ID,...", help="add only these runs")
    p.set_defaults(handler=_run_import)


def _run_import(args: argparse.Namespace) -> int:
    import optuna

    from optuna_optlaws._cli_export import choose_study, listed, open_storage, storage_url
    from optuna_optlaws.curves import read_curves_csv
    from optuna_optlaws.logged_runs import add_logged_runs

    runs = [r.strip() for r in args.runs.split(",") if r.strip()] if args.runs else None
    curves = read_curves_csv(args.curves, runs=runs)
    url = storage_url(args.storage, create=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" log line: this prints its own
    rdb, names = open_storage(url, args.storage)
    created = args.study is not None and args.study not in names
    if created:
        optuna.create_study(storage=rdb, study_name=args.study, direction="minimize")
        name = args.study
    else:
        name = choose_study(args.storage, names, args.study)
    study = optuna.load_study(study_name=name, storage=rdb)
    added = add_logged_runs(study, curves)
    print(f"study: {name}" + (" (created)" if created else ""))
    if added.parent is not None:
        how = "set as the study's parent run" if added.parent_set else "the study's parent run"
        print(f"parent: {added.parent} ({how}; every trial continues it)")
    if added.not_continuing:
        print(f"left out (not continuing {added.parent}): {listed(added.not_continuing)}")
    print(f"added: {len(added.complete)} complete and {len(added.pruned)} pruned trials from {args.curves}")
    if added.pruned:
        print(f"pruned (losses end before the schedule's last step, or NaN/inf): {listed(list(added.pruned))}")
    if added.already_in_study:
        print(f"skipped (already in the study): {listed(added.already_in_study)}")
    if added.no_loss:
        print(f"skipped (no loss rows): {listed(added.no_loss)}")
    return 0

