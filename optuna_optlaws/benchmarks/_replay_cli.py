"""``optlaws replay``: benchmark pruners by replaying logged runs as Optuna trials."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from optuna_optlaws._errors import InputError


def register(subparsers: Any) -> None:
    """Add the ``replay`` subcommand."""
    from optuna_optlaws.benchmarks.replay import GROUP_KEYS, PRUNERS

    p = subparsers.add_parser(
        "replay",
        help="replay logged runs as Optuna trials to benchmark pruners",
        description="Replay the runs of a curves file as trials of real Optuna studies (one study per "
        "group of comparable runs and trial order) and measure, per pruner, the share of optimizer steps "
        "trained, how often the best run survived, and the regret of the best kept run (nats).",
    )
    p.add_argument("curves", help="curves file (long CSV: run_id, step, lr, loss, ...); with --study, an "
                   "Optuna storage URL or SQLite file")
    p.add_argument("--study", default=None, metavar="NAME",
                   help="replay this study's COMPLETE trials that carry a schedule (as 'optlaws export' "
                   "writes them) instead of a curves file: a finished sweep under other pruners")
    p.add_argument(
        "--pruner",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"pruners to compare, any of {', '.join(PRUNERS)} (default: all; optlaws left out with a "
        "warning when it is not available); optlaws:tolerance=NATS[,margin=NATS] sets OptLawsPruner's "
        "regret tolerance and margin (also final_noise, min_reports, min_fraction, transfer_prior=LAW.json, "
        "transfer_prior_sd)",
    )
    p.add_argument("--orders", type=int, default=20, help="random trial orders per group (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the trial orders (default 0)")
    p.add_argument(
        "--group-by",
        default=",".join(GROUP_KEYS),
        help="what runs of one study share: comma-separated from horizon, model_size; or none "
        "(default horizon,model_size)",
    )
    p.add_argument("--report-every", type=int, default=None, metavar="STEPS",
                   help="report grid spacing in steps (default: the median logged spacing)")
    p.add_argument("--workers", type=int, default=1,
                   help="runs trained at once, as parallel workers sharing each study (time counted in optimizer "
                   "steps; default 1: each run to its end before the next)")
    p.add_argument("--storage", default=None, help="Optuna storage URL, e.g. sqlite:///replay.db (default: in memory)")
    p.add_argument("--no-parent", action="store_true",
                   help="replay the continued runs of a curves file (resume_from) as runs from scratch, without "
                   "declaring their parent run to the studies (default: each study continues the parent)")
    p.add_argument("--out", default=None, metavar="DIR", help="write README.md and results.json into DIR")
    p.set_defaults(handler=_run)

    c = subparsers.add_parser(
        "replay-combine",
        help="summarise several replays' results as one",
        description="Read the results.json of several 'optlaws replay --out DIR' folders and write one "
        "README.md and results.json: their groups side by side, each pruner summarised over all of them.",
    )
    c.add_argument("folders", nargs="+", metavar="DIR", help="folders written by 'optlaws replay --out'")
    c.add_argument("--out", required=True, metavar="DIR", help="write README.md and results.json into DIR")
    c.set_defaults(handler=_run_combine)


def _pruner_names(requested: list[str] | None) -> list[str]:
    from optuna_optlaws.benchmarks.replay import PRUNERS, parse_pruner

    if requested is None:
        names = list(PRUNERS)
        try:
            import optuna_optlaws.pruner  # noqa: F401
        except ModuleNotFoundError:
            print("warning: optuna_optlaws.pruner is not available; replaying without 'optlaws'", file=sys.stderr)
            names.remove("optlaws")
        return names
    # "a,b" lists pruners, except in "optlaws:key=value,key=value" where commas separate arguments
    names = [n.strip() for item in requested for n in ([item] if ":" in item else item.split(",")) if n.strip()]
    for n in names:
        parse_pruner(n)  # an InputError names the bad spec
    return list(dict.fromkeys(names))


def _run(args: argparse.Namespace) -> int:
    from optuna_optlaws.benchmarks.replay import format_table, run_replay, target_line, write_results
    from optuna_optlaws.curves import read_curves_csv

    group_by = [] if args.group_by.strip() == "none" else [k.strip() for k in args.group_by.split(",") if k.strip()]
    if args.report_every is not None and args.report_every < 1:
        raise InputError(f"--report-every must be >= 1, got {args.report_every}")
    if args.study is not None:
        from optuna_optlaws._cli_export import study_curves

        got = study_curves(args.curves, args.study, ["complete"])[1]
        curves = got.curves
        if not curves:
            raise InputError(f"storage {args.curves!r}, study {args.study!r}: no complete trial with a schedule")
        left = sorted(got.no_schedule + got.no_report)
        if left:
            print(f"left out (no readable schedule or no report): complete trials {', '.join(map(str, left))}")
    else:
        curves = read_curves_csv(args.curves)
    pruners = _pruner_names(args.pruner)
    results = run_replay(
        curves,
        pruners,
        orders=args.orders,
        seed=args.seed,
        group_by=group_by,
        report_every=args.report_every,
        storage=args.storage,
        from_scratch=args.no_parent,
        workers=args.workers,
    )
    results["curves"] = args.curves
    results["report_every"] = args.report_every
    print(f"replay of {args.curves}: {len(results['groups'])} groups")
    for g in results["groups"]:
        print(f"  {g['group']}: {len(g['runs'])} runs, {g['orders']} orders, best {g['best_run']}")
    print(format_table(results))
    print(target_line(results))
    if args.out:
        write_results(args.out, results, _command(args, pruners))
        print(f"wrote {args.out}/README.md and results.json")
    return 0


def _run_combine(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from optuna_optlaws.benchmarks.replay import combine_results, format_table, target_line, write_results

    parts = []
    for folder in args.folders:
        path = Path(folder) / "results.json"
        try:
            results = json.loads(path.read_text())
            if not isinstance(results, dict) or not isinstance(results.get("pruners"), dict):
                raise ValueError("no 'pruners' table")
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: not the results of 'optlaws replay --out' ({exc})") from None
        parts.append((folder, results))
    combined = combine_results(parts)
    print(format_table(combined))
    print(target_line(combined))
    command = " ".join(shlex.quote(p) for p in ["optlaws", "replay-combine", *args.folders, "--out", args.out])
    write_results(args.out, combined, command)
    print(f"wrote {args.out}/README.md and results.json")
    return 0


def _command(args: argparse.Namespace, pruners: list[str]) -> str:
    """The command that reruns this replay, rebuilt from the parsed options."""
    parts = ["optlaws", "replay", args.curves]
    if args.study is not None:
        parts += ["--study", args.study]
    parts += ["--pruner", *pruners, "--orders", str(args.orders), "--seed", str(args.seed), "--group-by", args.group_by]
    if args.report_every is not None:
        parts += ["--report-every", str(args.report_every)]
    if args.storage:
        parts += ["--storage", args.storage]
    if args.no_parent:
        parts.append("--no-parent")
    if args.workers != 1:
        parts += ["--workers", str(args.workers)]
    parts += ["--out", args.out]
    return " ".join(shlex.quote(p) for p in parts)
