"""The sampler and pruner through Optuna's gRPC storage proxy (``GrpcStorageProxy`` in
front of ``run_grpc_proxy_server`` on an SQLite storage, Optuna's way to run many workers).

The server is a real process (this module run as a script), as a user runs it; workers
are real processes too (``_study_helpers.py run grpc:PORT``). The proxy's client caches trials (finished ones for good,
running ones re-read at each ``get_all_trials``), so what is checked is that the state the
sampler and pruner keep in the storage, and the running trials' predictions the pruner
reads, go through it unchanged: the same decisions as on plain SQLite.

Skipped when grpcio or protobuf is missing, or when Optuna has no ``GrpcStorageProxy``
(before 4.2)::

    python tests/test_grpc_storage.py server SQLITE_URL PORT
    python tests/_study_helpers.py run grpc:PORT STUDY N_TRIALS [--seed 0] --warnings
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

pytest.importorskip("grpc", reason="grpcio is needed for Optuna's gRPC storage proxy")
pytest.importorskip("google.protobuf", reason="protobuf is needed for Optuna's gRPC storage proxy")
if not hasattr(optuna.storages, "GrpcStorageProxy"):
    pytest.skip("this Optuna has no GrpcStorageProxy (added in 4.2)", allow_module_level=True)

from _study_helpers import (
    GRPC_PREFIX,
    TEST_LAW,
    TOTAL_STEPS,
    check_trial,
    make_components,
    report_steps,
    run_study,
    start_worker,
    study_record,
    synth_loss,
    worker_output,
)
from optuna.exceptions import ExperimentalWarning
from optuna.storages import GrpcStorageProxy
from optuna.trial import TrialState

from optuna_optlaws import Schedule, set_schedule
from optuna_optlaws._pruner._frontier import PRED_FINAL, PRED_HI, Frontier
from optuna_optlaws._study_state import LAW_KEY_PREFIX
from optuna_optlaws._trial_notes import WARNING

optuna.logging.set_verbosity(optuna.logging.WARNING)
# the proxy and its server are experimental in Optuna: that warning is Optuna's, not ours
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

THIS = str(Path(__file__).resolve())
HOST = "localhost"
BAD = Schedule.constant(4e-4, TOTAL_STEPS, 30)
GOOD = Schedule.cosine(3e-3, TOTAL_STEPS, 30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proxy(port: int) -> GrpcStorageProxy:
    """A client of the proxy server on ``port``: each has its own trial cache."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return GrpcStorageProxy(host=HOST, port=port)


