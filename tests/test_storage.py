"""State in the study's storage: the fitted-law cache, restarts, and workers that agree.

SQLite (a tmp file) and a throwaway PostgreSQL 15 cluster (skipped only when its binaries
are absent). Workers are real processes running ``tests/_study_helpers.py``.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
from _study_helpers import (
    JOURNAL_PREFIX,
    TEST_LAW,
    TOTAL_STEPS,
    check_trial,
    make_components,
    open_storage,
    report_steps,
    run_study,
    schedule_objective,
    start_worker,
    study_record,
    synth_loss,
    worker_output,
)
from optuna.trial import TrialState

from optuna_optlaws import Schedule, set_schedule
from optuna_optlaws._study_state import _MEMORY, LAW_KEY_PREFIX, LawStore

optuna.logging.set_verbosity(optuna.logging.WARNING)

PG_BIN = Path("/usr/lib/postgresql/15/bin")
BAD = Schedule.constant(4e-4, TOTAL_STEPS, 30)


@pytest.fixture
def db_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder for SQLite files: in memory-backed /dev/shm where there is one (commits
    there skip the disk's fsync; the storage code paths are the same)."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        path = Path(tempfile.mkdtemp(prefix="optlaws-test-", dir="/dev/shm"))
        yield path
        shutil.rmtree(path, ignore_errors=True)
    else:
        yield tmp_path


def _running_bad_trial(url: str, study_name: str, n_reports: int = 12) -> int:
    """A RUNNING trial with a poor schedule and ``n_reports`` reports; its number."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    trial = study.ask()
    set_schedule(trial, BAD)
    steps = report_steps()[:n_reports]
    for step, loss in zip(steps.tolist(), synth_loss(BAD, steps).tolist(), strict=True):
        trial.report(loss, step)
    return trial.number


# ---------------------------------------------------------------------- in process
def _complete(study: optuna.Study, schedule: Schedule, n_reports: int | None = None) -> None:
    trial = study.ask()
    set_schedule(trial, schedule)
    steps = report_steps()[:n_reports]
    for step, loss in zip(steps.tolist(), synth_loss(schedule, steps).tolist(), strict=True):
        trial.report(loss, step)
    if n_reports is None:
        study.tell(trial, float(synth_loss(schedule, steps[-1:])[0]))


def test_law_is_refitted_only_when_the_data_changed(db_dir: Path) -> None:
    url = f"sqlite:///{db_dir / 'cache.db'}"
    study = optuna.create_study(storage=url, study_name="cache")
    store = LawStore(TEST_LAW, min_complete=2, refit_growth=0.5)
    assert store.get(study, study.get_trials()).law is None  # no data, no prior
    for peak in (2e-3, 4e-3):
        _complete(study, Schedule.cosine(peak, TOTAL_STEPS, 30))
    first = store.get(study, study.get_trials())
    assert first.source == "study" and first.refitted and store.n_fits == 1
    stored = study._storage.get_study_system_attrs(study._study_id)[LAW_KEY_PREFIX + TEST_LAW]
    assert stored["fingerprint"] == first.fingerprint and stored["finished"] == [0, 1]
    again = store.get(study, study.get_trials())
    assert again.law is first.law and not again.refitted and store.n_fits == 1  # memory cache

    # a running trial adds 8 points to 62: below the 50% growth, reuse
    _complete(study, Schedule.wsd(3e-3, TOTAL_STEPS, 30), n_reports=8)
    assert not store.get(study, study.get_trials()).refitted
    # a trial finishing is a meaningful change
    _complete(study, Schedule.linear(3e-3, TOTAL_STEPS, 30))
    assert store.get(study, study.get_trials()).refitted and store.n_fits == 2

    # a fresh worker (another LawStore, empty process cache) reuses the stored fit
    _MEMORY.clear()
    other = LawStore(TEST_LAW, min_complete=2, refit_growth=0.5)
    reused = optuna.load_study(study_name="cache", storage=url)
    state = other.get(reused, reused.get_trials())
    assert other.n_fits == 0 and state.law is not None
    assert state.law.to_dict()["params"] == store.get(study, study.get_trials()).law.to_dict()["params"]  # type: ignore[union-attr]


