"""examples/tiny_lm/trace_pruner.py: replaying a study reproduces every pruning decision."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
from _study_helpers import TEST_LAW, schedule_objective

from optuna_optlaws import OptLawsPruner, OptLawsSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "tiny_lm"))

import trace_pruner

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_the_replay_prunes_every_trial_where_the_study_did() -> None:
    study = optuna.create_study(
        sampler=OptLawsSampler(TEST_LAW, seed=0), pruner=OptLawsPruner(TEST_LAW, seed=0, tolerance=0.01)
    )
    # peak LRs below the synthetic runs' instability: the law, not the divergence detector, prunes
    study.optimize(schedule_objective(peak_lr=(3e-4, 3e-3), families=("cosine", "wsd", "constant")), n_trials=16)
    trials = study.get_trials(deepcopy=False)
    pruned = [t.number for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "the study should prune something for the replay to reproduce"
    assert "predicted final loss" in trials[pruned[0]].user_attrs["optlaws_prune_reason"]
    replayed = trace_pruner.replay(
        trials, len(trials) - 1, {pruned[0]},
        OptLawsPruner(TEST_LAW, seed=0, tolerance=0.01), OptLawsSampler(TEST_LAW, seed=0),
    )
    assert [r.agrees for r in replayed] == [True] * len(trials)
    rows = replayed[pruned[0]].rows
    assert rows[-1].prune and rows[-1].excess > 0
    assert all(not r.prune for r in rows[:-1])
    # other pruner settings decide otherwise somewhere: the comparison can fail
    strict = trace_pruner.replay(trials, len(trials) - 1, set(), OptLawsPruner(TEST_LAW, seed=0, margin=0.5), None)
    assert not all(r.agrees for r in strict)
