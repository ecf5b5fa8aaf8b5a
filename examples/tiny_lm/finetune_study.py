"""A live fine-tuning study on the tiny LM: OptLaws with a parent run against Optuna's own tools.

Every trial fine-tunes the same pretrained model, the ``pre`` run of ``finetune.py`` (the
stage-1 run of ``continual.py``: ``--pre-steps`` optimizer steps on ``stdlib``, cosine
``3e-3 -> 3e-4``; cached by :func:`tinylm.pretrained`, so the weights are the ones
``studies/finetune/curves.csv`` was made from), for ``--steps`` optimizer steps on the
first ``--train-bytes`` bytes of the ``site_docs`` corpus, with a fresh AdamW state and
training seed ``--train-seed`` (same batch order in every trial: only the schedule
differs), under a schedule from :func:`optuna_optlaws.suggest_schedule`. It reports the
held-out ``site_docs`` loss (nats/byte) every ``eval_every`` optimizer steps (25 by
default) through :class:`optuna_optlaws.torch.LossReporter`, its own steps counted from 0,
and returns the final held-out loss (nats/byte, the larger fixed held-out set): exactly a
fine-tuning run of ``finetune.py``.

Arms (each its own study ``finetune-<arm>`` in one SQLite file):

* ``optlaws``: :class:`~optuna_optlaws.OptLawsSampler` + :class:`~optuna_optlaws.OptLawsPruner`,
  both with ``transfer_prior`` = the Opt-Law fitted on the same model's 600-step
  pretraining sweep (``--transfer-prior``, default ``studies/curves/tiny_lm_600_law.json``),
  and the study's parent declared with :func:`optuna_optlaws.set_parent_run` (the ``pre``
  run's schedule and logged losses, resumed from its last step), so the study's Opt-Law is
  fitted on the parent's curve plus the trials as runs continuing it;
* ``tpe-median``: ``TPESampler`` + ``MedianPruner`` (5 startup trials, 10% of the steps as
  warmup, as in ``study.py``);
* ``tpe``: ``TPESampler``, no pruning (the reference);
* ``optlaws-regret`` (only when asked): the ``optlaws`` arm with the pruner's regret
  tolerance set to its margin plus ``--tolerance`` (0.01 nats by default), so a run it
  prunes can beat the frontier by at most ``--tolerance`` nats (95%): the regret the
  pretraining study's live target allows (0.5% of the final loss), as ``study.py``'s
  arm of that name.

Writes ``<out>/finetune_study.db`` (the studies; open it with ``optuna-dashboard``),
``<out>/results.json`` and ``<out>/README.md`` (the report: per arm the best final loss,
the optimizer steps trained, the trials pruned, and how close each arm's best comes to the
``tpe`` arm's with what share of its steps). When the database exists the arms' studies
are loaded and continued up to ``--trials`` trials each (a trial left RUNNING by an
interrupted run is marked FAIL first).

Usage (repository root)::

    python examples/tiny_lm/finetune_study.py --quick      # 6 trials per arm, ~3 min, in studies/finetune_study/quick/
    python examples/tiny_lm/finetune_study.py --arm optlaws-regret   # add that arm to the recorded study
    nice -n 10 python examples/tiny_lm/finetune_study.py   # 30 trials per arm, ~13 min of one CPU core
    optuna-dashboard sqlite:///studies/finetune_study/finetune_study.db
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from optuna_optlaws import (
    OptLawsPruner,
    OptLawsSampler,
    Schedule,
    get_parent_run,
    set_parent_run,
)
from optuna_optlaws.curves import Curve, read_curves_csv
from optuna_optlaws.laws import Law, load_law

sys.path.insert(0, str(Path(__file__).resolve().parent))
from continual import pre_schedule
from study import (
    OPTUNA_ARMS,
    STEPS_ATTR,
    TOLERANCE,
    SearchSpace,
    arm_choices,
    arm_commands,
    arm_table,
    make_objective,
    optuna_arm,
    pruner_tolerance,
    report_header,
    steps_until,
    summarize,
    target_met,
    training_config,
    trial_logger,
)
from tinylm import (
    TinyLMConfig,
    TrainResult,
    count_parameters,
    curve_of,
    default_device,
    loss_of_state,
    pretrained,
)

ROOT = Path(__file__).resolve().parents[2]
ARMS = ("optlaws", "tpe-median", "tpe", "optlaws-regret")
DEFAULT_ARMS = ("optlaws", "tpe-median", "tpe")
"""The arms a run without ``--arm`` runs (``optlaws-regret`` only when asked)."""
OPTLAWS_ARMS = ("optlaws", "optlaws-regret")
PRE_STEPS = 600
"""Optimizer steps of the parent run ``pre`` (``finetune.py --pre-steps`` default)."""
FT_STEPS = 300
"""Optimizer steps of each fine-tuning trial (``finetune.py --steps`` default)."""
TRAIN_BYTES = 100_000
"""Bytes of ``site_docs`` fine-tuned on (``finetune.py --train-bytes`` default)."""
FT_CORPUS = "site_docs"
PARENT_ID = "pre"
TRANSFER_PRIOR = ROOT / "studies" / "curves" / "tiny_lm_600_law.json"
"""The Opt-Law fitted on the tiny LM's 20 pretraining runs of 600 steps (``optlaws fit``)."""
RECORDED_CURVES = ROOT / "studies" / "finetune" / "curves.csv"
"""``finetune.py``'s curves: its ``pre`` run is checked against the parent built here."""
RECORDED_RUNS = ROOT / "studies" / "finetune" / "runs.json"
RECORDED_STUDY = ROOT / "studies" / "finetune_study" / "results.json"
"""This script's recorded study: the parent's loss on the fine-tuning held-out set there
(``pre_on_ft``) tells whether this machine's ``site_docs`` corpus is the recorded one."""
PROPOSAL_KEY = "optlaws:proposal"
"""Trial system attribute where OptLawsSampler records how it proposed the schedule."""
LAW_KEY_PREFIX = "optlaws:law:"
"""Study system attributes holding the stored law fits of the OptLaws arm."""


