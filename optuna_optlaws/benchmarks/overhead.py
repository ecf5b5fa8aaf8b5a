"""Overhead of OptLawsPruner and OptLawsSampler against Optuna's MedianPruner.

    python -m optuna_optlaws.benchmarks.overhead [--trials 100] [--reports 500]
        [--law momentum] [--storages inmemory,sqlite] [--logged] [--db-dir DIR] [--out studies/overhead]

For each storage (Optuna's in-memory storage, and SQLite in a fresh file under
``--db-dir``), two studies run the *same* trials (a seeded RandomSampler suggests the
schedule of each with :func:`~optuna_optlaws.suggest_schedule`; the loss is
:func:`~optuna_optlaws.benchmarks._synthetic.synthetic_loss` with 0.01 nats of seeded
noise), ``--reports`` reports per trial, one with ``MedianPruner()`` and one with
``OptLawsPruner(law)``. The two studies advance in lockstep, trial k of one then trial k
of the other, so both see the same machine load. Every ``trial.should_prune()`` call is
timed (``time.perf_counter``, milliseconds); checks during which the pruner refitted
its law are counted apart (a refit is the law's fitting cost, paid once per refit, not
per check).

A third study per storage runs ``OptLawsSampler(law)`` with ``OptLawsPruner(law)`` (the
product as shipped, apart from the law) and times each ``suggest_schedule`` call,
again separating suggestions that refitted the law.

``--logged``: each trial's schedule is then attached as a logged one comes in,
``Schedule.from_knots`` with a knot at every optimizer step (the same LR values, so the
same curves and decisions), which is what a user who logs the LR of a real run attaches
with :func:`~optuna_optlaws.set_schedule`.

Writes ``results.json`` (every figure, the options and the machine) and ``README.md``
(the tables) under ``--out``. Figures depend on the machine and its load: compare the
arms of one run, not runs on different machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from optuna_optlaws._errors import InputError
from optuna_optlaws._progress import Progress
from optuna_optlaws.benchmarks._synthetic import synthetic_loss

EARLY_REPORTS = 20
"""Checks at the first this many reports of a trial are also summarised apart: MedianPruner
prunes most trials early, so its checks are mostly on short curves; comparing these
early checks compares both pruners on curves of the same length."""

REPORT_EVERY = 10
"""Optimizer steps between two reports (a trial trains ``reports x REPORT_EVERY`` steps)."""

NOISE = 0.01
"""Standard deviation (nats) of the noise added to the synthetic loss."""


@dataclass
class Arm:
    """One study of the benchmark and what was measured on it."""

    name: str
    study: Any
    pruner: Any
    check_ms: list[float] = field(default_factory=list)
    early_check_ms: list[float] = field(default_factory=list)
    refit_check_ms: list[float] = field(default_factory=list)
    suggest_ms: list[float] = field(default_factory=list)
    refit_suggest_ms: list[float] = field(default_factory=list)
    steps_trained: int = 0
    steps_total: int = 0
    pruned: int = 0
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The arm's figures (milliseconds, counts, seconds) as a JSON-ready dict."""
        out: dict[str, Any] = {
            "checks": _stats(self.check_ms),
            f"checks_first_{EARLY_REPORTS}_reports": _stats(self.early_check_ms),
            "refit_checks": _stats(self.refit_check_ms),
            "trials_pruned": self.pruned,
            "share_of_steps_trained": round(self.steps_trained / max(self.steps_total, 1), 4),
            "wall_s": round(self.wall_s, 2),
        }
        if self.suggest_ms or self.refit_suggest_ms:
            out["suggestions"] = _stats(self.suggest_ms)
            out["refit_suggestions"] = _stats(self.refit_suggest_ms)
        store = _law_store(self.pruner)
        if store is not None:
            out["pruner_fits"] = store.n_fits
            out["pruner_fit_s"] = round(store.fit_seconds, 2)
        sampler_store = _law_store(self.study.sampler)
        if sampler_store is not None:
            out["sampler_fits"] = sampler_store.n_fits
            out["sampler_fit_s"] = round(sampler_store.fit_seconds, 2)
        return out


