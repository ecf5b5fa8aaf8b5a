"""A live Optuna study of LR schedules on the tiny LM: OptLaws against Optuna's own tools.

Each trial trains the tiny byte-level LM of ``tinylm.py`` (same seed, so the same
initialisation and batch order, in every trial: only the schedule differs) under a
schedule from :func:`optuna_optlaws.suggest_schedule`, reports the held-out loss every
``eval_every`` optimizer steps through :class:`optuna_optlaws.torch.LossReporter`, and
returns the final validation loss (nats per byte) on a larger fixed held-out set.

Arms (each its own study in the same storage, named ``tiny_lm-<arm>``):

* ``optlaws``: :class:`~optuna_optlaws.OptLawsSampler` + :class:`~optuna_optlaws.OptLawsPruner`;
* ``tpe-median``: ``TPESampler`` + ``MedianPruner``;
* ``tpe``: ``TPESampler``, no pruning;
* ``tpe-optlaws`` (only when asked): ``TPESampler`` + :class:`~optuna_optlaws.OptLawsPruner`,
  the pruner alone;
* ``optlaws-tolerant`` (only when asked): as ``optlaws``, with the pruner's regret
  ``tolerance`` set (``--tolerance``, default 0.01 nats): a run is pruned once its lower
  end is above the frontier plus the margin minus the tolerance, so a pruned run can
  beat the best by at most ``tolerance - margin`` nats (95%; nothing at the default
  margin of 0.01);
* ``optlaws-ei`` (only when asked): as ``optlaws-tolerant``, with the sampler's
  acquisition the expected improvement on the best final loss minus the same tolerance
  (``OptLawsSampler(acquisition="ei", min_improvement=tolerance)``): no trial spent on a
  schedule predicted to tie with the best;
* ``optlaws-regret`` (only when asked): as ``optlaws``, with the pruner's tolerance set to
  its margin plus ``--tolerance``, so a pruned run can beat the best by at most
  ``--tolerance`` nats (95%): 0.01 nats is the 0.5% of the live target;
* ``optlaws-ei-regret`` (only when asked): the ``optlaws-regret`` pruner with the
  ``optlaws-ei`` sampler (expected improvement beyond ``--tolerance`` nats): a schedule
  predicted to beat the best by less than the regret the pruner accepts is neither
  proposed nor, once running, protected;
* ``optlaws-regret-repeats`` (only when asked): the ``optlaws-regret`` arm, where once
  :data:`REPEAT_AFTER` trials are complete the best of them is trained again under
  :data:`REPEATS` other training seeds (enqueued trials, part of the ``--trials``): the
  pruner's default ``final_noise="auto"`` measures the run-to-run noise on them.

``--workers K``: each arm's trials are run by K worker processes sharing its study (this
script again, one process per worker, each with its share of ``--trials``), as a team
with one GPU per worker runs a study: the storage is Optuna's RDB storage with its
heartbeat on (a trial whose worker dies stops counting for the others), the sampler
counts the schedules the other workers are training, and the pruner's frontier can come
from a running trial. In the TPE arms worker k seeds its sampler with ``--seed`` + k (with
one seed every worker would propose the same parameters).

After the arms it writes ``<out-dir>/README.md``: per arm the best final loss, the optimizer
steps trained in all, the trials pruned, and the command. Usage (repository root)::

    python examples/tiny_lm/study.py --quick                       # ~2-3 min: optlaws arm, 6 trials x 200 steps,
                                                                   # report and SQLite in studies/tiny_lm/quick/
    python examples/tiny_lm/study.py --arm optlaws --arm tpe --workers 2 --out-dir studies/tiny_lm/workers2
    nice -n 10 python examples/tiny_lm/study.py --trials 30        # the full study, all three arms
    optuna-dashboard sqlite:///studies/tiny_lm/tiny_lm.db          # look at it
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import torch

from optuna_optlaws import OptLawsPruner, OptLawsSampler, suggest_schedule
from optuna_optlaws.pruner import DEFAULT_MARGIN
from optuna_optlaws.torch import LossReporter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tinylm import TinyLMConfig, count_parameters, default_device, train

ROOT = Path(__file__).resolve().parents[2]
ARMS = (
    "optlaws", "tpe-median", "tpe", "tpe-optlaws", "optlaws-tolerant", "optlaws-ei", "optlaws-regret",
    "optlaws-ei-regret", "optlaws-regret-repeats",
)
"""``tpe-optlaws`` (TPE sampler + OptLawsPruner) isolates the pruner, ``optlaws-tolerant``
trades a bounded regret for steps, ``optlaws-ei`` also tells the sampler about that
regret, ``optlaws-regret`` accepts the regret itself, ``optlaws-ei-regret`` does both and
``optlaws-regret-repeats`` retrains its best schedule under other seeds (see
:func:`make_study`); they run only when asked."""
OPTLAWS_ARMS = (
    "optlaws", "optlaws-tolerant", "optlaws-ei", "optlaws-regret", "optlaws-ei-regret", "optlaws-regret-repeats",
)
"""The arms with OptLawsSampler and OptLawsPruner."""
REGRET_ARMS = ("optlaws-regret", "optlaws-ei-regret", "optlaws-regret-repeats")
"""Arms whose pruner accepts ``--tolerance`` nats of regret (tolerance = margin + it)."""
EI_ARMS = ("optlaws-ei", "optlaws-ei-regret")
"""Arms whose sampler asks for an improvement of ``--tolerance`` nats (expected improvement)."""
REPEAT_AFTER = 5
"""COMPLETE trials after which the ``optlaws-regret-repeats`` arm enqueues its repeats."""
REPEATS = 2
"""Repeats of the best complete trial in the ``optlaws-regret-repeats`` arm (training
seeds ``--train-seed + 1``, ``+ 2``, ...)."""
SEED_ATTR = "train_seed"
"""User attribute of an enqueued repeat: the training seed it runs with."""
DEFAULT_ARMS = ("optlaws", "tpe-median", "tpe")
TOLERANCE = 0.01
"""Default regret tolerance of the ``optlaws-tolerant`` arm (nats): 0.5% of the tiny LM's
final loss of about 2 nats/byte."""
STEPS_ATTR = "steps_trained"
"""User attribute of every trial: optimizer steps it actually trained."""


@dataclass(frozen=True)
class SearchSpace:
    """The schedule search space of the study (all trials: same horizon)."""

    families: tuple[str, ...] = ("cosine", "wsd", "linear", "constant")
    peak_lr: tuple[float, float] = (1e-3, 3e-2)
    warmup_fraction: tuple[float, float] = (0.0, 0.1)
    cooldown_fraction: tuple[float, float] = (0.05, 0.5)
    final_lr_ratio: tuple[float, float] = (0.0, 0.1)

    def warmup_steps(self, steps: int) -> tuple[int, int]:
        """The warmup range in optimizer steps for a ``steps``-step run."""
        return int(self.warmup_fraction[0] * steps), int(self.warmup_fraction[1] * steps)


def make_objective(
    steps: int,
    cfg: TinyLMConfig,
    space: SearchSpace,
    device: torch.device,
    init_state: dict[str, torch.Tensor] | None = None,
) -> Any:
    """The study's objective: one training run of ``steps`` optimizer steps, from random
    weights or from ``init_state`` (a pretrained model's, for a fine-tuning study);
    returns the final held-out loss (nats/byte), NaN (FAIL) when the run diverged."""
    n_params = count_parameters(cfg)
    warmup = space.warmup_steps(steps)

    def objective(trial: optuna.Trial) -> float:
        schedule = suggest_schedule(
            trial,
            families=space.families,
            peak_lr=space.peak_lr,
            warmup_steps=warmup,
            cooldown_fraction=space.cooldown_fraction,
            final_lr_ratio=space.final_lr_ratio,
            total_steps=steps,
            model_size=n_params,
            tokens_per_step=cfg.tokens_per_step,
        )
        reporter = LossReporter(trial, every=cfg.eval_every, total_steps=schedule.total_steps)
        trained = 0

        def on_eval(step: int, loss: float) -> None:
            nonlocal trained
            trained = step + 1
            reporter.step(loss, step)

        try:
            res = train(schedule, trial_config(cfg, trial), on_eval=on_eval, device=device, init_state=init_state)
        finally:
            trial.set_user_attr(STEPS_ATTR, trained)
        assert not isinstance(res, tuple)
        trial.set_user_attr("train_seconds", round(res.seconds, 2))
        if res.diverged:
            trial.set_user_attr("diverged", True)
            return math.nan  # recorded as FAIL: a diverged run has no final loss
        return res.final_loss

    return objective


OPTUNA_ARMS = ("tpe-median", "tpe")
"""Arms of Optuna's own tools, the same in the pretraining and the fine-tuning study."""


def optuna_arm(arm: str, seed: int, steps: int) -> tuple[optuna.samplers.BaseSampler, optuna.pruners.BasePruner]:
    """Sampler and pruner of an arm of :data:`OPTUNA_ARMS`: TPE with MedianPruner (5
    startup trials, no pruning in the first tenth of the ``steps``), or TPE alone."""
    sampler = optuna.samplers.TPESampler(seed=seed)
    if arm == "tpe-median":
        return sampler, optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=steps // 10)
    return sampler, optuna.pruners.NopPruner()


def pruner_tolerance(arm: str, tolerance: float) -> float:
    """The regret tolerance (nats) of an OptLaws arm's pruner given ``--tolerance``: none in
    ``optlaws``, the margin plus it in the regret arms (a pruned run can beat the frontier
    by at most ``tolerance``), ``tolerance`` itself in the others."""
    if arm == "optlaws":
        return 0.0
    return DEFAULT_MARGIN + tolerance if arm in REGRET_ARMS else tolerance


def trial_logger(arm: str, t0: float, who: str = "") -> Any:
    """A study callback printing each finished trial of ``arm`` (state, value, optimizer
    steps, seconds since ``t0``); ``who`` tags the process (a worker)."""

    def log(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        value = f"{trial.value:.4f}" if trial.value is not None else "-"
        print(f"[{arm}{who}] trial {trial.number}: {trial.state.name} value {value} "
              f"steps {trial.user_attrs.get(STEPS_ATTR)} ({time.perf_counter() - t0:.0f} s)", flush=True)

    return log


def make_study(
    arm: str, storage: str, seed: int, steps: int, resume: bool, law: str = "optlaw", tolerance: float = TOLERANCE
) -> optuna.Study:
    """The arm's study (deleted and recreated unless ``resume``); ``tolerance`` (nats) is
    the pruner's regret tolerance in the ``optlaws-tolerant`` and ``optlaws-ei`` arms (and
    the improvement the latter's sampler asks for). A pruned run of those arms can beat the
    frontier by at most ``tolerance - margin`` nats (95%), nothing at the default margin of
    0.01; the ``optlaws-regret`` arm sets the pruner's tolerance to ``margin + tolerance``,
    so a run it prunes can beat the frontier by at most ``tolerance`` nats: the regret the
    live target allows (0.5% of the final loss); ``optlaws-ei-regret`` has that pruner and
    a sampler that asks for an improvement of ``tolerance`` nats."""
    name = f"tiny_lm-{arm}"
    if arm in OPTLAWS_ARMS:
        tol = pruner_tolerance(arm, tolerance)
        sampler: optuna.samplers.BaseSampler = (
            OptLawsSampler(law, seed=seed, acquisition="ei", min_improvement=tolerance)
            if arm in EI_ARMS
            else OptLawsSampler(law, seed=seed)
        )
        pruner: optuna.pruners.BasePruner = OptLawsPruner(law, seed=seed, tolerance=tol)
    elif arm in OPTUNA_ARMS:
        sampler, pruner = optuna_arm(arm, seed, steps)
    elif arm == "tpe-optlaws":
        sampler = optuna.samplers.TPESampler(seed=seed)
        pruner = OptLawsPruner(law, seed=seed)
    else:
        raise ValueError(f"unknown arm {arm!r}; known: {ARMS}")
    if not resume:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=storage)
    return optuna.create_study(
        study_name=name, storage=storage, sampler=sampler, pruner=pruner, direction="minimize", load_if_exists=True
    )


HEARTBEAT_S = 30
"""Seconds between two heartbeats of a worker of ``--workers`` (Optuna's RDB storage);
a trial whose worker has not beaten for :data:`GRACE_S` is taken for dead."""
GRACE_S = 120


def run_workers(args: argparse.Namespace, arm: str, storage: str, trials: int) -> None:
    """Run ``trials`` trials of ``arm``'s study (created already) with ``args.workers``
    processes of this script (``--worker``), each its share of the trials; waits for all.
    A worker that fails raises ``RuntimeError`` naming it, once the others are done."""
    import subprocess

    shares = [trials // args.workers + (k < trials % args.workers) for k in range(args.workers)]
    common = ["--arm", arm, "--steps", str(args.steps), "--storage", storage,
              "--law", args.law, "--tolerance", str(args.tolerance), "--train-seed", str(args.train_seed),
              "--threads", str(args.threads), "--worker", *(["--tiny"] if args.tiny else [])]
    # Optuna's own samplers draw from their seeded generator: workers with one seed would
    # propose the same parameters, so worker k seeds them with seed + k. The OptLaws arms
    # keep one seed (their proposals are seeded by trial number, and the pruner's seed
    # names the law fit the workers share).
    seeds = [args.seed + k if arm in OPTUNA_ARMS else args.seed for k in range(args.workers)]
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *common,
                               "--seed", str(seed), "--trials", str(n)])
             for n, seed in zip(shares, seeds, strict=True) if n > 0]
    failed = [k for k, p in enumerate(procs) if p.wait() != 0]
    if failed:
        raise RuntimeError(f"study.py: worker(s) {failed} of arm {arm} exited with an error")