FT_SPACE = SearchSpace(peak_lr=(1e-4, 3e-3), warmup_fraction=(0.0, 0.2))
"""The fine-tuning schedule search space: peak LR 1e-4 to 3e-3 (log-uniform), warmup 0 to
20% of the run (0 to 60 steps of a 300-step run); families, cooldown and final LR as in
``study.py``."""


@dataclass(frozen=True)
class Setup:
    """The base model and the fine-tuning task every trial shares."""

    base_cfg: TinyLMConfig
    """Config of the parent run (corpus ``stdlib``)."""
    ft_cfg: TinyLMConfig
    """Config of every fine-tuning trial (corpus ``site_docs``, ``train_bytes`` set)."""
    pre_result: TrainResult
    pre_state: dict[str, torch.Tensor]
    parent: Curve
    """The parent's curve: its schedule at every step and its logged ``stdlib`` losses (nats/byte)."""
    pre_on_ft: float
    """Final-objective loss (nats/byte) of the parent's weights on the fine-tuning held-out set."""


def build_setup(pre_steps: int, steps: int, train_bytes: int, train_seed: int, tiny: bool) -> Setup:
    """The parent run (trained once, then read from the cache) and the fine-tuning config,
    built as ``finetune.py`` builds them: ``pre`` = ``pre_schedule(pre_steps)`` under the
    default config, its curve as ``curve_of`` writes the ``pre`` row of the curves file."""
    base = training_config(0, pre_steps, tiny)  # TinyLMConfig() itself at the defaults
    ft = replace(training_config(train_seed, steps, tiny), corpus=FT_CORPUS, train_bytes=train_bytes)
    sched = pre_schedule(pre_steps)
    res, state = pretrained(sched, base)
    parent = curve_of(PARENT_ID, sched, res, base.batch_size)
    return Setup(base, ft, res, state, parent, loss_of_state(state, ft))


def matches_recorded(parent: Curve, path: Path = RECORDED_CURVES) -> str:
    """Whether ``parent`` is the ``pre`` run of ``finetune.py``'s curves file (same logged
    steps and losses, same LR at every step): ``"yes"``, ``"no"`` or ``"absent"``."""
    if not path.exists():
        return "absent"
    rec = next((c for c in read_curves_csv(path) if c.run_id == PARENT_ID), None)
    if rec is None:
        return "absent"
    grid = np.arange(parent.schedule.total_steps)
    same = (
        rec.schedule.total_steps == parent.schedule.total_steps
        and np.array_equal(rec.steps, parent.steps)
        and np.allclose(rec.losses, parent.losses, rtol=0, atol=1e-9)
        and np.allclose(rec.schedule.lr_at(grid), parent.schedule.lr_at(grid), rtol=1e-9, atol=0)
    )
    return "yes" if same else "no"


