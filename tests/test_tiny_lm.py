"""The tiny LM example: it learns, it is deterministic, and its study runs end to end."""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

pytest.importorskip("torch")

import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_lm"
sys.path.insert(0, str(EXAMPLE))

import tinylm  # noqa: E402

from optuna_optlaws import Schedule  # noqa: E402

SMALL = tinylm.TinyLMConfig(d_model=32, n_heads=2, context=32, batch_size=8, eval_every=10, eval_batches=2,
                            final_eval_batches=4)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_corpus_split_is_fixed_and_disjoint() -> None:
    files = tinylm.corpus_files("stdlib")
    tests = tinylm.corpus_files("stdlib_tests")
    assert len(files) > 100 and len(tests) > 100
    assert not set(files) & set(tests)
    assert files == sorted(files, key=lambda p: p.as_posix())  # fixed order
    train, val = tinylm.load_corpus("stdlib")
    assert train.dtype == np.uint8 and len(train) > 10 * len(val) > 0


def test_model_learns_and_is_deterministic() -> None:
    sched = Schedule.cosine(1e-2, 40, warmup_steps=4, final_lr=1e-3)
    seen: list[tuple[int, float]] = []
    res = tinylm.train(sched, SMALL, on_eval=lambda s, v: seen.append((s, v)), device="cpu")
    assert not isinstance(res, tuple)
    assert res.steps == [9, 19, 29, 39]
    assert seen == list(zip(res.steps, res.losses, strict=True))
    assert res.losses[-1] < res.losses[0] - 0.3  # falls from ~log(256)=5.5 towards ~3
    assert res.losses[0] < math.log(256)
    assert math.isfinite(res.final_loss) and not res.diverged
    again = tinylm.train(sched, SMALL, device="cpu")
    assert not isinstance(again, tuple)
    assert again.losses == res.losses and again.final_loss == res.final_loss
    other_seed = tinylm.train(sched, replace(SMALL, seed=1), device="cpu")
    assert not isinstance(other_seed, tuple)
    assert other_seed.losses != res.losses


def test_diverging_run_is_stopped_and_marked() -> None:
    res = tinylm.train(Schedule.constant(1e6, 30), replace(SMALL, grad_clip=0.0), device="cpu")
    assert not isinstance(res, tuple)
    # either non-finite at once, or the loss blows far above the uniform-byte loss
    assert res.diverged or res.losses[-1] > math.log(256)


