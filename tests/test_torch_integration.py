"""optuna_optlaws.torch: a trial's schedule drives a real torch training loop, and
LossReporter reports to Optuna and stops pruned trials."""

from __future__ import annotations

import copy
import math
import pickle
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import LoggedRecords

pytest.importorskip("torch")

import torch

from optuna_optlaws import Schedule
from optuna_optlaws.torch import LossReporter, scheduler_for

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _regression_problem(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 8, generator=g)
    w = torch.randn(8, 1, generator=g)
    y = x @ w + 0.1 * torch.randn(256, 1, generator=g)
    torch.manual_seed(seed)
    return torch.nn.Linear(8, 1), x, y


def _train(
    schedule: Schedule, reporter: LossReporter | None = None, *, scheduler_source: object = None
) -> tuple[list[float], list[float]]:
    """A real small training loop: returns the LR used at each step and the losses."""
    model, x, y = _regression_problem()
    opt = torch.optim.SGD(model.parameters(), lr=123.0)
    sched = scheduler_for(scheduler_source if scheduler_source is not None else schedule, opt)  # type: ignore[arg-type]
    used, losses = [], []
    for step in range(schedule.total_steps):
        used.append(opt.param_groups[0]["lr"])
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            after = torch.nn.functional.mse_loss(model(x), y)
        losses.append(float(after))
        if reporter is not None:
            reporter.step(after, step)
    return used, losses


def test_scheduler_for_schedule_plays_every_step_and_loss_falls() -> None:
    sched = Schedule.wsd(0.1, 60, warmup_steps=10, final_lr=0.001, cooldown_fraction=0.3)
    used, losses = _train(sched)
    np.testing.assert_allclose(used, sched.lrs(60), rtol=1e-12, atol=0)
    assert losses[-1] < 0.2 * losses[0]


def test_scheduler_for_resumes_mid_run() -> None:
    sched = Schedule.cosine(0.1, 50, warmup_steps=5)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    resumed = scheduler_for(sched, opt, last_step=19)
    assert opt.param_groups[0]["lr"] == pytest.approx(float(sched.lr_at([20])[0]), rel=1e-12)
    opt.step()
    resumed.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(float(sched.lr_at([21])[0]), rel=1e-12)


def test_reporter_reports_every_k_and_the_last_step() -> None:
    sched = Schedule.cosine(0.05, 23, warmup_steps=3)
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    reporter = LossReporter(trial, every=5, total_steps=sched.total_steps)
    _, losses = _train(sched, reporter)
    study.tell(trial, losses[-1])
    frozen = study.trials[0]
    assert sorted(frozen.intermediate_values) == [4, 9, 14, 19, 22]
    for step, value in frozen.intermediate_values.items():
        assert value == pytest.approx(losses[step], rel=1e-6)
    assert reporter.n_reports == 5
    assert reporter.last_reported is not None and reporter.last_reported[0] == 22


class _PruneAfter(optuna.pruners.BasePruner):
    """Prunes once a trial has reported at or past ``step``."""

    def __init__(self, step: int) -> None:
        self.at = step

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        last = trial.last_step
        return last is not None and last >= self.at


def test_reporter_raises_trial_pruned_and_the_study_records_it() -> None:
    sched = Schedule.constant(0.05, 100)
    study = optuna.create_study(pruner=_PruneAfter(30))
    seen: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        reporter = LossReporter(trial, every=10, total_steps=sched.total_steps)
        _, losses = _train(sched, reporter)
        seen.append(len(losses))
        return losses[-1]

    study.optimize(objective, n_trials=1)
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.PRUNED
    assert max(t.intermediate_values) == 39  # first report at or past step 30
    assert seen == []  # the loop was stopped by the exception, not run to the end