def run_worker(args: argparse.Namespace, arm: str, storage: str, objective: Any) -> int:
    """One worker of ``--workers``: ``args.trials`` trials of ``arm``'s study (never
    recreated), on Optuna's RDB storage with its heartbeat on."""
    import warnings

    url = storage if "://" in storage else f"sqlite:///{storage}"
    with warnings.catch_warnings():  # Optuna marks the heartbeat experimental, once per worker
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    study = make_study(arm, rdb, args.seed, args.steps, True, args.law, args.tolerance)  # type: ignore[arg-type]
    log = trial_logger(arm, time.perf_counter(), f" pid {os.getpid()}")
    study.optimize(objective, n_trials=args.trials, callbacks=[log], catch=())
    return 0


def _stored_seed(study: optuna.Study, default: int) -> str:
    """The sampler seed an arm's study was run with (its ``seed`` attribute, else the
    ``--seed`` of its stored command, else ``default``)."""
    seed = study.user_attrs.get("seed")
    if seed is None:
        words = str(study.user_attrs.get("command", "")).split()
        seed = words[words.index("--seed") + 1] if "--seed" in words[:-1] else default
    return str(seed)


def summarize(study: optuna.Study) -> dict[str, Any]:
    """Per-arm figures: best final loss, optimizer steps trained, pruned/failed counts."""
    S = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == S.COMPLETE and t.value is not None and math.isfinite(t.value)]
    best = min(complete, key=lambda t: t.value) if complete else None  # type: ignore[arg-type,return-value]
    steps = sum(int(t.user_attrs.get(STEPS_ATTR, 0)) for t in trials)
    # optimizer steps spent before the best trial finished (budget to reach the best)
    steps_to_best = 0
    if best is not None:
        steps_to_best = sum(int(t.user_attrs.get(STEPS_ATTR, 0)) for t in trials if t.number <= best.number)
    seconds = sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.datetime_complete is not None and t.datetime_start is not None
    )
    return {
        "study": study.study_name,
        "trials": len(trials),
        "complete": len(complete),
        "pruned": sum(t.state == S.PRUNED for t in trials),
        "failed": sum(t.state == S.FAIL for t in trials),
        "best_value": best.value if best is not None else None,
        "best_trial": best.number if best is not None else None,
        "best_params": best.params if best is not None else None,
        "steps_trained": steps,
        "steps_to_best": steps_to_best,
        "trace": [
            [int(t.user_attrs.get(STEPS_ATTR, 0)), t.value if t.state == S.COMPLETE and t.value is not None else None]
            for t in sorted(trials, key=lambda t: t.number)
        ],
        "seconds": round(seconds, 1),
        "command": study.user_attrs.get("command", ""),
        "families": dict(Counter(str(t.params.get("lr_family")) for t in trials)),
    }