def recorded_pre_on_ft(path: Path = RECORDED_STUDY) -> float | None:
    """The parent's loss (nats/byte) on the fine-tuning held-out set in the recorded study."""
    try:
        return float(json.loads(path.read_text(encoding="utf-8"))["meta"]["pre_on_ft"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def recorded_grid_best(
    ft_cfg: TinyLMConfig, steps: int, pre_on_ft: float, path: Path = RECORDED_RUNS
) -> dict[str, Any] | None:
    """The best final loss (nats/byte) among ``finetune.py``'s hand-picked fine-tuning
    schedules from ``pre`` (its ``runs.json``, same config and steps only), or ``None``;
    ``{"corpus_differs": ...}`` when the parent's loss on this machine's fine-tuning corpus
    (``pre_on_ft``) is not the recorded one: ``site_docs`` is built from the installed
    packages, and losses on another corpus are not comparable."""
    if not path.exists():
        return None
    runs = json.loads(path.read_text(encoding="utf-8"))
    same = {
        k: r for k, r in runs.items()
        if r.get("resume_from") == PARENT_ID and r.get("config") == asdict(ft_cfg)
        and r.get("steps") and r["steps"][-1] == steps - 1 and math.isfinite(r.get("final_loss", math.nan))
    }
    if not same:
        return None
    recorded = recorded_pre_on_ft()
    if recorded is not None and not math.isclose(recorded, pre_on_ft, rel_tol=1e-6):
        return {"corpus_differs": {"here": pre_on_ft, "recorded": recorded}}
    run_id = min(same, key=lambda k: same[k]["final_loss"])
    return {"run_id": run_id, "final_loss": same[run_id]["final_loss"], "runs": len(same)}


def make_study(
    arm: str, storage: str, seed: int, steps: int, parent: Curve, prior: Law | None, tolerance: float = TOLERANCE
) -> optuna.Study:
    """The arm's study, created or loaded (``load_if_exists``); the OptLaws arms get
    ``prior`` as their transfer prior and ``parent`` as their parent run (a no-op when the
    loaded study already has this parent); the ``optlaws-regret`` arm's pruner accepts
    ``tolerance`` nats of regret (its tolerance is the margin plus that)."""
    sampler: optuna.samplers.BaseSampler
    pruner: optuna.pruners.BasePruner
    if arm in OPTLAWS_ARMS:
        sampler = OptLawsSampler(transfer_prior=prior, seed=seed)
        pruner = OptLawsPruner(transfer_prior=prior, seed=seed, tolerance=pruner_tolerance(arm, tolerance))
    elif arm in OPTUNA_ARMS:
        sampler, pruner = optuna_arm(arm, seed, steps)
    else:
        raise ValueError(f"unknown arm {arm!r}; known: {ARMS}")
    study = optuna.create_study(
        study_name=f"finetune-{arm}", storage=storage, sampler=sampler, pruner=pruner, direction="minimize",
        load_if_exists=True,
    )
    if arm in OPTLAWS_ARMS:
        set_parent_run(study, parent)
    return study


def fail_interrupted(study: optuna.Study) -> int:
    """Mark the trials an interrupted run left RUNNING as FAIL (one process per database:
    nothing else runs them), with the steps they had reported; returns how many."""
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in stale:
        steps = max(t.intermediate_values) + 1 if t.intermediate_values else 0
        study._storage.set_trial_user_attr(t._trial_id, STEPS_ATTR, int(t.user_attrs.get(STEPS_ATTR, steps)))
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return len(stale)


def optlaws_details(study: optuna.Study) -> dict[str, Any]:
    """What the OptLaws arm's sampler and pruner did: proposal sources, prune reasons,
    warnings recorded on trials, the stored law fits (curves fitted, seconds, errors) and
    the parent run."""
    trials = study.get_trials(deepcopy=False)
    sources = Counter(str((t.system_attrs.get(PROPOSAL_KEY) or {}).get("source", "-")) for t in trials)
    pruned = [
        {"trial": t.number, "step": max(t.intermediate_values) if t.intermediate_values else None,
         "reason": t.user_attrs.get("optlaws_prune_reason")}
        for t in trials if t.state == optuna.trial.TrialState.PRUNED
    ]
    trial_warnings = {t.number: t.user_attrs["optlaws_warning"] for t in trials if "optlaws_warning" in t.user_attrs}
    fits = {
        key: {k: v for k, v in rec.items() if k in ("n_curves", "finished", "points", "fit_seconds", "error")}
        for key, rec in study._storage.get_study_system_attrs(study._study_id).items()
        if key.startswith(LAW_KEY_PREFIX) and isinstance(rec, dict)
    }
    parent = get_parent_run(study)
    return {
        "proposal_sources": dict(sources),
        "pruned": pruned,
        "trial_warnings": trial_warnings,
        "law_fits": fits,
        "parent": None if parent is None else {"run_id": parent.run_id, "resume_step": parent.resume_step,
                                               "points": int(parent.curve.steps.size)},
    }


class _Collect(logging.Handler):
    def __init__(self, into: Counter[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into[f"log {record.name}: {record.getMessage()}"] += 1


@contextlib.contextmanager
def collecting_warnings(into: Counter[str]) -> Iterator[None]:
    """Count (and still show) the Python warnings and the ``optuna_optlaws`` log records of
    WARNING and above raised inside the block."""
    logger = logging.getLogger("optuna_optlaws")
    handler = _Collect(into)
    logger.addHandler(handler)
    with warnings.catch_warnings():
        original = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
            into[f"warning {category.__name__}: {message}"] += 1
            original(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        try:
            yield
        finally:
            logger.removeHandler(handler)


def write_report(out_dir: Path, results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> Path:
    """``README.md`` and ``results.json`` of the study folder, from the stored studies."""
    lines = [
        *report_header("Live fine-tuning study of the tiny LM", "examples/tiny_lm/finetune_study.py", meta["command"]),
        f"Date: {meta['date']}. Machine: {meta['machine']}.",
        "",
        f"Storage: `{meta['storage']}` (one study per arm, `finetune-<arm>`; open it with `optuna-dashboard`).",
        f"Parent run `{meta['parent']['run_id']}`: {meta['parent']['steps']} optimizer steps on `stdlib` "
        f"({meta['parent']['schedule']}); last logged loss {meta['parent']['last_loss']:.4f} nats/byte on "
        f"`stdlib`, {meta['pre_on_ft']:.4f} on the fine-tuning held-out set. Same as the `pre` run of "
        f"`studies/finetune/curves.csv`: {meta['parent']['matches_recorded']}.",
        f"Each trial: {meta['steps']} optimizer steps from the parent's final weights (fresh AdamW state) on the "
        f"first {meta['train_bytes']} bytes of `{FT_CORPUS}` (N = {meta['model_size']} parameters, "
        f"{meta['tokens_per_step']} bytes per step, training seed {meta['train_seed']} in every trial); held-out "
        f"loss reported every {meta['eval_every']} steps (steps from 0); objective = final loss (nats/byte) on a "
        "larger fixed held-out set of the fine-tuning corpus.",
        "Search space: " + ", ".join(f"{k}={v}" for k, v in meta["space"].items())
        + f". Sampler seed {meta['seed']}.",
        f"`optlaws` arm: OptLawsSampler + OptLawsPruner with transfer prior `{meta['transfer_prior']}`, parent "
        f"declared with `set_parent_run` (resume step {meta['parent']['resume_step']}). `tpe-median`: TPE + "
        f"MedianPruner(n_startup_trials=5, n_warmup_steps={meta['steps'] // 10}). `tpe`: TPE, no pruning."
        + (f" `optlaws-regret`: the `optlaws` arm with the pruner's tolerance = its margin + "
           f"{meta['tolerance']:g} nats (a pruned run can beat the frontier by at most {meta['tolerance']:g} nats)."
           if "optlaws-regret" in results else ""),
        "",
        *arm_table(results),
        *arm_commands(results),
    ]
    grid = meta.get("recorded_grid_best")
    if grid and "corpus_differs" in grid:
        differs = grid["corpus_differs"]
        lines += [
            f"Not comparable with `studies/finetune*`: the parent's loss on this machine's `{FT_CORPUS}` corpus is "
            f"{differs['here']:.4f} nats/byte, {differs['recorded']:.4f} in the recorded study (`{FT_CORPUS}` is "
            "built from the installed packages' text files, so it differs between environments).",
            "",
        ]
    elif grid:
        lines += [
            f"For scale: the best of `finetune.py`'s {grid['runs']} hand-picked fine-tuning schedules from the same "
            f"parent (`studies/finetune/runs.json`, same config) is `{grid['run_id']}`, final loss "
            f"{grid['final_loss']:.4f}.",
            "",
        ]
    ref = results.get("tpe")
    if ref is not None and ref["best_value"] is not None:
        lines += ["Against the no-pruning arm (`tpe`), counting every optimizer step of each study "
                  "(the pretraining study's target, best within 0.5% with at most half the steps, for reference):", ""]
        for arm, r in results.items():
            if arm == "tpe" or r["best_value"] is None:
                continue
            gap = (r["best_value"] - ref["best_value"]) / ref["best_value"] * 100
            frac = r["steps_trained"] / max(ref["steps_trained"], 1)
            lines.append(
                f"- {arm}: best {gap:+.2f}% vs tpe's ({r['best_value']:.4f} vs {ref['best_value']:.4f} nats/byte) "
                f"with {frac:.2f} x its optimizer steps ({r['steps_trained']} vs {ref['steps_trained']}); "
                f"target {'met' if target_met(gap, frac) else 'not met'}."
            )
        lines += ["", "Anytime view: optimizer steps each arm had trained, trials in order, when a COMPLETE trial "
                  "first came within 0.5% of tpe's best final loss.", ""]
        for arm, r in results.items():
            reached = steps_until(r.get("trace", []), ref["best_value"] * 1.005)
            share = None if reached is None else reached / max(ref["steps_trained"], 1)
            lines.append(f"- {arm}: " + ("never." if reached is None else
                                           f"after {reached} steps ({share:.2f} x tpe's total)."))
        lines.append("")
    for arm in OPTLAWS_ARMS:
        details = meta.get(arm)
        if not details:
            continue
        lines += [f"`{arm}` arm: how its schedules were proposed (sampler source: count): "
                  + ", ".join(f"{k} {v}" for k, v in sorted(details["proposal_sources"].items())) + "."]
        for key, fit in details["law_fits"].items():
            lines.append(
                f"Last stored law fit (`{key}`): {fit.get('n_curves')} curves (the parent's and the trials' with "
                f"reports, running ones included; {len(fit.get('finished', []))} trials finished), "
                f"{fit.get('fit_seconds')} s"
                + (f", error: {fit['error']}" if fit.get("error") else "") + "."
            )
        steps = [p["step"] for p in details["pruned"]]
        if steps:
            lines.append(f"Pruned at optimizer steps: {', '.join(str(s) for s in steps)}.")
        lines.append(f"Trials with an `optlaws_warning`: {len(details['trial_warnings'])}.")
        lines.append("")
    caught = meta.get("warnings") or {}
    lines += ["Warnings raised during the run (Python warnings, `optuna_optlaws` log records; count):", ""]
    lines += [f"- {n} x {msg}" for msg, n in sorted(caught.items())] or ["- none"]
    lines += ["", *arm_choices(results)]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps({"meta": meta, "arms": results}, indent=1), encoding="utf-8")
    path = out_dir / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _describe(schedule: Schedule) -> str:
    """A schedule in a few words: family, peak and final LR, warmup (optimizer steps)."""
    return (f"{schedule.family}, peak LR {schedule.peak_lr:g}, final LR {schedule.final_lr:g}, "
            f"warmup {schedule.warmup_steps} steps")


def _display(path: Path) -> str:
    """``path`` relative to the repository root when it is inside it."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=None, help="trials per arm (default 30; 6 with --quick)")
    ap.add_argument("--arm", action="append", choices=ARMS,
                    help="arm(s) to run (repeatable; default optlaws, tpe-median and tpe)")
    ap.add_argument("--tolerance", type=float, default=TOLERANCE,
                    help=f"regret (nats) the optlaws-regret arm's pruner accepts (default {TOLERANCE})")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default studies/finetune_study, with --quick studies/finetune_study/quick)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 6 trials per arm")
    ap.add_argument("--seed", type=int, default=0, help="sampler/pruner seed (default 0)")
    ap.add_argument("--train-seed", type=int, default=0, help="training seed of every trial (default 0)")
    ap.add_argument("--transfer-prior", default=str(TRANSFER_PRIOR),
                    help="law file of the optlaws arm's transfer prior ('none': no transfer prior)")
    ap.add_argument("--pre-steps", type=int, default=PRE_STEPS, help=f"parent's optimizer steps (default {PRE_STEPS})")
    ap.add_argument("--steps", type=int, default=FT_STEPS, help=f"fine-tuning optimizer steps (default {FT_STEPS})")
    ap.add_argument("--train-bytes", type=int, default=TRAIN_BYTES,
                    help=f"fine-tuning set size in bytes (default {TRAIN_BYTES})")
    ap.add_argument("--tiny", action="store_true", help="a toy model (d_model 32, batch 8 x 32): smoke tests only")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = ap.parse_args(argv)
    trials = args.trials if args.trials is not None else (6 if args.quick else 30)
    out_dir: Path = args.out or ROOT / "studies" / "finetune_study" / ("quick" if args.quick else "")
    out_dir.mkdir(parents=True, exist_ok=True)
    db = out_dir / "finetune_study.db"
    storage = f"sqlite:///{db.resolve()}"
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = default_device()
    t_start = time.perf_counter()
    setup = build_setup(args.pre_steps, args.steps, args.train_bytes, args.train_seed, args.tiny)
    prior_path = None if args.transfer_prior.lower() == "none" else Path(args.transfer_prior)
    prior = None if prior_path is None else load_law(prior_path)
    space = FT_SPACE
    objective = make_objective(args.steps, setup.ft_cfg, space, device, init_state=setup.pre_state)
    command = "python examples/tiny_lm/finetune_study.py" + (" " + shlex.join(argv) if argv else "")
    caught: Counter[str] = Counter()
    results: dict[str, dict[str, Any]] = {}
    details: dict[str, dict[str, Any]] = {}
    for arm in args.arm or list(DEFAULT_ARMS):
        with collecting_warnings(caught):
            study = make_study(arm, storage, args.seed, args.steps, setup.parent, prior, args.tolerance)
            interrupted = fail_interrupted(study)
            if interrupted:
                print(f"[{arm}] {interrupted} trial(s) left RUNNING by an interrupted run marked FAIL", flush=True)
            study.set_user_attr("command", command)
            study.set_user_attr("seed", args.seed)
            done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                                 optuna.trial.TrialState.PRUNED,
                                                                 optuna.trial.TrialState.FAIL)))
            if trials - done > 0:
                log = trial_logger(arm, time.perf_counter())
                study.optimize(objective, n_trials=trials - done, callbacks=[log], catch=())
        results[arm] = summarize(study)
        if arm in OPTLAWS_ARMS:
            details[arm] = optlaws_details(study)
    for arm in ARMS:  # keep the arms stored earlier in the same database (e.g. run one arm at a time)
        if arm not in results:
            with contextlib.suppress(KeyError):
                stored = optuna.load_study(study_name=f"finetune-{arm}", storage=storage)
                results[arm] = summarize(stored)
                if arm in OPTLAWS_ARMS:
                    details[arm] = optlaws_details(stored)
    results = {a: results[a] for a in ARMS if a in results}
    p = setup.parent
    meta: dict[str, Any] = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} ({os.cpu_count()} CPUs), Python {platform.python_version()}, "
                   f"torch {torch.__version__}, optuna {optuna.__version__}, {device}, {args.threads} thread(s)",
        "storage": f"sqlite:///{_display(db)}",
        "steps": args.steps,
        "train_bytes": args.train_bytes,
        "model_size": count_parameters(setup.ft_cfg),
        "tokens_per_step": setup.ft_cfg.tokens_per_step,
        "train_seed": args.train_seed,
        "eval_every": setup.ft_cfg.eval_every,
        "seed": args.seed,
        "space": {**asdict(space), "warmup_steps": space.warmup_steps(args.steps), "total_steps": args.steps},
        "transfer_prior": "none" if prior_path is None else _display(prior_path),
        "parent": {
            "run_id": p.run_id, "steps": p.schedule.total_steps, "resume_step": p.schedule.total_steps - 1,
            "schedule": _describe(pre_schedule(args.pre_steps)), "last_loss": float(p.losses[-1]),
            "final_loss": setup.pre_result.final_loss, "matches_recorded": matches_recorded(p),
        },
        "pre_on_ft": setup.pre_on_ft,
        "recorded_grid_best": recorded_grid_best(setup.ft_cfg, args.steps, setup.pre_on_ft),
        **{arm: details.get(arm) for arm in OPTLAWS_ARMS},
        "tolerance": args.tolerance,
        "warnings": dict(caught),
        "tiny": args.tiny,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    path = write_report(out_dir, results, meta)
    print(path.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
