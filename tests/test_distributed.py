"""Training with torch.distributed: a study whose objective trains a DDP model on two
ranks through optuna-integration's ``TorchDistributedTrial`` (gloo on CPU, real
processes). Every rank must play the trial's schedule and stop together when pruned."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import optuna
import pytest

pytest.importorskip("torch")
pytest.importorskip("optuna_integration")

import torch.distributed as dist
import torch.multiprocessing as mp
from _distributed_helpers import N_TRIALS, STEPS, load_used, run_rank

from optuna_optlaws import get_schedule


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
def test_every_rank_plays_the_trials_schedule_and_stops_with_it(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'ddp.db'}"
    optuna.create_study(storage=storage, study_name="ddp")
    mp.spawn(run_rank, args=(2, _free_port(), storage, str(tmp_path)), nprocs=2, join=True)
    trials = optuna.load_study(study_name="ddp", storage=storage).trials
    assert len(trials) == N_TRIALS and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    used = [load_used(tmp_path, rank) for rank in (0, 1)]
    assert sorted(used[0]) == sorted(used[1]) == [t.number for t in trials]
    for t in trials:
        schedule = get_schedule(t)
        assert schedule is not None and schedule.total_steps == STEPS, t.number  # stored by rank 0
        n = len(used[0][t.number])
        assert used[1][t.number] == used[0][t.number]  # same LRs, stopped at the same step
        np.testing.assert_allclose(used[0][t.number], schedule.lrs(STEPS)[:n], rtol=1e-12)
        assert (n == STEPS) == (t.state.name == "COMPLETE")
    assert any("optlaws_pred_final" in t.user_attrs for t in trials)  # the law judged the trials