class Server:
    """A running proxy server: the SQLite URL behind it, its port and a folder for more
    SQLite files."""

    def __init__(self, url: str, port: int, folder: Path) -> None:
        self.url, self.port, self.folder = url, port, folder

    def client(self) -> GrpcStorageProxy:
        return _proxy(self.port)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """``run_grpc_proxy_server`` on an SQLite file (in /dev/shm where there is one), in
    its own process on a free port; stopped (and its folder removed) at the end."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    folder = Path(tempfile.mkdtemp(prefix="optlaws-grpc-", dir=shm))
    url, port = f"sqlite:///{folder / 'proxied.db'}", _free_port()
    log = open(folder / "server.log", "w")  # noqa: SIM115 (closed below, after the server)
    proc = subprocess.Popen([sys.executable, THIS, "server", url, str(port)], stdout=log, stderr=log)
    try:
        client = _proxy(port)
        try:
            client.wait_server_ready(timeout=60)
        except ConnectionError:
            proc.kill()
            proc.wait(10)
            log_text = (folder / "server.log").read_text()[-3000:]
            raise RuntimeError(f"the gRPC proxy server did not start: {log_text}") from None
        finally:
            client.close()
        yield Server(url, port, folder)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def _worker(port: int, study: str, n_trials: int, seed: int = 0) -> subprocess.Popen[str]:
    """A worker process running ``n_trials`` through the proxy (``_study_helpers.py run``),
    reporting the warnings it saw."""
    return start_worker("run", f"{GRPC_PREFIX}{port}", study, str(n_trials), "--seed", str(seed), "--warnings")


def _wait(proc: subprocess.Popen[str]) -> Any:
    """The JSON a worker printed (it must exit cleanly)."""
    return json.loads(worker_output(proc, timeout=120))


def _report(trial: optuna.Trial, schedule: Schedule, n_reports: int) -> None:
    steps = report_steps()[:n_reports]
    for step, loss in zip(steps.tolist(), synth_loss(schedule, steps).tolist(), strict=True):
        trial.report(loss, step)


def _running(study: optuna.Study, schedule: Schedule, n_reports: int) -> optuna.Trial:
    """A RUNNING trial with ``schedule`` and its first ``n_reports`` reports."""
    trial = study.ask()
    set_schedule(trial, schedule)
    _report(trial, schedule, n_reports)
    return trial


def _view(study: optuna.Study) -> list[tuple[Any, ...]]:
    """Everything the pruner reads of each trial: number, state, reports, attributes."""
    return [
        (t.number, t.state.name, sorted(t.intermediate_values.items()), t.user_attrs, t.system_attrs)
        for t in study.get_trials(deepcopy=False)
    ]


def _frontier(study: optuna.Study, number: int) -> Frontier:
    """The frontier a fresh pruner measures trial ``number`` against (its check is
    recorded on the trial)."""
    _, pruner = make_components(TEST_LAW, 0)
    storage = study._storage
    trial = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study._study_id, number))
    decision = pruner._decide(study, trial)  # type: ignore[attr-defined]
    assert decision is not None and decision.frontier is not None, decision
    return decision.frontier


# ---------------------------------------------------------------------- tests
def test_a_worker_through_the_proxy_decides_as_one_on_plain_sqlite(server: Server) -> None:
    """3 trials in this process through the proxy, then 2 in a fresh worker process
    through it: the study is the one a single worker running 5 trials on plain SQLite
    makes (params, states, prune points, the pruner's attributes), and no warning."""
    proxied = server.client()
    optuna.create_study(storage=proxied, study_name="seq")
    plain = f"sqlite:///{server.folder / 'plain.db'}"
    optuna.create_study(storage=plain, study_name="seq")
    sampler, pruner = make_components(TEST_LAW, 0)
    run_study(optuna.load_study(study_name="seq", storage=proxied, sampler=sampler, pruner=pruner), 3)
    other = _worker(server.port, "seq", 2)
    sampler, pruner = make_components(TEST_LAW, 0)
    run_study(optuna.load_study(study_name="seq", storage=plain, sampler=sampler, pruner=pruner), 5)
    assert _wait(other) == {"warnings": []}
    records = [study_record(optuna.load_study(study_name="seq", storage=s)) for s in (plain, proxied)]
    assert len(records[0]) == 5 and records[0] == records[1]
    assert sum(PRED_FINAL in r["attrs"] for r in records[1]) >= 3  # the law was at work
    # (a sequential study with fixed seeds: today the worker's last trial diverges and is
    # pruned; what matters is that a pruned trial went through the proxy as on SQLite)
    assert any(r["state"] == "PRUNED" for r in records[1][3:])
    assert not any(WARNING in r["attrs"] for r in records[1])
    proxied.close()


def test_two_workers_through_the_proxy_share_the_law_and_agree(server: Server) -> None:
    """Two worker processes (sampler seeds 0 and 1) run 4 trials each through the proxy:
    every trial finishes, no warning, the law is stored once for both, what the proxy
    serves is what the database holds, and a new client through the proxy and a pruner on
    plain SQLite judge a running trial alike."""
    storage = server.client()
    optuna.create_study(storage=storage, study_name="two")
    t0 = time.time()
    workers = [_worker(server.port, "two", 4, seed) for seed in (0, 1)]
    for w in workers:
        assert _wait(w) == {"warnings": []}
    study = optuna.load_study(study_name="two", storage=storage)
    trials = study.get_trials()
    assert len(trials) == 8 and all(t.state.is_finished() for t in trials), time.time() - t0
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert any(PRED_FINAL in t.user_attrs for t in trials)
    assert not any(WARNING in t.user_attrs for t in trials)
    stored = storage.get_study_system_attrs(study._study_id)[LAW_KEY_PREFIX + TEST_LAW]
    assert stored["law"] is not None and stored["finished"]
    # what the proxy serves is what the database holds
    assert _view(study) == _view(optuna.load_study(study_name="two", storage=server.url))

    # near its end (29 of 31 reports), as in test_storage.py; a new client (its own trial
    # cache and law memo) and a pruner on plain SQLite
    number = _running(study, BAD, 29).number
    fresh = server.client()
    checks = []
    for where in (fresh, server.url):
        _, pruner = make_components(TEST_LAW, 0)
        checks.append(check_trial(optuna.load_study(study_name="two", storage=where), pruner, number))
    assert checks[0] == checks[1] and "optlaws_pred_lo" in checks[0]["attrs"], checks
    fresh.close()
    storage.close()


def test_the_proxy_cache_shows_the_pruner_running_trials_predictions(server: Server) -> None:
    """A second client (its own trial cache) that saw a trial RUNNING without a
    prediction sees the prediction another client's pruner writes later, and its pruner
    takes that running trial as the frontier when it is predicted to beat the complete
    runs (as the pruner on plain SQLite does); once the trial is pruned, it is no longer
    the frontier."""
    writer, reader = server.client(), server.client()
    optuna.create_study(storage=writer, study_name="cache")
    sampler, pruner = make_components(TEST_LAW, 0)
    study_w = optuna.load_study(study_name="cache", storage=writer, sampler=sampler, pruner=pruner)
    run_study(study_w, 3)
    study_r = optuna.load_study(study_name="cache", storage=reader)
    plain = optuna.load_study(study_name="cache", storage=server.url)
    good = _running(study_w, GOOD, 12)
    bad = _running(study_w, BAD, 29).number
    assert [t.state for t in study_r.get_trials(deepcopy=False)][-2:] == [TrialState.RUNNING] * 2  # cached
    before = _frontier(study_r, bad)
    assert "running" not in before.source and before.n_complete >= 2, before

    # the writer's pruner records its prediction on the running trial; the reader sees it
    assert not study_w.pruner.prune(study_w, writer.get_trial(good._trial_id))
    assert PRED_HI in writer.get_trial(good._trial_id).user_attrs
    assert _view(study_r) == _view(plain)
    # a running trial predicted to end below every complete run is the frontier
    writer.set_trial_user_attr(good._trial_id, PRED_HI, before.value - 0.25)
    after = _frontier(study_r, bad)
    assert after == _frontier(plain, bad)
    assert after.source == f"trial {good.number} (running, predicted)", after
    assert after.value == pytest.approx(before.value - 0.25)

    # pruned, it is a running trial no more
    study_w.tell(good, state=TrialState.PRUNED)
    assert study_r.get_trials(deepcopy=False)[good.number].state == TrialState.PRUNED
    assert _frontier(study_r, bad) == before
    assert _view(study_r) == _view(plain)
    writer.close()
    reader.close()


# ---------------------------------------------------------------------- worker processes
def _main(argv: list[str]) -> int:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    srv = sub.add_parser("server")
    srv.add_argument("url")
    srv.add_argument("port", type=int)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", ExperimentalWarning)
    # as Optuna's docs run it; until terminated
    optuna.storages.run_grpc_proxy_server(optuna.storages.get_storage(args.url), host=HOST, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