def test_study_runs_end_to_end(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("tiny_lm_study", EXAMPLE / "study.py")
    assert spec is not None and spec.loader is not None
    study_mod = importlib.util.module_from_spec(spec)
    sys.modules["tiny_lm_study"] = study_mod
    spec.loader.exec_module(study_mod)
    out = tmp_path / "st"
    storage = f"sqlite:///{tmp_path / 'tiny.db'}"
    law = "optlaw"
    try:
        from optuna_optlaws.laws import law_class

        law_class(law)
    except Exception:
        law = "multipower"  # the project's own law is not there yet
    rc = study_mod.main(
        ["--arm", "optlaws", "--arm", "tpe", "--trials", "3", "--steps", "24", "--storage", storage,
         "--out-dir", str(out), "--law", law, "--tiny"]
    )
    assert rc == 0
    report = (out / "README.md").read_text()
    assert "| optlaws | 3 |" in report and "| tpe | 3 |" in report
    assert "Anytime view" in report and "- tpe: after " in report  # tpe reaches its own best
    for arm in ("optlaws", "tpe"):
        study = optuna.load_study(study_name=f"tiny_lm-{arm}", storage=storage)
        assert len(study.trials) == 3
        for t in study.trials:
            assert t.user_attrs["steps_trained"] > 0
            assert t.intermediate_values  # reported through LossReporter
            if t.state == optuna.trial.TrialState.COMPLETE:
                assert t.user_attrs["steps_trained"] == 24 and max(t.intermediate_values) == 23
    # the tolerant arm hands its tolerance to the pruner; the others keep the default (0)
    tolerant = study_mod.make_study("optlaws-tolerant", storage, 0, 24, False, law, 0.03)
    assert tolerant.pruner._gates.tolerance == 0.03
    assert study_mod.make_study("optlaws", storage, 0, 24, True, law, 0.03).pruner._gates.tolerance == 0.0
    # the ei arm hands it to the pruner and, as the improvement asked for, to the sampler
    ei = study_mod.make_study("optlaws-ei", storage, 0, 24, False, law, 0.03)
    assert ei.pruner._gates.tolerance == 0.03
    assert ei.sampler._acquisition == "ei" and ei.sampler._min_improvement == 0.03
    # the ei-regret arm: the regret arm's pruner (margin + tolerance), the ei arm's sampler
    both = study_mod.make_study("optlaws-ei-regret", storage, 0, 24, False, law, 0.03)
    assert both.pruner._gates.tolerance == pytest.approx(0.04)
    assert both.sampler._acquisition == "ei" and both.sampler._min_improvement == 0.03
    assert study_mod.make_study("optlaws-regret", storage, 0, 24, False, law, 0.03).sampler._acquisition != "ei"


def test_an_arm_runs_with_parallel_worker_processes(tmp_path: Path) -> None:
    """``--workers 2``: two processes of the script share the arm's study (RDB storage with
    Optuna's heartbeat), each its share of the trials; the report is written once, from the
    shared study, with the command that ran it."""
    study_mod = _study_module()
    out = tmp_path / "par"
    storage = f"sqlite:///{tmp_path / 'par.db'}"
    rc = study_mod.main(["--arm", "optlaws", "--trials", "5", "--steps", "24", "--storage", storage,
                         "--out-dir", str(out), "--tiny", "--workers", "2"])
    assert rc == 0
    study = optuna.load_study(study_name="tiny_lm-optlaws", storage=storage)
    assert len(study.trials) == 5 and all(t.state.is_finished() for t in study.trials)
    assert all(t.intermediate_values and t.user_attrs["steps_trained"] > 0 for t in study.trials)
    assert "| optlaws | 5 |" in (out / "README.md").read_text() and "--workers 2" in (out / "README.md").read_text()
    with pytest.raises(SystemExit):
        study_mod.main(["--arm", "optlaws-regret-repeats", "--workers", "2", "--storage", storage, "--tiny"])


def test_repeats_arm_retrains_its_best_trial_under_other_seeds(tmp_path: Path) -> None:
    """``optlaws-regret-repeats``: after REPEAT_AFTER complete trials the best is enqueued
    REPEATS times with other training seeds, which train differently, so the pruner's
    default ``final_noise="auto"`` finds the repeats (trained end to end, toy model)."""
    from optuna_optlaws._pruner._calibration import group_repeat_noise
    from optuna_optlaws._study_state import group_key, readable_schedule, trial_sizes

    study_mod = _study_module()
    storage = f"sqlite:///{tmp_path / 'tiny.db'}"
    rc = study_mod.main(
        ["--arm", "optlaws-regret-repeats", "--trials", "4", "--steps", "24", "--storage", storage,
         "--out-dir", str(tmp_path / "st"), "--tiny"]
    )
    assert rc == 0
    study = optuna.load_study(study_name="tiny_lm-optlaws-regret-repeats", storage=storage)
    assert study.user_attrs.get("repeats_of") is None  # fewer than REPEAT_AFTER = 5 complete trials
    study_mod.enqueue_repeats(study, train_seed=0, count=2, after=1)
    assert not study_mod.enqueue_repeats(study, train_seed=0, count=2, after=1)  # once per study
    rc = study_mod.main(
        ["--arm", "optlaws-regret-repeats", "--trials", "6", "--steps", "24", "--storage", storage,
         "--out-dir", str(tmp_path / "st"), "--tiny", "--resume"]
    )
    assert rc == 0
    trials = study.get_trials(deepcopy=False)
    best = study.user_attrs["repeats_of"]
    repeats = [t for t in trials if t.user_attrs.get("repeat_of") == best]
    assert [t.user_attrs[study_mod.SEED_ATTR] for t in repeats] == [1, 2]
    assert all(t.params == trials[best].params for t in repeats)
    finals = {t.intermediate_values[max(t.intermediate_values)] for t in [trials[best], *repeats]}
    assert len(finals) == 3  # other seeds, other losses
    schedule = readable_schedule(trials[best])
    assert schedule is not None
    noise = group_repeat_noise(study._storage, trials, group_key(schedule, *trial_sizes(trials[best])))
    assert noise.df == 2 and noise.sets == ((f"trial {best}", *(f"trial {t.number}" for t in repeats)),)


def _study_module() -> Any:
    study_mod = sys.modules.get("tiny_lm_study")
    if study_mod is None:
        spec = importlib.util.spec_from_file_location("tiny_lm_study", EXAMPLE / "study.py")
        assert spec is not None and spec.loader is not None
        study_mod = importlib.util.module_from_spec(spec)
        sys.modules["tiny_lm_study"] = study_mod
        spec.loader.exec_module(study_mod)
    return study_mod


def test_steps_until_counts_steps_in_trial_order_up_to_the_first_good_complete_trial() -> None:
    study_mod = _study_module()
    trace = [[600, 2.10], [75, None], [600, 2.01], [600, 1.99]]
    # a pruned trial's steps count, its (missing) value never reaches the target
    assert study_mod.steps_until(trace, 2.02) == 1275
    assert study_mod.steps_until(trace, 2.10) == 600
    assert study_mod.steps_until(trace, 1.99) == 1875
    assert study_mod.steps_until(trace, 1.9) is None
    assert study_mod.steps_until([], 2.0) is None


def test_finetune_study_runs_end_to_end_with_the_parent_set(tmp_path: Path) -> None:
    """``finetune_study.py`` on a toy model (parent 40 steps, trials 30 steps, 4 per arm):
    it writes the report, results.json and the SQLite file; the optlaws arm's study
    continues the parent ``pre``, its law is fitted on the parent's curve too, its trials
    carry schedules; a second call resumes the stored studies up to ``--trials``."""
    import json

    from optuna_optlaws import get_parent_run, get_schedule

    spec = importlib.util.spec_from_file_location("tiny_lm_finetune_study", EXAMPLE / "finetune_study.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["tiny_lm_finetune_study"] = mod
    spec.loader.exec_module(mod)
    out = tmp_path / "ft"
    common = ["--tiny", "--pre-steps", "40", "--steps", "30", "--train-bytes", "20000", "--out", str(out)]
    assert mod.main([*common, "--trials", "4"]) == 0
    db = out / "finetune_study.db"
    assert db.is_file()
    report = (out / "README.md").read_text()
    assert "Written by `examples/tiny_lm/finetune_study.py`" in report and "--trials 4" in report
    for arm in ("optlaws", "tpe-median", "tpe"):
        assert f"| {arm} | 4 |" in report
    assert "- optlaws: best " in report and "x its optimizer steps" in report
    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]) == {"optlaws", "tpe-median", "tpe"}
    assert results["meta"]["optlaws"]["parent"]["run_id"] == "pre"
    storage = f"sqlite:///{db}"
    study = optuna.load_study(study_name="finetune-optlaws", storage=storage)
    parent = get_parent_run(study)
    assert parent is not None and parent.run_id == "pre" and parent.resume_step == 39
    assert parent.curve.schedule.total_steps == 40
    assert len(study.trials) == 4
    for t in study.trials:
        schedule = get_schedule(t)
        assert schedule is not None and schedule.total_steps == 30
        assert t.intermediate_values and min(t.intermediate_values) == 2  # steps from 0, every 3 steps
    # the law the sampler and pruner share was fitted on the parent's curve and the trials
    fits = [v for k, v in study._storage.get_study_system_attrs(study._study_id).items()
            if k.startswith("optlaws:law:optlaw+prior:")]
    assert fits and fits[0]["law"] is not None
    assert json.loads(fits[0]["law"])["fitted_on"][0]["run_id"] == "pre"
    # the baselines have no parent
    assert get_parent_run(optuna.load_study(study_name="finetune-tpe", storage=storage)) is None
    # resuming: the same parent again is a no-op, the arm goes on to --trials
    assert mod.main([*common, "--trials", "5", "--arm", "optlaws"]) == 0
    study = optuna.load_study(study_name="finetune-optlaws", storage=storage)
    assert len(study.trials) == 5 and get_parent_run(study) is not None
    report = (out / "README.md").read_text()
    assert "| optlaws | 5 |" in report and "| tpe | 4 |" in report  # arms stored earlier are kept
    # the regret arm, only when asked: its own study continuing the parent, added to the report
    assert mod.main([*common, "--trials", "3", "--arm", "optlaws-regret"]) == 0
    regret = optuna.load_study(study_name="finetune-optlaws-regret", storage=storage)
    assert len(regret.trials) == 3 and get_parent_run(regret) is not None
    report = (out / "README.md").read_text()
    assert "| optlaws-regret | 3 |" in report and "| optlaws | 5 |" in report
    # each arm says the command that produced it (the header's ran only the regret arm)
    assert "- optlaws-regret: `python examples/tiny_lm/finetune_study.py" in report
    assert "--arm optlaws-regret`" in report
    assert "- tpe: `python examples/tiny_lm/finetune_study.py" in report
    assert "`optlaws-regret`: the `optlaws` arm with the pruner's tolerance = its margin + 0.01 nats" in report
    assert json.loads((out / "results.json").read_text())["meta"]["optlaws-regret"]["parent"]["run_id"] == "pre"
    made = mod.make_study("optlaws-regret", storage, 0, 30, get_parent_run(regret).curve, None, 0.01)
    assert made.pruner._gates.threshold == pytest.approx(-0.01)  # margin 0.01 - tolerance 0.02
    assert mod.make_study("optlaws", storage, 0, 30, get_parent_run(regret).curve, None).pruner._gates.tolerance == 0
