"""audit_pruned.py trains a study's pruned trials to the end; live_replay.py replays the study."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import optuna
import pytest

pytest.importorskip("torch")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_lm"
STEPS = 24


def _module(name: str) -> ModuleType:
    sys.path.insert(0, str(EXAMPLE))
    spec = importlib.util.spec_from_file_location(f"tiny_lm_{name}", EXAMPLE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[f"tiny_lm_{name}"] = mod
    spec.loader.exec_module(mod)
    return mod


class _PruneTrialOneAtItsSecondReport(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: Any) -> bool:
        return trial.number == 1 and len(trial.intermediate_values) >= 2


def test_pruned_trial_is_retrained_to_the_end_and_the_study_replays(tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    study_mod, audit_mod, replay_mod = _module("study"), _module("audit_pruned"), _module("live_replay")
    timing_mod = _module("prune_timing")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = tmp_path / "tiny_lm.db"
    storage = f"sqlite:///{db}"
    cfg = study_mod.training_config(0, STEPS, tiny=True)
    objective = study_mod.make_objective(STEPS, cfg, study_mod.SearchSpace(), torch.device("cpu"))
    study = optuna.create_study(study_name="tiny_lm-x", storage=storage, pruner=_PruneTrialOneAtItsSecondReport(),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=3)
    assert study_mod.main(["--arm", "tpe", "--trials", "2", "--steps", str(STEPS), "--storage", storage,
                           "--out-dir", str(tmp_path / "report"), "--tiny"]) == 0
    pruned = study.trials[1]
    assert pruned.state == optuna.trial.TrialState.PRUNED and len(pruned.intermediate_values) == 2

    out = tmp_path / "audit_x.md"
    assert audit_mod.main([str(db), "tiny_lm-x", "--tiny", "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [r["number"] for r in rows] == [1]
    row = rows[0]
    assert row["prefix_gap"] == 0.0  # the retrained run reproduces the recorded reports exactly
    assert row["steps"][-1] == STEPS - 1 and len(row["steps"]) > len(pruned.intermediate_values)
    assert row["steps"][:2] == sorted(pruned.intermediate_values)
    assert row["true_final"] == row["losses"][-1]
    assert "Pruned trials audited: 1." in out.read_text()

    live = replay_mod.load(tmp_path, "x")
    assert len(live.group.curves) == 3 and live.group.curves[1].last_step == STEPS - 1
    everything = replay_mod.replay(live, "none")
    assert everything["share"] == 1.0 and everything["pruned"] == 0 and everything["broken"] == 0
    assert everything["regret"] == 0.0
    assert everything["best"] == min(live.objectives)

    # where the steps went: the two complete runs in full, the pruned one before the gate ever held
    spent = timing_mod.timing(tmp_path, "x")
    assert (spent.complete, spent.pruned, spent.diverged) == (2, 1, 0)
    assert spent.steps_complete == sum(max(t.intermediate_values) + 1 for t in study.trials if t.number != 1)
    assert spent.steps_gate == max(pruned.intermediate_values) + 1 and spent.steps_waiting == 0
    assert spent.tpe_steps == 2 * STEPS


def test_earliest_gated_step_is_where_the_pruners_gate_first_holds() -> None:
    from optuna_optlaws import Schedule, set_schedule

    timing_mod = _module("prune_timing")
    schedule = Schedule.cosine(1e-3, 600, warmup_steps=100)  # transient: the warmup (longer than 10%)
    study = optuna.create_study()
    trial = study.ask()
    set_schedule(trial, schedule)
    for step in range(24, 600, 25):
        trial.report(3.0 - step / 1000, step)
    frozen = study.trials[0]
    # reports at 124, 149, 174 are the first three at or past step 100
    assert timing_mod.earliest_gated_step(frozen) == 174


def test_a_missing_file_or_study_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    """The scripts that read recorded studies say what is missing, in one line, instead of
    Optuna creating an empty SQLite file at a mistyped path and raising KeyError."""
    audit = _module("audit_pruned")
    missing = tmp_path / "typo.db"
    with pytest.raises(SystemExit, match=r"^audit_pruned.py: .*typo.db: no such file$"):
        audit.main([str(missing), "tiny_lm-optlaws"])
    assert not missing.exists()
    db = tmp_path / "s.db"
    optuna.create_study(storage=f"sqlite:///{db}", study_name="tiny_lm-tpe")
    with pytest.raises(SystemExit, match=r"has no study 'tiny_lm-nosuch' \(it has: tiny_lm-tpe\)$"):
        audit.main([str(db), "tiny_lm-nosuch"])
    replay = _module("live_replay")
    (tmp_path / "tiny_lm.db").write_bytes(db.read_bytes())
    with pytest.raises(SystemExit, match=r"^live_replay.py: replay: pruner 'optlaws:bogus=1'"):
        replay.main([f"{tmp_path}:tpe", "--pruner", "optlaws:bogus=1"])


def test_a_fine_tuning_study_s_pruned_trial_is_retrained_from_the_parent(tmp_path: Path) -> None:
    """``--finetune``: the pruned trial of a ``finetune_study.py`` study is retrained from
    the parent's weights on the fine-tuning set (its retrained reports reproduce the recorded
    ones exactly, which a run from scratch would not)."""
    import torch

    torch.set_num_threads(1)
    ft_mod, audit_mod = _module("finetune_study"), _module("audit_pruned")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    setup = ft_mod.build_setup(40, STEPS, 20000, 0, True)
    objective = ft_mod.make_objective(STEPS, setup.ft_cfg, ft_mod.FT_SPACE, torch.device("cpu"),
                                      init_state=setup.pre_state)
    db = tmp_path / "finetune_study.db"
    study = optuna.create_study(study_name="finetune-x", storage=f"sqlite:///{db}",
                                pruner=_PruneTrialOneAtItsSecondReport(), sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=2)
    assert study.trials[1].state == optuna.trial.TrialState.PRUNED
    out = tmp_path / "audit.md"
    common = [str(db), "finetune-x", "--tiny", "--out", str(out)]
    assert audit_mod.main([*common, "--finetune", "--pre-steps", "40", "--train-bytes", "20000"]) == 0
    [row] = json.loads(out.with_suffix(".json").read_text())
    assert row["number"] == 1 and row["prefix_gap"] == 0.0 and row["steps"][-1] == STEPS - 1
    assert "retrained from the parent's weights (fine-tuning)" in out.read_text()
    assert audit_mod.main(common) == 1  # from scratch: the recorded reports are not reproduced