def test_reporter_reports_non_finite_loss_at_once_and_rejects_bad_every() -> None:
    study = optuna.create_study()
    trial = study.ask()
    reporter = LossReporter(trial, every=100, total_steps=1000, check_prune=False)
    assert reporter.step(1.0, 3) is False
    assert reporter.step(math.nan, 4) is True
    assert reporter.last_reported is not None and reporter.last_reported[0] == 4
    assert reporter.step(torch.tensor(2.0), 5) is False  # a finite tensor waits for its step
    assert reporter.step(torch.tensor([1.0, math.inf]), 6) is True  # a CPU tensor's inf does not
    assert reporter.last_reported[0] == 6 and math.isinf(reporter.last_reported[1])
    assert reporter.step(np.float32("nan"), 7) is True  # nor a numpy scalar's NaN
    with pytest.raises(ValueError):
        LossReporter(trial, every=0, total_steps=10)


def test_trial_schedule_drives_the_scheduler() -> None:
    set_schedule = pytest.importorskip("optuna_optlaws.trial_schedule").set_schedule
    sched = Schedule.linear(0.08, 40, warmup_steps=4, final_lr=0.0)
    study = optuna.create_study()
    trial = study.ask()
    set_schedule(trial, sched)
    reporter = LossReporter(trial, every=7)  # total_steps from the attached schedule
    assert reporter.total_steps == 40
    used, _ = _train(sched, reporter, scheduler_source=trial)
    np.testing.assert_allclose(used, sched.lrs(40), rtol=1e-12)
    assert reporter.last_reported is not None and reporter.last_reported[0] == 39


def test_reporter_never_prunes_after_the_last_step() -> None:
    sched = Schedule.constant(0.05, 20)
    study = optuna.create_study(pruner=_PruneAfter(19))

    def objective(trial: optuna.Trial) -> float:
        reporter = LossReporter(trial, every=5, total_steps=sched.total_steps)
        _, losses = _train(sched, reporter)
        return losses[-1]

    study.optimize(objective, n_trials=1)
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE
    assert max(t.intermediate_values) == 19


def test_param_groups_keep_their_ratio_to_the_largest_lr() -> None:
    """Layer-wise LR decay or a smaller LR for embeddings: the group built with the largest
    LR plays the schedule, every other group keeps its ratio to it at every step."""
    sched = Schedule.wsd(0.1, 40, warmup_steps=5, final_lr=0.001, cooldown_fraction=0.3)
    a, b, c = (torch.nn.Linear(2, 2) for _ in range(3))
    opt = torch.optim.SGD([{"params": a.parameters(), "lr": 1.0},
                           {"params": b.parameters(), "lr": 0.25},
                           {"params": c.parameters()}], lr=0.5)
    torch_sched = scheduler_for(sched, opt)
    for step in range(40):
        lr = float(sched.lr_at([step])[0])
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([lr, 0.25 * lr, 0.5 * lr], rel=1e-12)
        opt.step()
        torch_sched.step()


def test_a_param_group_added_later_keeps_the_ratio_it_was_added_with() -> None:
    """Unfreezing layers: a group added to the optimizer after the scheduler was built (with
    a fifth of the largest initial LR) plays a fifth of the schedule from then on."""
    sched = Schedule.cosine(0.1, 30, warmup_steps=3)
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(a.parameters(), lr=1.0)
    torch_sched = scheduler_for(sched, opt)
    for step in range(30):
        if step == 10:
            opt.add_param_group({"params": b.parameters(), "lr": 0.2})
        opt.step()
        torch_sched.step()
        lr = float(sched.lr_at([step + 1])[0])
        want = [lr] if step < 10 else [lr, 0.2 * lr]
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(want, rel=1e-12)


