"""OptLawsSampler with parallel workers: do they spread out or train copies of one schedule?

    python -m optuna_optlaws.benchmarks.parallel [--seeds 5] [--trials 24] [--batch 4]
        [--law optlaw] [--out studies/parallel]

With several workers sharing a study, a sampler is asked for a schedule while other
trials are still training. ``OptLawsSampler`` proposes the minimum of a lower confidence
bound; a sampler that ignores the running trials sends every worker that asks at about
the same time to about the same schedule. ``consider_running=True`` (the default) has
the sampler's Gaussian process believe each running trial ends where it predicts, so the
candidates near it lose their exploration bonus.

The benchmark runs, for each seed, three studies of ``--trials`` trials on the same
synthetic task (:func:`~optuna_optlaws.benchmarks._synthetic.synthetic_loss` with an
interior best peak LR and 0.01 nats of seeded noise per report; a schedule search over
four families, peak LR, warmup, cooldown and final LR, 1,000 optimizer steps, a report
every 50): ``sequential`` (one worker: ask, train, tell), and ``--batch`` workers that
ask together and then train (``study.ask()`` ``--batch`` times, then each trial reports
and is told), with ``consider_running`` on (``batch-believe``) and off
(``batch-ignore``). No pruner: every trial trains to the end, so the arms differ only in
what was proposed.

Per arm (all seeds): the spread of each batch (distance of each trial's schedule to its
nearest other one in the batch, in the residual GP's min-max scaled schedule
descriptors), the share of trials with a near copy in their batch (distance below
:data:`NEAR_COPY`), and the best final loss (nats, noise included, as a study sees it)
and its regret against the best of :data:`DENSE` space-filling schedules of the same
space (noise-free). Writes ``results.json`` and ``README.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from optuna_optlaws._errors import InputError
from optuna_optlaws.benchmarks._synthetic import synthetic_loss

TOTAL_STEPS = 1000
REPORT_EVERY = 50
NOISE = 0.01
"""Standard deviation (nats) of the noise on each report."""
PEAK_PENALTY = 0.5
"""Curvature (nats per squared log of the peak LR's ratio to 3e-3) of the synthetic loss:
an interior best peak LR, as real training has."""
SPACE = {"total_steps": TOTAL_STEPS, "peak_lr": (1e-4, 3e-2), "warmup_steps": (0, 100)}
"""The schedule search space (``suggest_schedule`` keywords; the other ranges its defaults)."""
DENSE = 4096
"""Space-filling schedules scored noise-free for the space's best final loss."""
NEAR_COPY = 0.05
"""A trial has a near copy in its batch when another one lies within this distance
(min-max scaled schedule descriptors, 6 dimensions)."""
ARMS = ("sequential", "batch-ignore", "batch-believe")


def _curve(schedule: Any, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic run of ``schedule``: report steps and losses (nats), with the report
    noise drawn from ``rng`` (noise-free without one)."""
    steps = np.unique(np.append(np.arange(REPORT_EVERY - 1, TOTAL_STEPS, REPORT_EVERY), TOTAL_STEPS - 1))
    losses = synthetic_loss(schedule, steps, peak_penalty=PEAK_PENALTY, noise=NOISE, rng=rng)
    return steps, losses


def space_best(seed: int = 0) -> float:
    """The lowest noise-free final loss (nats) among :data:`DENSE` Sobol schedules of the space."""
    import optuna

    from optuna_optlaws import suggest_schedule
    from optuna_optlaws._sampler._acquisition import _sobol
    from optuna_optlaws.trial_schedule import get_space

    trial = optuna.create_study().ask()
    suggest_schedule(trial, **SPACE)  # type: ignore[arg-type]
    space = get_space(trial)
    assert space is not None
    values = space.from_unit(_sobol(space.unit_dims, DENSE, seed))
    return min(float(_curve(space.build(v), None)[1][-1]) for v in values)


def run_arm(arm: str, *, seed: int, trials: int, batch: int, law: str) -> dict[str, Any]:
    """One study of ``arm``: the proposals' batches and final losses."""
    import optuna

    from optuna_optlaws import OptLawsSampler, suggest_schedule
    from optuna_optlaws._residual_gp import schedule_descriptors
    from optuna_optlaws.sampler import PROPOSAL_KEY

    sampler = OptLawsSampler(law, seed=seed, consider_running=arm != "batch-ignore")
    study = optuna.create_study(sampler=sampler)
    size = 1 if arm == "sequential" else batch
    finals: list[float] = []
    batches: list[list[Any]] = []
    sources: list[str] = []
    t0 = time.perf_counter()
    while len(finals) < trials:
        asked = [study.ask() for _ in range(min(size, trials - len(finals)))]
        schedules = [suggest_schedule(t, **SPACE) for t in asked]  # type: ignore[arg-type]
        for t in asked:
            record = study._storage.get_trial(t._trial_id).system_attrs.get(PROPOSAL_KEY) or {}
            sources.append(str(record.get("source", "startup")))
        batches.append(list(schedule_descriptors(schedules)))
        for t, s in zip(asked, schedules, strict=True):
            steps, losses = _curve(s, np.random.default_rng([seed, t.number]))
            for step, loss in zip(steps.tolist(), losses.tolist(), strict=True):
                t.report(loss, step)
            study.tell(t, float(losses[-1]))
            finals.append(float(losses[-1]))
    return {
        "finals": finals,
        "descriptors": [[list(map(float, d)) for d in b] for b in batches],
        "sources": sources,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def spread(runs: Sequence[dict[str, Any]], lo: np.ndarray, span: np.ndarray) -> dict[str, Any]:
    """Nearest-neighbour distances within the law-proposed batches of ``runs`` (batches of
    one have none), in descriptors scaled by ``lo``/``span``."""
    nn: list[float] = []
    for run in runs:
        k = 0
        for b in run["descriptors"]:
            src = run["sources"][k : k + len(b)]
            k += len(b)
            if len(b) < 2 or any(not s.startswith("law") for s in src):
                continue
            z = (np.asarray(b) - lo) / span
            d = np.sqrt(((z[:, None, :] - z[None, :, :]) ** 2).sum(-1))
            np.fill_diagonal(d, np.inf)
            nn.extend(d.min(axis=1).tolist())
    a = np.asarray(nn)
    if not a.size:
        return {"n": 0}
    return {"n": int(a.size), "median": round(float(np.median(a)), 4),
            "near_copy_share": round(float(np.mean(a < NEAR_COPY)), 3)}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    import optuna

    from optuna_optlaws.laws import law_class

    parser = argparse.ArgumentParser(
        prog="python -m optuna_optlaws.benchmarks.parallel", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--seeds", type=int, default=5, help="studies per arm, seeds 0.. (default 5)")
    parser.add_argument("--trials", type=int, default=24, help="trials per study (default 24)")
    parser.add_argument("--batch", type=int, default=4, help="workers asking together (default 4)")
    parser.add_argument("--law", default="optlaw", help="the sampler's law (default optlaw)")
    parser.add_argument("--out", default="studies/parallel", help="output folder (default studies/parallel)")
    args = parser.parse_args(argv)
    try:
        if args.seeds < 1 or args.trials < 2 or args.batch < 2:
            raise InputError("parallel: --seeds must be >= 1, --trials >= 2 and --batch >= 2")
        law_class(args.law, where="parallel --law")
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    best_possible = space_best()
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in range(args.seeds):
            for arm in ARMS:
                run = run_arm(arm, seed=seed, trials=args.trials, batch=args.batch, law=args.law)
                runs[arm].append(run)
                print(f"seed {seed} {arm}: best {min(run['finals']):.4f} ({run['seconds']} s)", flush=True)
    every = np.asarray([d for arm in ARMS for r in runs[arm] for b in r["descriptors"] for d in b])
    lo, span = every.min(axis=0), np.maximum(every.max(axis=0) - every.min(axis=0), 1e-12)
    summary = {}
    for arm in ARMS:
        bests = np.asarray([min(r["finals"]) for r in runs[arm]])
        summary[arm] = {
            "best_final_mean": round(float(bests.mean()), 4),
            "regret_mean": round(float(bests.mean() - best_possible), 4),
            "regret_worst": round(float(bests.max() - best_possible), 4),
            "best_per_seed": [round(float(b), 4) for b in bests],
            "spread": spread(runs[arm], lo, span),
            "seconds": round(sum(r["seconds"] for r in runs[arm]), 1),
        }
    argv_list = list(sys.argv[1:] if argv is None else argv)
    record = {
        "command": " ".join(["python -m optuna_optlaws.benchmarks.parallel", *argv_list]),
        "options": vars(args),
        "space_best": round(best_possible, 4),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "summary": summary,
        "runs": runs,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    (out / "README.md").write_text(render(record), encoding="utf-8")
    print(render(record))
    return 0


def render(record: dict[str, Any]) -> str:
    """The report (Markdown) of a run of the benchmark."""
    o = record["options"]
    lines = [
        "# OptLawsSampler with parallel workers",
        "",
        "Written by `python -m optuna_optlaws.benchmarks.parallel` (do not edit by hand).",
        "",
        f"Command: `{record['command']}`",
        "",
        f"{o['seeds']} seeds x {o['trials']} trials per arm, law `{o['law']}`; `sequential`: one worker; "
        f"`batch-*`: {o['batch']} workers that ask for their schedules together, then train "
        "(`consider_running` off / on). Synthetic task, no pruner (see the module docstring). "
        f"Best noise-free final loss of {DENSE} space-filling schedules of the space: {record['space_best']:.4f} nats.",
        "",
        "| arm | best final loss, mean (nats) | regret mean / worst (nats) | batch spread: median distance to "
        "the nearest other trial | trials with a near copy in their batch | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for arm, s in record["summary"].items():
        sp = s["spread"]
        spread_txt = "-" if not sp.get("n") else f"{sp['median']:.3f} ({sp['n']} trials)"
        copies = "-" if not sp.get("n") else f"{100 * sp['near_copy_share']:.0f}%"
        lines.append(f"| {arm} | {s['best_final_mean']:.4f} | {s['regret_mean']:.4f} / {s['regret_worst']:.4f} "
                     f"| {spread_txt} | {copies} | {s['seconds']:.0f} |")
    lines += ["", f"Spread: in the residual GP's schedule descriptors, min-max scaled over every trial of the run; "
              f"a near copy lies within {NEAR_COPY}. Only batches the law proposed count (not the space-filling "
              "start).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