# ---------------------------------------------------------------------- processes
def _in_process(url: str, n_trials: int) -> optuna.Study:
    sampler, pruner = make_components(TEST_LAW, 0)
    study = optuna.load_study(study_name="s", storage=url, sampler=sampler, pruner=pruner)
    run_study(study, n_trials)
    return study


def test_restarted_worker_makes_the_same_decisions(db_dir: Path) -> None:
    """One worker running 8 trials == one running 4, then a fresh process running 4."""
    urls = [f"sqlite:///{db_dir / name}" for name in ("one.db", "restart.db")]
    for url in urls:
        optuna.create_study(storage=url, study_name="s")
    n = 8
    _in_process(urls[1], n // 2)
    restarted = start_worker("run", urls[1], "s", str(n - n // 2))
    _in_process(urls[0], n)
    worker_output(restarted)
    records = [study_record(optuna.load_study(study_name="s", storage=u)) for u in urls]
    assert len(records[0]) == n
    assert records[0] == records[1]
    assert sum("optlaws_pred_final" in r["attrs"] for r in records[0]) >= 4  # the law was at work
    # and this process and a fresh one judge the same new running trial alike
    numbers = [_running_bad_trial(u, "s") for u in urls]
    out_fresh = start_worker("check", urls[1], "s", str(numbers[1]))
    _, pruner = make_components(TEST_LAW, 0)
    here = check_trial(optuna.load_study(study_name="s", storage=urls[0]), pruner, numbers[0])
    # (whether the law prunes this trial depends on the sampled runs: the pruner does not prune a
    # peak LR outside the complete runs' range; what is checked is that both workers agree)
    assert json.loads(worker_output(out_fresh)) == json.loads(json.dumps(here)) and "optlaws_pred_lo" in here["attrs"]


def test_a_pickled_sampler_and_pruner_go_on_in_another_process(db_dir: Path) -> None:
    """The sampler and pruner pickle (as process pools and Ray Tune send them to
    workers): 4 trials here, then the pickled pair runs 4 more in a fresh process, and the
    study is the one a single worker running 8 trials makes."""
    urls = [f"sqlite:///{db_dir / name}" for name in ("one.db", "pickled.db")]
    for url in urls:
        optuna.create_study(storage=url, study_name="s")
    sampler, pruner = make_components(TEST_LAW, 0)
    study = optuna.load_study(study_name="s", storage=urls[1], sampler=sampler, pruner=pruner)
    run_study(study, 4)
    pickled = db_dir / "components.pkl"
    pickled.write_bytes(pickle.dumps((sampler, pruner)))
    other = start_worker("run", urls[1], "s", "4", "--pickled", str(pickled))
    _in_process(urls[0], 8)
    worker_output(other)
    records = [study_record(optuna.load_study(study_name="s", storage=u)) for u in urls]
    assert len(records[1]) == 8 and records[0] == records[1]
    assert sum("optlaws_pred_final" in r["attrs"] for r in records[1][4:]) >= 2  # the copy's law at work


def test_two_workers_on_a_journal_file_share_the_law_and_agree(db_dir: Path) -> None:
    """Optuna's journal file storage (its choice for many processes on a shared file
    system), as on PostgreSQL below."""
    _two_workers_share_the_law_and_agree(f"{JOURNAL_PREFIX}{db_dir / 'journal.log'}", "journal")


def test_threads_of_one_process_share_a_sqlite_study(db_dir: Path) -> None:
    """``study.optimize(n_jobs=3)``: the sampler and pruner (and their in-process caches)
    serve three threads at once: no trial fails, each pruned one says why, and the
    fitted law is in the storage."""
    from optuna_optlaws._pruner._frontier import PRUNE_REASON

    url = f"sqlite:///{db_dir / 'threads.db'}"
    sampler, pruner = make_components(TEST_LAW, 0)
    study = optuna.create_study(storage=url, study_name="t", sampler=sampler, pruner=pruner)
    study.optimize(schedule_objective(every=25), n_trials=12, n_jobs=3, catch=())
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    assert len(trials) == 12 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}, states
    assert all(PRUNE_REASON in t.user_attrs for t in trials if t.state == TrialState.PRUNED)
    assert any("optlaws_pred_final" in t.user_attrs for t in trials)  # the law was at work
    stored = study._storage.get_study_system_attrs(study._study_id)[LAW_KEY_PREFIX + TEST_LAW]
    assert stored["law"] is not None


# ---------------------------------------------------------------------- PostgreSQL
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL 15 cluster on a free loopback port; yields its URL."""
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        pytest.skip(f"PostgreSQL 15 binaries not found in {PG_BIN}")
    pytest.importorskip("psycopg2", reason="psycopg2 is needed for Optuna's PostgreSQL storage")
    prefix: list[str] = []
    root = tempfile.mkdtemp(prefix="optlaws-pg-")
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as the postgres user")
        prefix = ["runuser", "-u", "postgres", "--"]
        os.chmod(root, 0o755)
        shutil.chown(root, "postgres")
    data = os.path.join(root, "data")
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C"}

    def pg(*cmd: str, **kw: object) -> None:
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, env=env, timeout=120, **kw)  # type: ignore[call-overload]

    try:
        pg(str(PG_BIN / "initdb"), "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
        pg(
            str(PG_BIN / "pg_ctl"), "-D", data, "-l", os.path.join(root, "log"), "-w", "-t", "60",
            "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start",
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL: {exc.stderr!r}") from exc
    try:
        pg(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "optlaws")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optlaws"
    finally:
        subprocess.run([*prefix, str(PG_BIN / "pg_ctl"), "-D", data, "-m", "immediate", "stop"],
                       capture_output=True, env=env, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_on_postgresql_share_the_law_and_agree(postgres_url: str) -> None:
    _two_workers_share_the_law_and_agree(postgres_url, "pg")


def _two_workers_share_the_law_and_agree(spec: str, name: str) -> None:
    """Two worker processes (sampler seeds 0 and 1) run 5 trials each on the storage
    ``spec`` (a URL or ``journal:PATH``): every trial finishes, the law is stored, and a
    fresh process and this one judge a running trial alike."""
    optuna.create_study(storage=open_storage(spec), study_name=name)
    t0 = time.time()
    workers = [start_worker("run", spec, name, "5", "--seed", str(seed)) for seed in (0, 1)]
    for w in workers:
        worker_output(w)
    study = optuna.load_study(study_name=name, storage=open_storage(spec))
    trials = study.get_trials()
    assert len(trials) == 10 and all(t.state.is_finished() for t in trials), time.time() - t0
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    stored = study._storage.get_study_system_attrs(study._study_id)[LAW_KEY_PREFIX + TEST_LAW]
    assert stored["law"] is not None and stored["finished"]
    assert any("optlaws_pred_final" in t.user_attrs for t in trials)
    # a fresh worker process and this one judge the same running trial alike
    # near its end (29 of 31 reports), so that the decision does not hinge on how far the
    # law, fitted on whatever the two workers happened to run, extrapolates to its schedule
    number = _running_bad_trial(spec, name, n_reports=29)
    fresh = json.loads(worker_output(start_worker("check", spec, name, str(number))))
    _, pruner = make_components(TEST_LAW, 0)
    here = check_trial(optuna.load_study(study_name=name, storage=open_storage(spec)), pruner, number)
    # (whether the law prunes it depends on the runs the workers sampled: the pruner does not
    # prune a peak LR outside the complete runs' range; what is checked is that they agree)
    assert fresh == json.loads(json.dumps(here)) and "optlaws_pred_lo" in fresh["attrs"], (
        fresh,
        [(t.state.name, t.value) for t in trials],
    )
    assert fresh["prune"] is False or "frontier" in fresh["attrs"]["optlaws_prune_reason"]


def test_export_reads_a_postgresql_study(postgres_url: str, tmp_path: Path) -> None:
    """``optlaws export`` on a PostgreSQL URL writes every finished trial with a schedule,
    its reports as they are stored."""
    from optuna_optlaws import read_curves_csv
    from optuna_optlaws.cli import main

    study = optuna.create_study(storage=postgres_url, study_name="pg-export")
    for k in range(3):
        trial = study.ask()
        set_schedule(trial, Schedule.cosine(1e-3 * (k + 1), 300, warmup_steps=10), model_size=1e5)
        for step in range(0, 300, 20):
            trial.report(3.0 - 0.001 * step + 0.01 * k, step)
        study.tell(trial, 3.0)
    out = tmp_path / "pg.csv"
    assert main(["export", postgres_url, "--study", "pg-export", "--out", str(out)]) == 0
    curves = {c.run_id: c for c in read_curves_csv(out)}
    assert sorted(curves) == ["trial_0", "trial_1", "trial_2"]
    for t in study.get_trials():
        c = curves[f"trial_{t.number}"]
        assert c.steps.tolist() == sorted(t.intermediate_values)
        np.testing.assert_array_equal(c.losses, [t.intermediate_values[s] for s in sorted(t.intermediate_values)])
        assert c.schedule.peak_lr == pytest.approx(1e-3 * (t.number + 1))


# ---------------------------------------------------------------------- workers that die
def _report_all(study: optuna.Study, schedule: Schedule, shift: float, upto: int | None = None) -> optuna.Trial:
    """A trial of ``schedule`` reporting the synthetic curve plus ``shift`` nats (up to report
    ``upto``), asking the pruner at each report; it is told PRUNED or COMPLETE when done
    (left RUNNING when ``upto`` stops it early)."""
    trial = study.ask()
    set_schedule(trial, schedule)
    steps = report_steps()[:upto]
    losses = synth_loss(schedule, steps) + shift
    for step, loss in zip(steps.tolist(), losses.tolist(), strict=True):
        trial.report(loss, step)
        if trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return trial
    if upto is None:
        study.tell(trial, float(losses[-1]))
    return trial


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_running_trial_whose_worker_died_is_no_frontier(
    backend: str, db_dir: Path, request: pytest.FixtureRequest
) -> None:
    """With Optuna's heartbeat on, a RUNNING trial predicted to beat everything counts in
    the frontier while its worker beats, and not once its heartbeat is stale: the loss it
    was predicted to reach will never come, so it must not prune the runs after it.
    SQLite and PostgreSQL (whose clock the heartbeat is read against)."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    from optuna_optlaws import OptLawsPruner
    from optuna_optlaws._pruner._frontier import PRED_HI, PRUNE_REASON

    url = f"sqlite:///{db_dir / 'hb.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    # beats every second; stale 3 s after the last one (room for a loaded machine's jitter)
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=3)
    pruner = OptLawsPruner(TEST_LAW, n_min_trials=3, min_fraction=0.2, min_reports=5)
    study = optuna.create_study(storage=storage, pruner=pruner)
    good = [Schedule.cosine(3e-3, TOTAL_STEPS, 30, 3e-5), Schedule.wsd(3e-3, TOTAL_STEPS, 30, 0.0, 0.3),
            Schedule.linear(2.5e-3, TOTAL_STEPS, 30, 0.0)]
    for s in good:
        assert _report_all(study, s, 0.0).number >= 0
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    # a run its pruner predicted to end 0.2 nats below any (its recorded interval's upper
    # end), half-way through its schedule when its worker dies
    best = min(t.value for t in study.trials)
    lucky = study.ask()
    set_schedule(lucky, good[0])
    with get_heartbeat_thread(lucky._trial_id, storage):
        steps = report_steps()[:15]
        for step, loss in zip(steps.tolist(), synth_loss(good[0], steps).tolist(), strict=True):
            lucky.report(loss, step)
        study._storage.set_trial_user_attr(lucky._trial_id, PRED_HI, best - 0.2)
        # while it beats, a run that can only tie the best complete run is pruned on it
        tie = _report_all(study, good[0], 0.0)
        frozen = study._storage.get_trial(tie._trial_id)
        assert frozen.state == TrialState.PRUNED
        assert f"trial {lucky.number} (running, predicted)" in frozen.user_attrs[PRUNE_REASON]
    time.sleep(4.5)  # its worker is gone: no heartbeat for longer than the grace period
    assert study._storage.get_trial(lucky._trial_id).state == TrialState.RUNNING
    again = study._storage.get_trial(_report_all(study, good[0], 0.0)._trial_id)
    assert again.state == TrialState.COMPLETE, again.user_attrs.get(PRUNE_REASON)


_CRASHING_WORKER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import optuna
from _study_helpers import make_components, report_steps, synth_loss, TEST_LAW
from optuna_optlaws import suggest_schedule
optuna.logging.set_verbosity(optuna.logging.ERROR)
storage = optuna.storages.RDBStorage({url!r}, heartbeat_interval=1, grace_period=2)
sampler, pruner = make_components(TEST_LAW, 0)
study = optuna.load_study(study_name="crash", storage=storage, sampler=sampler, pruner=pruner)

def objective(trial):
    schedule = suggest_schedule(trial, total_steps=600, warmup_steps=30, peak_lr=(3e-4, 3e-2))
    steps = report_steps()
    for step, loss in zip(steps.tolist(), synth_loss(schedule, steps).tolist()):
        trial.report(loss, step)
        trial.should_prune()
        if step >= 300:
            os.kill(os.getpid(), signal.SIGKILL)  # the machine is preempted half-way
    return 0.0

study.optimize(objective, n_trials=1)
"""


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_killed_worker_s_trial_is_retried_with_its_schedule(db_dir: Path) -> None:
    """A worker killed mid-trial (SIGKILL, as a preempted machine): with Optuna's heartbeat
    and ``RetryFailedTrialCallback``, the next worker fails the stale trial, retries it with
    the same schedule, and the sampler and pruner take the retry as an ordinary trial."""
    from optuna_optlaws import get_schedule
    from optuna_optlaws._trial_notes import WARNING

    url = f"sqlite:///{db_dir / 'crash.db'}"
    optuna.create_study(study_name="crash", storage=url)
    code = _CRASHING_WORKER.format(tests=str(Path(__file__).parent), url=url)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    # the callback and its argument were renamed in Optuna 4.9 (the old names are deprecated)
    if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters:
        callback = {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
    else:
        callback = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)}
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=2, **callback)
    sampler, pruner = make_components(TEST_LAW, 0)
    study = optuna.load_study(study_name="crash", storage=storage, sampler=sampler, pruner=pruner)
    [killed] = study.get_trials()
    assert killed.state == TrialState.RUNNING and max(killed.intermediate_values) >= 300
    time.sleep(3.0)  # past the grace period: the next worker finds the trial stale
    study.optimize(schedule_objective(), n_trials=1)
    killed, retried = study.get_trials()
    assert killed.state == TrialState.FAIL
    assert retried.state == TrialState.COMPLETE and retried.system_attrs["failed_trial"] == killed.number
    assert retried.params == killed.params
    assert get_schedule(retried) == get_schedule(killed) is not None
    assert WARNING not in retried.user_attrs, retried.user_attrs[WARNING]


def test_a_retried_failed_trial_is_fitted_once() -> None:
    """A FAIL trial that Optuna's retry callback reruns (its number in the retry's
    ``retry_history``, its reports inherited) is left out of the law's fit: the retry
    holds the same run, which would otherwise be fitted twice."""
    from optuna_optlaws import OptLawsPruner

    study = optuna.create_study(pruner=OptLawsPruner(TEST_LAW, n_min_trials=3))
    for s in (Schedule.cosine(3e-3, TOTAL_STEPS, 30, 3e-5), Schedule.wsd(3e-3, TOTAL_STEPS, 30, 0.0, 0.3),
              Schedule.linear(2.5e-3, TOTAL_STEPS, 30, 0.0)):
        _complete(study, s)
    _complete(study, BAD, n_reports=12)  # its worker dies half-way
    failed = study.trials[-1]
    study.tell(failed.number, state=TrialState.FAIL)
    failed = study.trials[-1]
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=failed.params, distributions=failed.distributions,
        system_attrs={**failed.system_attrs, "failed_trial": failed.number, "retry_history": [failed.number]},
        intermediate_values=failed.intermediate_values,
    ))
    retry = study.ask()  # the retry runs, with the failed run's reports

    def fitted_on() -> set[str]:
        store = LawStore(TEST_LAW, min_complete=3)
        store.get(study, study.get_trials(deepcopy=False))
        record = study._storage.get_study_system_attrs(study._study_id)[store.key]
        return {r["run_id"] for r in json.loads(record["law"])["fitted_on"]}

    assert fitted_on() == {"trial_0", "trial_1", "trial_2", f"trial_{retry.number}"}
