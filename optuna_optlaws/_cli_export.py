"""``optlaws export``: a study's trials as a curves file.

Each trial that carries a schedule (:func:`~optuna_optlaws.suggest_schedule` or
:func:`~optuna_optlaws.set_schedule`) becomes one run ``trial_<number>`` of the long
curves format (``interface.md``, section 1): its schedule as ``lr`` knots, its reports
(``trial.report(loss, step)``) as ``loss`` rows, its model size and tokens per step. The
file then goes to ``optlaws fit``, ``rank`` or ``replay`` like any logged runs: fit the
law a study's pruner would fit, or replay a finished sweep under other pruners.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from optuna_optlaws._errors import InputError
from optuna_optlaws.curves import Curve, knotted, write_curves_csv

STATES = ("complete", "pruned", "fail", "running")
"""Trial states ``--states`` accepts (Optuna's, lower case)."""

def register(subparsers: Any) -> None:
    """Add ``export`` to the ``optlaws`` parser."""
    p = subparsers.add_parser(
        "export",
        help="write a study's trials (schedules and reports) as a curves file",
        description="Write the trials of an Optuna study that carry a schedule as a curves file "
        "(run_id trial_<number>; lr knots of the schedule; one loss row per report).",
    )
    p.add_argument("storage", metavar="STORAGE", help="Optuna storage URL (sqlite:///x.db, postgresql://...) "
                   "or the path of a SQLite file")
    p.add_argument("--study", default=None, help="study name (default: the storage's only study)")
    p.add_argument("--states", default="complete", metavar="STATE,...",
                   help=f"trial states to export, comma-separated from {', '.join(STATES)} (default: complete)")
    p.add_argument("--out", metavar="CURVES.csv", required=True, help="where to write the curves file")
    p.set_defaults(handler=_run_export)


@dataclass
class Exported:
    """What :func:`study_curves` took and left: the runs, and the trials of the chosen
    states left out or cut, by number."""

    curves: list[Curve] = field(default_factory=list)
    no_schedule: list[int] = field(default_factory=list)
    no_report: list[int] = field(default_factory=list)
    past_end: dict[int, int] = field(default_factory=dict)
    """Trial number -> reports at or past its schedule's last step, left out."""
    parent: str | None = None
    """The run every trial continues (a study with a parent run): the first of ``curves``,
    every other one continuing it (``resume_from``, ``resume_step``)."""


def parse_states(text: str) -> list[str]:
    """The ``--states`` list, checked against :data:`STATES`."""
    states = [s.strip().lower() for s in text.split(",") if s.strip()]
    bad = [s for s in states if s not in STATES]
    if bad or not states:
        raise InputError(f"--states {text!r}: expected a comma-separated list of {', '.join(STATES)}")
    return states


def storage_url(text: str, *, create: bool = False) -> str:
    """An Optuna storage URL for ``text``: a URL as given, a file path as ``sqlite:///path``.
    A SQLite file must exist (Optuna would otherwise create it empty), or with ``create``
    at least its folder; :class:`InputError` naming ``text`` otherwise."""
    url = text if "://" in text else f"sqlite:///{text}"
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if create and not path.parent.is_dir():
            raise InputError(f"storage {text!r}: no folder for the SQLite file")
        if not create and not path.is_file():
            what = f"no SQLite file at {str(path)!r}" if "://" in text else "not a storage URL and no such file"
            raise InputError(f"storage {text!r}: {what}")
    return url


def open_storage(url: str, given: str) -> tuple[Any, list[str]]:
    """Optuna's storage at ``url`` and the names of its studies; :class:`InputError`
    naming ``given`` (what the user typed) when it cannot be read."""
    import optuna

    try:
        rdb = optuna.storages.get_storage(url)  # opened once for every read of the command
        return rdb, [s.study_name for s in rdb.get_all_studies()]
    except Exception as exc:  # any storage error: a bad URL, an unreachable server
        raise InputError(f"storage {given!r}: cannot be read ({' '.join(str(exc).split())[:160]})") from None


def choose_study(storage: str, names: Sequence[str], study_name: str | None) -> str:
    """``study_name`` when the storage holds it, else the storage's only study when none
    is named; otherwise :class:`InputError` listing the studies it holds."""
    listed = ", ".join(repr(n) for n in names) or "none"
    if study_name is None:
        if len(names) != 1:
            raise InputError(f"storage {storage!r} holds {len(names)} studies ({listed}): name one with --study")
        return names[0]
    if study_name not in names:
        raise InputError(f"storage {storage!r}: no study {study_name!r} (it holds {listed})")
    return study_name


def study_curves(storage: str, study_name: str | None, states: Sequence[str]) -> tuple[str, Exported]:
    """The chosen study's name and its trials of ``states`` as curves (see the module
    docstring); :class:`InputError` naming the storage when the study cannot be found."""
    import optuna

    from optuna_optlaws._study_state import raw_points, readable_schedule, trial_sizes
    from optuna_optlaws.parent_run import get_parent_run

    rdb, names = open_storage(storage_url(storage), storage)
    study_name = choose_study(storage, names, study_name)
    study = optuna.load_study(study_name=study_name, storage=rdb)
    wanted = {getattr(optuna.trial.TrialState, s.upper()) for s in states}
    out = Exported()
    for trial in study.get_trials(deepcopy=False, states=tuple(wanted)):
        schedule = readable_schedule(trial)
        if schedule is None:
            out.no_schedule.append(trial.number)
            continue
        steps, losses = raw_points(trial)
        inside = steps < schedule.total_steps
        if not np.all(inside):
            out.past_end[trial.number] = int(np.sum(~inside))
            steps, losses = steps[inside], losses[inside]
        if steps.size == 0:
            out.no_report.append(trial.number)
            continue
        n, tps = trial_sizes(trial)
        out.curves.append(
            Curve(f"trial_{trial.number}", knotted(schedule), steps, losses, model_size=n, tokens_per_step=tps)
        )
    parent = get_parent_run(study)
    if parent is not None and out.curves:
        out.parent = parent.run_id
        head = replace(parent.curve, schedule=knotted(parent.curve.schedule))
        out.curves = [head, *(parent.continued(c) for c in out.curves)]
    return study_name, out


def _run_export(args: argparse.Namespace) -> int:
    states = parse_states(args.states)
    name, got = study_curves(args.storage, args.study, states)
    if not got.curves:
        raise InputError(
            f"storage {args.storage!r}, study {name!r}: no {'/'.join(states)} trial with a schedule and a report "
            "to export (schedules come from suggest_schedule or set_schedule)"
        )
    write_curves_csv(args.out, got.curves)
    runs = got.curves[1:] if got.parent is not None else got.curves
    reports = sum(int(c.steps.size) for c in runs)
    diverged = sum(int(np.sum(~np.isfinite(c.losses))) for c in runs)
    print(f"study: {name}")
    if got.parent is not None:
        print(f"parent: {got.parent} (written first; every trial continues it)")
    print(f"exported: {len(runs)} trials ({', '.join(states)}), {reports} reports"
          + (f", {diverged} of them NaN or inf" if diverged else ""))
    if got.no_schedule:
        print(f"skipped (no readable schedule): trials {listed(got.no_schedule)}")
    if got.no_report:
        print(f"skipped (no report within the schedule): trials {listed(got.no_report)}")
    if got.past_end:
        print("left out (reports past the schedule's end): "
              + ", ".join(f"{k} reports of trial {t}" for t, k in sorted(got.past_end.items())))
    print(f"wrote: {args.out}")
    return 0


def listed(items: Sequence[object], most: int = 20) -> str:
    """``items`` comma-separated, at most ``most`` of them and how many more (trial
    numbers or run ids in a command's summary)."""
    text = ", ".join(str(n) for n in items[:most])
    return text + (f" and {len(items) - most} more" if len(items) > most else "")

