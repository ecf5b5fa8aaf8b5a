"""Synthetic training runs and study drivers shared by the sampler/pruner/storage tests.

The synthetic loss (``synth_loss``) is
:func:`optuna_optlaws.benchmarks._synthetic.synthetic_loss`, an analytic function of the
whole LR schedule (no law is fitted to make it).

Run as a script, this module is a worker process for the storage tests::

    python tests/_study_helpers.py run STORAGE_URL STUDY N_TRIALS [--law momentum] [--seed 0]
    python tests/_study_helpers.py check STORAGE_URL STUDY TRIAL_NUMBER
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from optuna_optlaws.benchmarks._synthetic import synthetic_loss as synth_loss
from optuna_optlaws.schedules import Schedule

TOTAL_STEPS = 600
REPORT_EVERY = 20
TEST_LAW = "momentum"
"""A fast baseline law: the tests check the plumbing, not the law's accuracy."""


def report_steps(total: int = TOTAL_STEPS, every: int = REPORT_EVERY) -> np.ndarray:
    """Report steps of a run: every ``every`` steps and the last step."""
    return np.unique(np.append(np.arange(0, total, every), total - 1))


def run_curve(
    trial: optuna.Trial, schedule: Schedule, *, peak_penalty: float = 0.0, every: int = REPORT_EVERY
) -> float:
    """Report the synthetic curve of ``schedule`` every ``every`` steps, asking the pruner
    each time."""
    steps = report_steps(schedule.total_steps, every)
    losses = synth_loss(schedule, steps, peak_penalty=peak_penalty)
    for step, loss in zip(steps.tolist(), losses.tolist(), strict=True):
        trial.report(loss, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return float(losses[-1])


def schedule_objective(peak_penalty: float = 0.0, every: int = REPORT_EVERY, **space: Any) -> Any:
    """An objective suggesting a schedule (``suggest_schedule(**space)``) and running it."""
    from optuna_optlaws import suggest_schedule

    kwargs = {"total_steps": TOTAL_STEPS, "warmup_steps": 30, "peak_lr": (3e-4, 3e-2), **space}

    def objective(trial: optuna.Trial) -> float:
        schedule = suggest_schedule(trial, **kwargs)
        return run_curve(trial, schedule, peak_penalty=peak_penalty, every=every)

    return objective


def fixed_objective(schedules: list[Schedule]) -> Any:
    """An objective running ``schedules[trial.number]`` (attached with set_schedule)."""
    from optuna_optlaws import set_schedule

    def objective(trial: optuna.Trial) -> float:
        schedule = schedules[trial.number % len(schedules)]
        set_schedule(trial, schedule)
        return run_curve(trial, schedule)

    return objective


def study_record(study: optuna.Study) -> list[dict[str, Any]]:
    """What the tests compare across processes: per trial, state, params and the
    pruner's attributes (rounded to 12 digits)."""
    out = []
    for t in study.get_trials(deepcopy=False):
        attrs = {k: (round(v, 12) if isinstance(v, float) else v) for k, v in t.user_attrs.items()}
        out.append(
            {
                "number": t.number,
                "state": t.state.name,
                "last_step": t.last_step,
                "params": {k: (round(v, 12) if isinstance(v, float) else v) for k, v in t.params.items()},
                "attrs": attrs,
            }
        )
    return out


def make_components(law: str, seed: int) -> tuple[optuna.samplers.BaseSampler, optuna.pruners.BasePruner]:
    """The sampler and pruner every worker of the storage tests uses."""
    from optuna_optlaws import OptLawsPruner, OptLawsSampler

    sampler = OptLawsSampler(law, seed=seed, n_startup_trials=3, n_candidates=32)
    pruner = OptLawsPruner(law, n_min_trials=2, min_fraction=0.2, margin=0.01)
    return sampler, pruner


WORKER_REPORT_EVERY = 50
"""Report interval of the storage tests' workers (fewer storage transactions)."""


def run_study(study: optuna.Study, n_trials: int) -> None:
    """What a storage-test worker runs: ``n_trials`` trials of a schedule search."""
    study.optimize(schedule_objective(every=WORKER_REPORT_EVERY), n_trials=n_trials)


def check_trial(study: optuna.Study, pruner: optuna.pruners.BasePruner, number: int) -> dict[str, Any]:
    """The pruner's decision on trial ``number`` and the trial's user attributes after it."""
    storage = study._storage
    trial = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study._study_id, number))
    decision = pruner.prune(study, trial)
    return {"prune": decision, "attrs": storage.get_trial(trial._trial_id).user_attrs}


JOURNAL_PREFIX = "journal:"
"""A storage given as ``journal:PATH`` is Optuna's journal file storage on ``PATH``."""
GRPC_PREFIX = "grpc:"
"""A storage given as ``grpc:PORT`` is Optuna's gRPC storage proxy on ``localhost:PORT``."""


def open_storage(spec: str) -> str | optuna.storages.BaseStorage:
    """The storage a worker opens: an RDB URL as is, ``journal:PATH`` as a journal file,
    ``grpc:PORT`` as a client of the gRPC proxy server on that port."""
    if spec.startswith(JOURNAL_PREFIX):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(spec[len(JOURNAL_PREFIX) :]))
    if spec.startswith(GRPC_PREFIX):
        from optuna.exceptions import ExperimentalWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return optuna.storages.GrpcStorageProxy(host="localhost", port=int(spec[len(GRPC_PREFIX) :]))
    return spec


HELPER = str(Path(__file__).resolve())


def start_worker(*args: str) -> subprocess.Popen[str]:
    """This module run as a worker process (``run`` or ``check``, see :func:`_main`)."""
    return subprocess.Popen([sys.executable, HELPER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def worker_output(proc: subprocess.Popen[str], timeout: float = 240) -> str:
    """What a worker printed (it must exit cleanly)."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


class _LoggedWarnings(logging.Handler):
    """WARNING records of the package's loggers, as ``name: message``."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()}")


def _main(argv: list[str]) -> int:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("storage")
    run.add_argument("study")
    run.add_argument("n_trials", type=int)
    run.add_argument("--law", default=TEST_LAW)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--pickled", help="a pickle of (sampler, pruner) to run with instead of new ones")
    run.add_argument("--warnings", action="store_true",
                     help="print the warnings raised and logged (Optuna's ExperimentalWarning aside) as JSON")
    chk = sub.add_parser("check")
    chk.add_argument("storage")
    chk.add_argument("study")
    chk.add_argument("trial", type=int)
    chk.add_argument("--law", default=TEST_LAW)
    args = parser.parse_args(argv)
    if args.cmd == "run":
        if args.pickled:
            with open(args.pickled, "rb") as f:
                sampler, pruner = pickle.load(f)
        else:
            sampler, pruner = make_components(args.law, args.seed)
        logged = _LoggedWarnings()
        logging.getLogger("optuna_optlaws").addHandler(logged)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.load_study(study_name=args.study, storage=open_storage(args.storage), sampler=sampler,
                                      pruner=pruner)
            run_study(study, args.n_trials)
        if args.warnings:
            found = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught]
            print(json.dumps({"warnings": found + logged.messages}))
        return 0
    _, pruner = make_components(args.law, 0)
    study = optuna.load_study(study_name=args.study, storage=open_storage(args.storage), pruner=pruner)
    print(json.dumps(check_trial(study, pruner, args.trial), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
