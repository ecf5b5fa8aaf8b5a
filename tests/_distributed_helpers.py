"""A real torch.distributed (gloo, CPU) study for ``tests/test_distributed.py``: rank 0
runs an Optuna study with OptLawsSampler and OptLawsPruner, every rank trains the same
DDP model through optuna-integration's ``TorchDistributedTrial``, as its docs show.

Each rank writes, per trial, the LRs its optimizer used at each step to
``OUT/rank<r>.json``."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.distributed as dist

N_TRIALS = 6
STEPS = 60


def _objective(single: optuna.Trial | None, used: dict[int, list[float]]) -> float:
    from optuna_integration import TorchDistributedTrial

    from optuna_optlaws import suggest_schedule
    from optuna_optlaws.torch import LossReporter, scheduler_for

    trial = TorchDistributedTrial(single)
    suggest_schedule(trial, total_steps=STEPS, peak_lr=(0.01, 3.0), families=("cosine", "wsd", "constant"))
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(16, 16))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = scheduler_for(trial, opt)
    reporter = LossReporter(trial, every=5)
    # a noisy 16-class softmax regression: a loss in nats, from ln 16 down, like a LM's
    g = torch.Generator().manual_seed(1000 * trial.number + dist.get_rank())
    w = torch.randn(16, 16, generator=torch.Generator().manual_seed(7))
    lrs = used.setdefault(trial.number, [])
    loss = torch.zeros(())
    for step in range(STEPS):
        x = torch.randn(64, 16, generator=g)
        y = torch.argmax(x @ w + 2.0 * torch.randn(64, 16, generator=g), dim=1)
        lrs.append(float(opt.param_groups[0]["lr"]))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)  # every rank reports the same loss (the pruning decision is collective)
        reporter.step(mean / dist.get_world_size(), step)
    return float(loss.detach())


def run_rank(rank: int, world: int, port: int, storage: str, out: str) -> None:
    """One rank of the study (``torch.multiprocessing.spawn`` entry point)."""
    from optuna_optlaws import OptLawsPruner, OptLawsSampler

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    used: dict[int, list[float]] = {}
    try:
        if rank == 0:
            study = optuna.load_study(
                study_name="ddp", storage=storage,
                sampler=OptLawsSampler("momentum", seed=0, n_startup_trials=3, n_candidates=32),
                pruner=OptLawsPruner("momentum", n_min_trials=2, min_fraction=0.2, margin=0.0),
            )
            study.optimize(lambda t: _objective(t, used), n_trials=N_TRIALS)
        else:
            for _ in range(N_TRIALS):
                with contextlib.suppress(optuna.TrialPruned):  # rank 0's study records it
                    _objective(None, used)
    finally:
        Path(out, f"rank{rank}.json").write_text(json.dumps({str(k): v for k, v in used.items()}))
        import optuna_integration.pytorch_distributed.pytorch_distributed as tdt

        tdt._g_pg = None  # the integration's global handle on the group, dropped before the group goes
        dist.barrier()
        dist.destroy_process_group()


def load_used(out: Path, rank: int) -> dict[int, Any]:
    """The LRs rank ``rank`` used, per trial number."""
    return {int(k): v for k, v in json.loads((out / f"rank{rank}.json").read_text()).items()}