def steps_until(trace: list[list[Any]], target: float) -> int | None:
    """Optimizer steps trained, trials in number order (``trace``: ``[steps, final value or
    None]`` per trial), up to and including the first COMPLETE trial whose value is at most
    ``target`` (nats); ``None`` when no trial reached it."""
    spent = 0
    for steps, value in trace:
        spent += int(steps)
        if value is not None and value <= target:
            return spent
    return None


def arm_table(results: dict[str, dict[str, Any]]) -> list[str]:
    """The report's table of arms (lines of markdown): trials by state, best final loss
    (nats/byte), optimizer steps trained and until the best, wall seconds."""
    lines = [
        "| arm | trials | complete | pruned | failed | best final loss | best trial | optimizer steps trained "
        "| steps until best | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, r in results.items():
        best = f"{r['best_value']:.4f}" if r["best_value"] is not None else "-"
        lines.append(
            f"| {arm} | {r['trials']} | {r['complete']} | {r['pruned']} | {r['failed']} | {best} | "
            f"{r['best_trial']} | {r['steps_trained']} | {r['steps_to_best']} | {r['seconds']:.0f} |"
        )
    return lines


def arm_choices(results: dict[str, dict[str, Any]]) -> list[str]:
    """The report's lists of what each arm chose: trials per schedule family, best parameters."""
    lines = ["Trials per schedule family:", ""]
    for arm, r in results.items():
        fams = ", ".join(f"{k} {v}" for k, v in sorted(r.get("families", {}).items()))
        lines.append(f"- {arm}: {fams}")
    lines += ["", "Best parameters per arm:", ""]
    lines += [f"- {arm}: `{json.dumps(r['best_params'], sort_keys=True)}`" for arm, r in results.items()]
    return [*lines, ""]


def arm_commands(results: dict[str, dict[str, Any]]) -> list[str]:
    """The report's list of the command that produced each arm (an arm's study keeps the
    command of its last run: the header's command may have run only some arms)."""
    commands = [f"- {arm}: `{r['command']}`" for arm, r in results.items()]
    return ["", "Commands that produced each arm:", "", *commands, ""]


def report_header(title: str, script: str, command: str) -> list[str]:
    """The first lines of a study report (markdown): its title, the script that writes
    it, and the command that produced it."""
    return [f"# {title} (generated)", "", f"Written by `{script}`; do not edit by hand.", "",
            f"Command: `{command}`", ""]


def write_report(out_dir: Path, results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> Path:
    """``README.md`` of the study folder (and ``summary.json``), from the stored studies."""
    lines = [
        *report_header("Live study: LR schedules of the tiny LM", "examples/tiny_lm/study.py", meta["command"]),
        f"Storage: `{meta['storage']}` (one study per arm, `tiny_lm-<arm>`; open it with `optuna-dashboard`).",
        f"Each trial: {meta['steps']} optimizer steps of the tiny LM (N = {meta['model_size']} parameters,",
        f"{meta['tokens_per_step']} bytes per step, training seed {meta['train_seed']} in every trial but the "
        f"enqueued repeats of `optlaws-regret-repeats`, whose seeds follow it); held-out loss",
        f"reported every {meta['eval_every']} steps; objective = final validation loss (nats/byte) on a",
        "larger fixed held-out set. Search space: "
        + ", ".join(f"{k}={v}" for k, v in meta["space"].items())
        + f". Sampler seed {meta['seed']}. Machine: {meta['machine']}.",
        "",
        *arm_table(results),
    ]
    lines += arm_commands(results)
    ref = results.get("tpe")
    if ref is not None and ref["best_value"] is not None:
        lines.append("Against the no-pruning arm (`tpe`): target = best within 0.5% with at most half the steps.")
        lines.append("")
        for arm, r in results.items():
            if arm == "tpe" or r["best_value"] is None:
                continue
            gap = (r["best_value"] - ref["best_value"]) / ref["best_value"] * 100
            frac = r["steps_trained"] / max(ref["steps_trained"], 1)
            ok = target_met(gap, frac)
            lines.append(
                f"- {arm}: best {gap:+.2f}% vs tpe, {frac:.2f} x its optimizer steps: target "
                f"{'met' if ok else 'NOT met'}."
            )
        lines += [
            "",
            "Anytime view (not the target, which counts every step of the study): optimizer steps each arm had",
            "trained, trials in order, when a COMPLETE trial first came within 0.5% of tpe's best final loss.",
            "",
        ]
        for arm, r in results.items():
            reached = steps_until(r.get("trace", []), ref["best_value"] * 1.005)
            share = None if reached is None else reached / max(ref["steps_trained"], 1)
            what = "never" if reached is None else f"after {reached} steps ({share:.2f} x tpe's total)"
            lines.append(f"- {arm}: {what}.")
        lines.append("")
    noise = meta.get("noise")
    if noise:
        lines += [
            f"Seed noise: the best `tpe` schedule retrained with training seeds {noise['seeds']}: final losses "
            f"{', '.join(f'{v:.4f}' for v in noise['values'])} (std {noise['std']:.4f} nats). Within one study the",
            "seed is fixed, so schedules are compared on the same initialisation and batch order.",
            "",
        ]
    lines += arm_choices(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps({"meta": meta, "arms": results}, indent=1), encoding="utf-8")
    path = out_dir / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def trial_config(cfg: TinyLMConfig, trial: optuna.Trial | optuna.trial.FrozenTrial) -> TinyLMConfig:
    """The training settings of ``trial``: ``cfg``, under the training seed of its user
    attribute :data:`SEED_ATTR` when it has one (an enqueued repeat)."""
    seed = trial.user_attrs.get(SEED_ATTR)
    return cfg if seed is None else replace(cfg, seed=int(seed))


def enqueue_repeats(study: optuna.Study, train_seed: int, count: int = REPEATS, after: int = REPEAT_AFTER) -> bool:
    """Once ``study`` has ``after`` COMPLETE trials, enqueue its best one's parameters
    ``count`` times, with training seeds ``train_seed + 1`` onwards (user attribute
    :data:`SEED_ATTR`); once per study (recorded in its user attributes, so a resumed
    study does not repeat again). Returns whether it enqueued them now."""
    if study.user_attrs.get("repeats_of") is not None:
        return False
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < after:
        return False
    best = min(complete, key=lambda t: float(t.value))  # type: ignore[arg-type]
    for i in range(count):
        study.enqueue_trial(best.params, user_attrs={SEED_ATTR: train_seed + 1 + i, "repeat_of": best.number})
    study.set_user_attr("repeats_of", best.number)
    return True


def target_met(gap_percent: float, steps_share: float) -> bool:
    """The live target (issue 3): a best final loss within 0.5% of the no-pruning arm's
    (``gap_percent``, positive when worse) with at most half its optimizer steps."""
    return gap_percent <= 0.5 and steps_share <= 0.5


def training_config(train_seed: int, steps: int, tiny: bool = False) -> TinyLMConfig:
    """Every trial's training settings: the default model and data with ``train_seed``,
    a toy model with ``tiny`` (smoke tests only), held-out loss measured at least 4 times
    in ``steps`` optimizer steps."""
    cfg = replace(TinyLMConfig(), seed=train_seed)
    if tiny:
        cfg = replace(cfg, d_model=32, n_heads=2, context=32, batch_size=8, eval_batches=2, final_eval_batches=4)
    if steps < 4 * cfg.eval_every:
        cfg = replace(cfg, eval_every=max(1, steps // 8))
    return cfg


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arm", action="append", choices=ARMS, help="arm(s) to run (repeatable; default: the first three)")
    ap.add_argument("--trials", type=int, default=30, help="trials per arm (default 30)")
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps per trial (default 600)")
    ap.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///<out-dir>/tiny_lm.db)")
    ap.add_argument("--out-dir", type=Path, default=None,
                    help="report folder (default studies/tiny_lm, with --quick studies/tiny_lm/quick)")
    ap.add_argument("--quick", action="store_true", help="short version: optlaws arm, 6 trials x 200 steps")
    ap.add_argument("--law", default="optlaw", help="law of the optlaws arm (default optlaw)")
    ap.add_argument("--seed", type=int, default=0, help="sampler/pruner seed (default 0)")
    ap.add_argument("--tolerance", type=float, default=TOLERANCE,
                    help=f"regret tolerance (nats) of the optlaws-tolerant, -ei, -regret and -ei-regret arms "
                    f"(default {TOLERANCE})")
    ap.add_argument("--train-seed", type=int, default=0, help="training seed of every trial (default 0)")
    ap.add_argument("--noise-seeds", type=int, default=0, help="retrain the best tpe schedule with N other seeds")
    ap.add_argument("--resume", action="store_true", help="continue the arms' studies instead of starting over")
    ap.add_argument("--report-only", action="store_true", help="train nothing: rewrite the report from the storage")
    ap.add_argument("--tiny", action="store_true", help="a toy model (d_model 32, batch 8 x 32): smoke tests only")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--workers", type=int, default=1,
                    help="worker processes per arm sharing its study, each with its share of --trials (default 1)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one of those processes
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error(f"--workers {args.workers}: must be >= 1")
    if args.workers > 1 and "optlaws-regret-repeats" in (args.arm or []):
        ap.error("--workers: the optlaws-regret-repeats arm enqueues its repeats from one process; run it alone")
    if args.quick:
        args.arm = args.arm or ["optlaws"]
        if "--trials" not in argv:
            args.trials = 6
        if "--steps" not in argv:
            args.steps = 200
    arms = args.arm or list(DEFAULT_ARMS)
    out_dir: Path = args.out_dir or ROOT / "studies" / "tiny_lm" / ("quick" if args.quick else "")
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{os.path.relpath(out_dir / 'tiny_lm.db')}"
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = default_device()
    cfg = training_config(args.train_seed, args.steps, args.tiny)
    space = SearchSpace()
    objective = make_objective(args.steps, cfg, space, device)
    command = "python examples/tiny_lm/study.py " + shlex.join(argv)
    if args.worker:
        return run_worker(args, arms[0], storage, objective)
    results: dict[str, dict[str, Any]] = {}
    for arm in [] if args.report_only else arms:
        study = make_study(arm, storage, args.seed, args.steps, args.resume, args.law, args.tolerance)
        study.set_user_attr("command", command)
        study.set_user_attr("seed", args.seed)
        waiting = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
        todo = args.trials - (len(study.trials) - waiting) if args.resume else args.trials  # enqueued: to do
        callbacks: list[Any] = [trial_logger(arm, time.perf_counter())]
        if arm == "optlaws-regret-repeats":
            callbacks.append(lambda study, _trial: enqueue_repeats(study, args.train_seed))
        if todo > 0 and args.workers > 1:
            run_workers(args, arm, storage, todo)
        elif todo > 0:
            study.optimize(objective, n_trials=todo, callbacks=callbacks, catch=())
        results[arm] = summarize(study)
    # keep the summaries of arms stored earlier in the same storage (e.g. run one arm at a time)
    for arm in ARMS:
        if arm in results:
            continue
        with contextlib.suppress(KeyError):
            results[arm] = summarize(optuna.load_study(study_name=f"tiny_lm-{arm}", storage=storage))
    results = {a: results[a] for a in ARMS if a in results}
    noise = None
    if args.noise_seeds > 0 and "tpe" in results and results["tpe"]["best_trial"] is not None:
        from optuna_optlaws import get_schedule

        best = optuna.load_study(study_name="tiny_lm-tpe", storage=storage).best_trial
        sched = get_schedule(best)
        assert sched is not None
        seeds = [args.train_seed + i for i in range(args.noise_seeds + 1)]
        values = [float(best.value)]  # type: ignore[arg-type]
        for s in seeds[1:]:
            r = train(sched, replace(cfg, seed=s), device=device)
            assert not isinstance(r, tuple)
            values.append(r.final_loss)
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        noise = {"seeds": seeds, "values": values, "std": std}
        optuna.load_study(study_name="tiny_lm-tpe", storage=storage).set_user_attr("noise", noise)
    elif "tpe" in results:
        # measured by an earlier --noise-seeds run on the same best trial: keep it in the report
        noise = optuna.load_study(study_name="tiny_lm-tpe", storage=storage).user_attrs.get("noise")
    seeds = [_stored_seed(optuna.load_study(study_name=f"tiny_lm-{a}", storage=storage), args.seed) for a in results]
    meta = {
        "command": command,
        "storage": storage,
        "steps": args.steps,
        "model_size": count_parameters(cfg),
        "tokens_per_step": cfg.tokens_per_step,
        "train_seed": args.train_seed,
        "eval_every": cfg.eval_every,
        "seed": ", ".join(sorted(set(seeds))) or str(args.seed),
        "space": {k: v for k, v in vars(space).items()},
        "machine": f"{platform.machine()}, torch {torch.__version__}, {device}, {args.threads} thread(s)",
        "noise": noise,
    }
    path = write_report(out_dir, results, meta)
    print(path.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