def _stats(ms: Sequence[float]) -> dict[str, Any]:
    if not ms:
        return {"n": 0}
    a = np.asarray(ms, dtype=np.float64)
    return {
        "n": int(a.size),
        "median_ms": round(float(np.median(a)), 4),
        "p90_ms": round(float(np.quantile(a, 0.9)), 4),
        "mean_ms": round(float(a.mean()), 4),
        "max_ms": round(float(a.max()), 2),
    }


def _law_store(obj: Any) -> Any:
    return getattr(obj, "law_store", None)


def _fits(arm: Arm) -> int:
    total = 0
    for obj in (arm.pruner, arm.study.sampler):
        store = _law_store(obj)
        if store is not None:
            total += store.n_fits
    return total


def _run_trial(arm: Arm, *, reports: int, seed: int, time_suggest: bool, logged: bool = False) -> None:
    """Run one trial of ``arm``: suggest a schedule, report the synthetic curve, time the
    checks. ``logged``: attach the schedule as logged knots, one per optimizer step."""
    import optuna

    from optuna_optlaws import Schedule, set_schedule, suggest_schedule

    total = reports * REPORT_EVERY
    trial = arm.study.ask()
    fits = _fits(arm)
    t0 = time.perf_counter()
    schedule = suggest_schedule(
        trial, total_steps=total, warmup_steps=(0, total // 20), peak_lr=(1e-4, 3e-2)
    )
    dt = (time.perf_counter() - t0) * 1e3
    if time_suggest:
        (arm.refit_suggest_ms if _fits(arm) > fits else arm.suggest_ms).append(dt)
    if logged:
        every_step = np.arange(total)
        schedule = Schedule.from_knots(every_step, schedule.lr_at(every_step))
        set_schedule(trial, schedule)
    steps = np.arange(reports, dtype=np.int64) * REPORT_EVERY + (REPORT_EVERY - 1)
    rng = np.random.default_rng([seed, trial.number])
    losses = synthetic_loss(schedule, steps, noise=NOISE, rng=rng)
    arm.steps_total += total
    for i, (step, loss) in enumerate(zip(steps.tolist(), losses.tolist(), strict=True)):
        trial.report(loss, step)
        fits = _fits(arm)
        t0 = time.perf_counter()
        prune = trial.should_prune()
        dt = (time.perf_counter() - t0) * 1e3
        if _fits(arm) > fits:
            arm.refit_check_ms.append(dt)
        else:
            arm.check_ms.append(dt)
            if i < EARLY_REPORTS:
                arm.early_check_ms.append(dt)
        if prune:
            arm.steps_trained += step + 1
            arm.pruned += 1
            arm.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return
    arm.steps_trained += total
    arm.study.tell(trial, float(losses[-1]))


def _storage_for(kind: str, db_dir: Path, tag: str) -> Any:
    if kind == "inmemory":
        return None
    if kind == "sqlite":
        return f"sqlite:///{db_dir / (tag + '.db')}"
    raise InputError(f"overhead: unknown storage {kind!r}; known: inmemory, sqlite")


def run(
    *,
    trials: int,
    reports: int,
    law: str,
    storages: Sequence[str],
    db_dir: Path,
    seed: int,
    sampler_trials: int,
    logged: bool = False,
    progress: Callable[[str, int], Progress] | None = None,
) -> dict[str, Any]:
    """Run the benchmark; return every figure as a JSON-ready dict."""
    import optuna

    from optuna_optlaws import OptLawsPruner, OptLawsSampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    make_progress = progress or (lambda label, n: Progress(label, n))
    results: dict[str, Any] = {}
    for kind in storages:
        arms = []
        for name in ("median", "optlaws"):
            pruner = optuna.pruners.MedianPruner() if name == "median" else OptLawsPruner(law)
            study = optuna.create_study(
                storage=_storage_for(kind, db_dir, f"{kind}-{name}"),
                sampler=optuna.samplers.RandomSampler(seed=seed),
                pruner=pruner,
            )
            arms.append(Arm(name, study, pruner))
        bar = make_progress(f"overhead {kind}: pruners", trials)
        for _ in range(trials):
            for arm in arms:
                t0 = time.perf_counter()
                _run_trial(arm, reports=reports, seed=seed, time_suggest=False, logged=logged)
                arm.wall_s += time.perf_counter() - t0
            bar.advance()
        bar.close()
        res = {arm.name: arm.summary() for arm in arms}
        for key, label in (("checks", "ratio_median_check"), (f"checks_first_{EARLY_REPORTS}_reports", "ratio_early")):
            med = res["median"][key].get("median_ms")
            mine = res["optlaws"][key].get("median_ms")
            if med and mine:
                res[f"{label}_optlaws_over_median"] = round(mine / med, 3)
        if sampler_trials > 0:
            pruner = OptLawsPruner(law)
            sampler = OptLawsSampler(law, seed=seed)
            study = optuna.create_study(
                storage=_storage_for(kind, db_dir, f"{kind}-sampler"), sampler=sampler, pruner=pruner
            )
            arm = Arm("sampler+pruner", study, pruner)
            bar = make_progress(f"overhead {kind}: sampler", sampler_trials)
            for _ in range(sampler_trials):
                t0 = time.perf_counter()
                _run_trial(arm, reports=reports, seed=seed, time_suggest=True, logged=logged)
                arm.wall_s += time.perf_counter() - t0
                bar.advance()
            bar.close()
            res["sampler+pruner"] = arm.summary()
        results[kind] = res
    return results


def _table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| storage | arm | checks | median ms | p90 ms | refit checks (median ms) | pruned | steps trained "
        "| fits (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, res in results.items():
        for name in ("median", "optlaws", "sampler+pruner"):
            if name not in res:
                continue
            r = res[name]
            c, rc = r["checks"], r["refit_checks"]
            fits = r.get("pruner_fits", 0) + r.get("sampler_fits", 0)
            fit_s = r.get("pruner_fit_s", 0.0) + r.get("sampler_fit_s", 0.0)
            lines.append(
                f"| {kind} | {name} | {c['n']} | {c.get('median_ms', '-')} | {c.get('p90_ms', '-')} | "
                f"{rc['n']} ({rc.get('median_ms', '-')}) | {r['trials_pruned']} | "
                f"{r['share_of_steps_trained']:.1%} | {fits} ({fit_s:.1f}) |"
            )
    lines.append("")
    lines.append("| storage | suggestions | median ms | p90 ms | suggestions with a refit (median ms) |")
    lines.append("|---|---|---|---|---|")
    for kind, res in results.items():
        if "sampler+pruner" not in res:
            continue
        s, rs = res["sampler+pruner"]["suggestions"], res["sampler+pruner"]["refit_suggestions"]
        lines.append(f"| {kind} | {s['n']} | {s.get('median_ms', '-')} | {s.get('p90_ms', '-')} | "
                     f"{rs['n']} ({rs.get('median_ms', '-')}) |")
    return lines


def write_report(out: Path, record: dict[str, Any]) -> None:
    """Write ``results.json`` and ``README.md`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    opts = record["options"]
    logged = "Schedules attached as logged knots, one per optimizer step (`--logged`). " if opts.get("logged") else ""
    lines = [
        "# Overhead of OptLawsPruner / OptLawsSampler vs MedianPruner",
        "",
        "Written by `python -m optuna_optlaws.benchmarks.overhead` (do not edit by hand).",
        "",
        f"Command: `{record['command']}`",
        "",
        f"{opts['trials']} trials x {opts['reports']} reports each (one report every {REPORT_EVERY} steps), "
        f"law `{opts['law']}`, seed {opts['seed']}; synthetic losses with {NOISE} nats of noise. {logged}"
        f"Machine: {record['machine']['platform']}, {record['machine']['cpus']} CPUs, "
        f"load average at start {record['machine']['load_start']}, at end {record['machine']['load_end']}. "
        f"SQLite files in `{opts['db_dir_kind']}`. Code: git commit `{record.get('git_commit')}`. "
        f"OptLawsPruner and OptLawsSampler with their default arguments apart from the law.",
        "",
        "Times are of `trial.should_prune()` (checks) and `suggest_schedule()` (suggestions), in ms. "
        "Checks or suggestions during which the law was refitted are counted apart: their cost is "
        "the law's fit.",
        "",
        *_table(record["results"]),
        "",
    ]
    for kind, res in record["results"].items():
        ratio = res.get("ratio_median_check_optlaws_over_median")
        if ratio is not None:
            lines.append(f"- {kind}: median check OptLawsPruner / MedianPruner = {ratio}x (all checks)")
        ratio = res.get("ratio_early_optlaws_over_median")
        if ratio is not None:
            early = res["optlaws"][f"checks_first_{EARLY_REPORTS}_reports"]["median_ms"]
            base = res["median"][f"checks_first_{EARLY_REPORTS}_reports"]["median_ms"]
            lines.append(
                f"- {kind}: median check at the first {EARLY_REPORTS} reports of a trial (curves of equal "
                f"length): OptLawsPruner {early} ms / MedianPruner {base} ms = {ratio}x"
            )
    lines.append("")
    (out / "README.md").write_text("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m optuna_optlaws.benchmarks.overhead", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--trials", type=int, default=100, help="trials per study (default 100)")
    parser.add_argument("--reports", type=int, default=500, help="reports per trial (default 500)")
    parser.add_argument("--law", default="momentum", help="law of the OptLaws arms (default momentum)")
    parser.add_argument("--storages", default="inmemory,sqlite", help="comma-separated: inmemory, sqlite")
    parser.add_argument("--sampler-trials", type=int, default=None, help="sampler study's trials (default --trials)")
    parser.add_argument("--db-dir", default=None, help="folder for the SQLite files (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logged", action="store_true",
                        help="attach each schedule as logged knots, one per optimizer step (set_schedule)")
    parser.add_argument("--out", default="studies/overhead", help="output folder (default studies/overhead)")
    args = parser.parse_args(argv)
    try:
        if args.trials < 1 or args.reports < 5:
            raise InputError("overhead: --trials must be >= 1 and --reports >= 5")
        storages = [s.strip() for s in args.storages.split(",") if s.strip()]
        for s in storages:
            _storage_for(s, Path("."), "check")
        from optuna_optlaws.laws import law_class

        law_class(args.law, where="overhead --law")
        own_tmp = args.db_dir is None
        db_dir = Path(tempfile.mkdtemp(prefix="optlaws-overhead-")) if own_tmp else Path(args.db_dir)
        db_dir.mkdir(parents=True, exist_ok=True)
        load_start = _load()
        commit = _git_commit()  # the code measured: taken before the run
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results = run(
                    trials=args.trials,
                    reports=args.reports,
                    law=args.law,
                    storages=storages,
                    db_dir=db_dir,
                    seed=args.seed,
                    sampler_trials=args.trials if args.sampler_trials is None else args.sampler_trials,
                    logged=args.logged,
                )
        finally:
            if own_tmp:
                shutil.rmtree(db_dir, ignore_errors=True)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    argv_list = list(sys.argv[1:] if argv is None else argv)
    record = {
        "command": " ".join(["python -m optuna_optlaws.benchmarks.overhead", *argv_list]),
        "options": {
            "trials": args.trials,
            "reports": args.reports,
            "law": args.law,
            "seed": args.seed,
            "storages": storages,
            "sampler_trials": args.trials if args.sampler_trials is None else args.sampler_trials,
            "db_dir_kind": "a temporary folder" if args.db_dir is None else str(args.db_dir),
            "logged": args.logged,
        },
        "git_commit": commit,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_start": load_start,
            "load_end": _load(),
        },
        "results": results,
    }
    write_report(Path(args.out), record)
    print("\n".join(_table(results)))
    return 0


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