def test_a_checkpoint_of_the_scheduler_loads_with_weights_only_and_resumes(tmp_path: Path) -> None:
    """``torch.save`` of the scheduler's state loads with ``torch.load``'s default
    (``weights_only=True``), and a scheduler that loads it goes on from the saved step; one
    built on another schedule warns."""
    sched = Schedule.cosine(0.1, 50, warmup_steps=5)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    first = scheduler_for(sched, opt)
    for _ in range(20):
        opt.step()
        first.step()
    path = tmp_path / "ckpt.pt"
    torch.save({"optimizer": opt.state_dict(), "scheduler": first.state_dict()}, path)
    ckpt = torch.load(path)  # weights_only=True, torch's default
    opt2 = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
    opt2.load_state_dict(ckpt["optimizer"])
    resumed = scheduler_for(sched, opt2)
    resumed.load_state_dict(ckpt["scheduler"])
    assert opt2.param_groups[0]["lr"] == pytest.approx(float(sched.lr_at([20])[0]), rel=1e-12)
    opt2.step()
    resumed.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(float(sched.lr_at([21])[0]), rel=1e-12)
    tensor_lr = torch.optim.Adam(torch.nn.Linear(2, 1).parameters(), lr=torch.tensor(1.0))
    scheduler_for(sched, tensor_lr).load_state_dict(ckpt["scheduler"])  # an LR held as a tensor stays one
    assert isinstance(tensor_lr.param_groups[0]["lr"], torch.Tensor)
    assert float(tensor_lr.param_groups[0]["lr"]) == pytest.approx(float(sched.lr_at([20])[0]), rel=1e-6)
    other = scheduler_for(Schedule.constant(0.1, 50), torch.optim.SGD(torch.nn.Linear(2, 1).parameters()))
    with pytest.warns(UserWarning, match="another schedule"):
        other.load_state_dict(ckpt["scheduler"])


def test_scale_plays_the_schedule_at_another_lr_and_rejects_nonsense() -> None:
    """A second optimizer plays the trial's schedule at ``scale`` times its LR."""
    sched = Schedule.cosine(0.1, 30, warmup_steps=3)
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
    scaled = scheduler_for(sched, opt, scale=0.3)
    for step in range(30):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.3 * float(sched.lr_at([step])[0]), rel=1e-12)
        opt.step()
        scaled.step()
    for number in (np.float32(2.0), torch.tensor(2.0)):  # numpy and torch scalars are numbers too
        other = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
        scheduler_for(sched, other, scale=number)  # type: ignore[arg-type]
        assert other.param_groups[0]["lr"] == pytest.approx(2.0 * float(sched.lr_at([0])[0]), rel=1e-6)
    for bad in (0.0, -1.0, float("nan"), True, "2"):
        with pytest.raises(ValueError, match="scale"):
            scheduler_for(sched, torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0), scale=bad)


def test_an_objective_runs_under_optunas_fixed_trial() -> None:
    """``objective(optuna.trial.FixedTrial(params))``, Optuna's way to debug an objective
    outside a study: the suggested schedule drives the scheduler and the reporter knows
    the run's last step."""
    from optuna_optlaws import suggest_schedule

    trial = optuna.trial.FixedTrial({"lr_family": "cosine", "lr_peak_lr": 0.05, "lr_final_lr_ratio": 0.0})
    schedule = suggest_schedule(trial, total_steps=40, families=("cosine",), peak_lr=(1e-3, 0.1))
    used, _ = _train(schedule, LossReporter(trial, every=15), scheduler_source=trial)
    np.testing.assert_allclose(used, schedule.lrs(40), rtol=1e-12, atol=0)
    assert LossReporter(trial, every=15).total_steps == 40


def test_a_checkpoint_of_another_schedule_is_logged_even_when_warnings_are_hidden(logged: LoggedRecords) -> None:
    """HF Trainer loads ``scheduler.pt`` under ``warnings.catch_warnings`` and re-issues
    nothing: a trial resuming another trial's checkpoint (one shared output_dir) must
    still be told, on the ``optuna_optlaws`` logger, with the checkpoint's step."""
    sched = Schedule.cosine(0.1, 50, warmup_steps=5)
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
    first = scheduler_for(sched, opt)
    for _ in range(20):
        opt.step()
        first.step()
    other = scheduler_for(Schedule.constant(0.1, 50), torch.optim.SGD(torch.nn.Linear(2, 1).parameters()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other.load_state_dict(first.state_dict())
    assert logged.messages("another schedule") == [
        "ScheduleLR.load_state_dict: the checkpoint was saved under another schedule (another trial's, "
        "in a shared output directory?); going on with this one from the checkpoint's step 20"
    ]
    assert other.last_epoch == 20
    scheduler_for(sched, torch.optim.SGD(torch.nn.Linear(2, 1).parameters())).load_state_dict(first.state_dict())
    assert len(logged.messages("another schedule")) == 1  # the same schedule: nothing


def test_reporter_warns_once_on_a_step_past_the_schedules_end_and_still_reports_it(logged: LoggedRecords) -> None:
    """HF Trainer's ``state.global_step`` is 1-based: passed as is, reports every 5 steps
    never meet ``(step + 1) % 5 == 0`` and the last one lies past the schedule's end. The
    reporter keeps reporting it and says so, once; 0-based steps are silent."""
    from optuna_optlaws import set_schedule

    sched = Schedule.cosine(0.05, 20, warmup_steps=2)
    study = optuna.create_study()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(sched, LossReporter(study.ask(), every=5, total_steps=sched.total_steps))  # 0-based: silent
        trial = study.ask()
        set_schedule(trial, sched)
        reporter = LossReporter(trial, every=5)
        for global_step in (5, 10, 15, 20, 21):  # a callback's on_log with logging_steps=5, then one more
            reporter.step(1.0 / global_step, global_step)
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == [
        "LossReporter: step 20 is past the run's last step 19: steps are 0-based optimizer steps "
        "(HF Trainer: pass state.global_step - 1; Lightning: trainer.global_step - 1 in on_train_batch_end)"
    ]
    assert [r.getMessage() for r in logged.records] == [str(caught[0].message)]
    study.tell(trial, 0.05)
    assert sorted(study.trials[1].intermediate_values) == [20, 21]  # not dropped
    assert "step 20 reported past the schedule's last step 19" in study.trials[1].user_attrs["optlaws_warning"]
    assert "optlaws_warning" not in study.trials[0].user_attrs


def test_a_multi_objective_study_trains_and_says_its_losses_are_not_reported(logged: LoggedRecords) -> None:
    """Optuna refuses intermediate values in a multi-objective study (``trial.report`` raises
    NotImplementedError): the reporter says so once and training goes on to a finished trial."""
    from optuna_optlaws import OptLawsSampler, suggest_schedule

    study = optuna.create_study(directions=["minimize", "minimize"], sampler=OptLawsSampler(seed=0))

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        sched = suggest_schedule(trial, families=("cosine",), peak_lr=(1e-3, 1e-1), total_steps=20)
        reporter = LossReporter(trial, every=2)
        assert not any(reporter.step(1.0 / (s + 1), s) for s in range(sched.total_steps))
        return 1.0 / sched.total_steps, sched.peak_lr

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.optimize(objective, n_trials=2)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    ours = [str(w.message) for w in caught if str(w.message).startswith("LossReporter")]
    assert len(ours) == 2 and "several objectives" in ours[0]  # once per reporter (per trial)
    assert [r.getMessage() for r in logged.records if r.getMessage().startswith("LossReporter")] == ours


def _double_stepped(opt: torch.optim.Optimizer, torch_sched: object, n: int) -> list[float]:
    """``n`` optimizer steps, each followed by two ``scheduler.step()`` calls (accelerate's
    ``AcceleratedScheduler`` under two processes); the LR each optimizer step used."""
    used = []
    for _ in range(n):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        torch_sched.step()  # type: ignore[attr-defined]
        torch_sched.step()  # type: ignore[attr-defined]
    return used


def _not_torchs(caught: list[warnings.WarningMessage]) -> list[str]:
    """The caught warnings but torch's own about a scheduler stepped before any optimizer step."""
    return [str(w.message) for w in caught if "before `optimizer.step()`" not in str(w.message)]


def test_a_scheduler_stepped_twice_per_optimizer_step_warns_once_and_plays_as_before(logged: LoggedRecords) -> None:
    """Accelerate's ``AcceleratedScheduler`` under two processes steps the scheduler twice per
    optimizer step: the stepping is kept, the scheduler warns and logs once. Stepped once
    per optimizer step, or alone (an LR curve read off it, no training), it is silent."""
    sched = Schedule.cosine(0.1, 40, warmup_steps=4)
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
    torch_sched = scheduler_for(sched, opt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot = scheduler_for(sched, torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0))
        for _ in range(39):
            plot.step()
        for _ in range(10):
            opt.step()
            torch_sched.step()
        assert _not_torchs(caught) == [] and logged.records == []
        used = _double_stepped(opt, torch_sched, 10)
    np.testing.assert_allclose(used, sched.lrs(40)[10:30:2], rtol=1e-12)  # the stepping is unchanged
    messages = _not_torchs(caught)
    assert len(messages) == 1 and "do not pass the scheduler to accelerator.prepare" in messages[0]
    assert messages[0].startswith("ScheduleLR.step() was called more than once after each of two optimizer steps")
    assert [w.filename for w in caught if str(w.message) == messages[0]] == [__file__]  # the loop that steps it
    assert [r.getMessage() for r in logged.records] == messages


def test_a_scheduler_stepped_once_an_epoch_warns_once(logged: LoggedRecords) -> None:
    """Lightning's default ``"interval": "epoch"`` steps the scheduler once per epoch of many
    optimizer steps: the schedule would play that much slower than the law scores it. The
    scheduler warns and logs once; stepped after every optimizer step, or before it (the
    wrong order, still one per step), it is silent."""
    sched = Schedule.cosine(0.1, 40, warmup_steps=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for before in (False, True):
            opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
            torch_sched = scheduler_for(sched, opt)
            for _ in range(12):
                if before:
                    torch_sched.step()
                opt.step()
                if not before:
                    torch_sched.step()
        assert _not_torchs(caught) == [] and logged.records == []
        opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
        torch_sched = scheduler_for(sched, opt)
        for _epoch in range(3):
            for _ in range(4):
                opt.step()
            torch_sched.step()
    messages = _not_torchs(caught)
    assert len(messages) == 1 and messages[0].startswith("ScheduleLR: the optimizer stepped three times in a row")
    assert '"interval": "step"' in messages[0]
    assert [r.getMessage() for r in logged.records] == messages
    assert torch_sched.last_epoch == 3  # the stepping is unchanged


def test_steps_that_amp_skips_do_not_warn(logged: LoggedRecords) -> None:
    """``GradScaler.step`` does not call ``optimizer.step()`` on inf gradients, and the loop
    still steps the scheduler: one scheduler step without an optimizer step, at the start
    (before any optimizer step), now and then, or a few times in a row, is not the
    repeated double stepping the scheduler warns about (which it still catches after)."""
    grad_scaler = getattr(torch.amp, "GradScaler", None)
    if grad_scaler is None:
        pytest.skip("torch.amp.GradScaler needs torch >= 2.3")
    sched = Schedule.cosine(0.1, 60, warmup_steps=4)
    model, x, y = _regression_problem()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    torch_sched = scheduler_for(sched, opt)
    scaler = grad_scaler("cpu", init_scale=2.0**4)
    overflow = {0, 1, 2, 10, 20, 21, 22, 40}
    taken: list[int] = []
    opt.register_step_post_hook(lambda *_: taken.append(1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(60):
            assert opt.param_groups[0]["lr"] == pytest.approx(float(sched.lr_at([step])[0]), rel=1e-12)
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            scaler.scale(loss).backward()
            if step in overflow:
                model.weight.grad.fill_(math.inf)  # type: ignore[union-attr]
            scaler.step(opt)
            scaler.update()
            torch_sched.step()
    assert len(taken) == 60 - len(overflow)  # the scaler did skip those optimizer steps
    assert _not_torchs(caught) == [] and logged.records == []
    with pytest.warns(UserWarning, match="accelerator.prepare"):
        _double_stepped(opt, torch_sched, 2)


def test_a_pickled_or_copied_scheduler_still_counts_optimizer_steps() -> None:
    """The scheduler pickles and deep-copies as before (process pools, checkpoint helpers),
    and the copy watches its own optimizer's steps."""
    sched = Schedule.cosine(0.1, 40, warmup_steps=4)
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
    torch_sched = scheduler_for(sched, opt)
    for _ in range(3):
        opt.step()
        torch_sched.step()
    for twin in (pickle.loads(pickle.dumps(torch_sched)), copy.deepcopy(torch_sched)):
        assert twin.last_epoch == 3 and twin.optimizer is not opt
        assert twin.optimizer.param_groups[0]["lr"] == pytest.approx(float(sched.lr_at([3])[0]), rel=1e-12)
        with pytest.warns(UserWarning, match="accelerator.prepare"):
            _double_stepped(twin.optimizer, twin, 2)
