"""OptLawsPruner on real Optuna studies: divergence, evidence gates, bad reports, stored law."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from _study_helpers import TEST_LAW, TOTAL_STEPS, report_steps, synth_loss
from conftest import LoggedRecords
from optuna.trial import FrozenTrial

from optuna_optlaws import InputError, OptLawsPruner, Schedule, set_schedule
from optuna_optlaws._pruner._frontier import PRED_FINAL, PRED_HI, PRED_LO, PRUNE_REASON, area_at, frontier
from optuna_optlaws._study_state import LAW_KEY_PREFIX
from optuna_optlaws._trial_notes import WARNING
from optuna_optlaws.curves import Curve
from optuna_optlaws.laws import make_law

optuna.logging.set_verbosity(optuna.logging.WARNING)

GOOD = Schedule.cosine(3e-3, TOTAL_STEPS, 30, 3e-5)
GOOD2 = Schedule.wsd(3e-3, TOTAL_STEPS, 30, 0.0, 0.3)
GOOD3 = Schedule.linear(2.5e-3, TOTAL_STEPS, 30, 0.0)
BAD = Schedule.constant(3e-4, TOTAL_STEPS, 30)
"""BAD ends about 0.45 nats above GOOD on the synthetic loss."""


def _pruner(**kw: object) -> OptLawsPruner:
    args: dict = {"n_min_trials": 3, "min_fraction": 0.2, "min_reports": 5, "margin": 0.01, **kw}
    return OptLawsPruner(TEST_LAW, **args)


def _run(study: optuna.Study, schedule: Schedule | None, losses: np.ndarray | None = None) -> tuple[str, int]:
    """Run one trial through ask/report/should_prune/tell; return (state, last step)."""
    trial = study.ask()
    if schedule is not None:
        set_schedule(trial, schedule)
    steps = report_steps(TOTAL_STEPS)
    if losses is None:
        assert schedule is not None
        losses = synth_loss(schedule, steps)
    for step, loss in zip(steps.tolist(), losses.tolist(), strict=True):
        trial.report(loss, step)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return "PRUNED", step
    study.tell(trial, float(losses[-1]))
    return "COMPLETE", int(steps[-1])


def _study_with_good_trials(pruner: OptLawsPruner, storage: str | None = None) -> optuna.Study:
    study = optuna.create_study(storage=storage, pruner=pruner)
    for s in (GOOD, GOOD2, GOOD3):
        assert _run(study, s)[0] == "COMPLETE"
    return study


def test_prunes_diverging_run_at_once_with_reason() -> None:
    study = optuna.create_study(pruner=_pruner())
    losses = synth_loss(GOOD, report_steps()).copy()
    losses[4] = math.nan  # step 80: before any evidence gate or completed trial
    assert _run(study, GOOD, losses) == ("PRUNED", 80)
    reason = study.trials[0].user_attrs[PRUNE_REASON]
    assert reason.startswith("diverged") and "NaN" in reason and "80" in reason

    spike = synth_loss(GOOD, report_steps()).copy()
    spike[10:] = 50.0  # a blow-up
    assert _run(study, GOOD, spike) == ("PRUNED", 200)
    assert "diverged" in study.trials[1].user_attrs[PRUNE_REASON]


class _SpyPruner(optuna.pruners.BasePruner):
    def __init__(self) -> None:
        self.calls = 0

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        self.calls += 1
        return (trial.last_step or 0) >= 300


def test_without_schedule_never_prunes_by_law_and_delegates_to_fallback() -> None:
    spy = _SpyPruner()
    study = _study_with_good_trials(_pruner(fallback=spy))
    bad = synth_loss(BAD, report_steps())
    with pytest.warns(UserWarning, match="has no schedule") as record:
        assert _run(study, None, bad) == ("PRUNED", 300)  # the fallback's decision, not the law's
        assert _run(study, None, bad) == ("PRUNED", 300)
    assert sum("has no schedule" in str(w.message) for w in record) == 1  # warned once
    assert spy.calls == 2 * 16
    assert PRED_FINAL not in study.trials[-1].user_attrs
    assert "no schedule attached: not pruned by the law, left to its fallback pruner" in study.trials[-1].user_attrs[
        WARNING
    ]

    nofallback = _study_with_good_trials(_pruner())
    nan_run = bad.copy()
    nan_run[3] = math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _run(nofallback, None, nan_run)[0] == "COMPLETE"
    assert "left to no pruner (no fallback given)" in nofallback.trials[-1].user_attrs[WARNING]


def test_prunes_a_bad_schedule_only_after_enough_evidence_and_keeps_good_ones() -> None:
    # (uncalibrated: BAD's peak LR lies outside the complete runs', where calibration does not prune)
    study = _study_with_good_trials(_pruner(min_fraction=0.3, min_reports=8, calibrate=False))
    state, step = _run(study, BAD)
    assert state == "PRUNED"
    assert step + 1 >= 0.3 * TOTAL_STEPS and len(study.trials[-1].intermediate_values) >= 8
    attrs = study.trials[-1].user_attrs
    assert "frontier" in attrs[PRUNE_REASON]
    assert all(type(attrs[k]) is float for k in (PRED_FINAL, PRED_LO, PRED_HI))
    assert attrs[PRED_LO] <= attrs[PRED_FINAL] <= attrs[PRED_HI]
    assert attrs[PRED_LO] > min(t.value for t in study.trials if t.value is not None) + 0.01
    # a schedule as good as the frontier is never pruned
    assert _run(study, Schedule.cosine(3.2e-3, TOTAL_STEPS, 30, 0.0))[0] == "COMPLETE"
    assert PRED_FINAL in study.trials[-1].user_attrs


def test_never_prunes_with_too_few_completed_trials() -> None:
    study = optuna.create_study(pruner=_pruner(n_min_trials=3))
    for s in (GOOD, GOOD2):
        _run(study, s)
    # a prior-free study with 2 < 3 complete trials: no law, no pruning, no prediction
    assert _run(study, BAD)[0] == "COMPLETE"
    assert PRED_FINAL not in study.trials[-1].user_attrs


def test_bad_reports_are_recorded_and_never_prune() -> None:
    study = _study_with_good_trials(_pruner(min_reports=5, calibrate=False))  # BAD's peak LR is outside theirs
    steps = report_steps()
    losses = dict(zip(steps.tolist(), synth_loss(BAD, steps).tolist(), strict=True))
    trial = study.ask()
    set_schedule(trial, BAD)
    # 7 reports, 4 of them past the law's initial transient (its first 60 steps): one short of the gate
    for step in (0, 20, 40, 80, 100, 120, 140):
        trial.report(losses[step], step)
        assert trial.should_prune() is False
    # the 5th described report arrives out of order (step 60 after 140): the gate opens, but not on it
    trial.report(losses[60], 60)
    assert trial.should_prune() is False
    # a repeated step (Optuna ignores the second report): no new evidence
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trial.report(losses[60], 60)
    assert trial.should_prune() is False
    # the next proper report is pruned: the law would have pruned at the bad ones
    trial.report(losses[160], 160)
    assert trial.should_prune() is True
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    note = study.trials[-1].user_attrs[WARNING]
    assert "out of order" in note and "repeated" in note

    trial = study.ask()
    set_schedule(trial, BAD)
    for step in (0, 20, 40, 60, 80, 100, 120, 140):
        trial.report(losses[step], step)
    trial.report(losses[580], TOTAL_STEPS + 50)  # a step past the schedule's end
    assert trial.should_prune() is False
    study.tell(trial, losses[580])
    assert "past the schedule's end" in study.trials[-1].user_attrs[WARNING]
    assert PRUNE_REASON not in study.trials[-1].user_attrs
    # the study goes on
    assert _run(study, GOOD)[0] == "COMPLETE"


@pytest.mark.parametrize(
    "text",
    [
        '{"family":"wsd","format_version":1,"total_steps":NaN,"params":{"peak_lr":0.003}}',
        '{"family":"wsd","format_version":1,"total_steps":600,"params":{"peak_lr":0.003,"cooldown_fraction":"x"}}',
        '{"family":"step","format_version":1,"total_steps":600,"params":{"peak_lr":0.003,"milestones":["a"]}}',
        '{"family":"knots","format_version":1,"total_steps":600,"params":{"steps":[0,599]}}',
    ],
)
def test_a_trial_with_a_corrupt_stored_schedule_stops_nothing(text: str) -> None:
    """A trial whose stored schedule attribute is corrupt (hand-edited storage, another
    tool's JSON) is never pruned on the law, says why on itself, and neither that trial
    nor the study's other trials, nor the sampler's next suggestion, fail on it."""
    from optuna_optlaws import OptLawsSampler, suggest_schedule
    from optuna_optlaws._study_state import SCHEDULE_KEY

    study = _study_with_good_trials(_pruner())
    study.sampler = OptLawsSampler(law=TEST_LAW, n_startup_trials=3, seed=0)
    trial = study.ask()
    study._storage.set_trial_system_attr(trial._trial_id, SCHEDULE_KEY, text)
    steps = report_steps()
    for step, loss in zip(steps.tolist(), synth_loss(BAD, steps).tolist(), strict=True):
        trial.report(loss, step)
        assert trial.should_prune() is False
    study.tell(trial, 3.0)
    note = study.trials[-1].user_attrs[WARNING]
    assert "stored schedule is corrupt" in note and PRUNE_REASON not in study.trials[-1].user_attrs
    assert _run(study, GOOD3)[0] == "COMPLETE"  # the study's other trials are still judged by the law
    assert PRED_FINAL in study.trials[-1].user_attrs
    nxt = study.ask()
    sched = suggest_schedule(nxt, total_steps=TOTAL_STEPS, families=("cosine",), peak_lr=(1e-3, 1e-2))
    assert sched.total_steps == TOTAL_STEPS


@pytest.mark.parametrize("corruption", ["not json", "wrong params"])
def test_corrupt_stored_law_is_refitted_and_recorded(corruption: str) -> None:
    pruner = _pruner()
    study = _study_with_good_trials(pruner)
    _run(study, GOOD)  # 4 complete; the law is fitted during this trial's checks
    key = LAW_KEY_PREFIX + TEST_LAW
    storage = study._storage
    stored = dict(storage.get_study_system_attrs(study._study_id)[key])
    assert stored["law"] is not None and stored["finished"] == [0, 1, 2]
    # data unchanged since the fit would reuse it: corrupt it
    _run(study, GOOD2)  # refit on 4 finished
    stored = dict(storage.get_study_system_attrs(study._study_id)[key])
    fits = pruner.law_store.n_fits
    stored["law"] = "{not json" if corruption == "not json" else '{"law": "momentum", "format_version": 1, "params": 3}'
    storage.set_study_system_attr(study._study_id, key, stored)
    from optuna_optlaws import _study_state

    _study_state._MEMORY.clear()  # as a fresh worker would
    trial = study.ask()
    set_schedule(trial, GOOD2)  # the best schedule so far: never pruned
    steps = report_steps()
    for step, loss in zip(steps[:12].tolist(), synth_loss(GOOD2, steps[:12]).tolist(), strict=True):
        trial.report(loss, step)
        assert trial.should_prune() is False
    frozen = study._storage.get_trial(trial._trial_id)
    assert "corrupt" in frozen.user_attrs[WARNING]
    assert pruner.law_store.n_fits == fits + 1
    fixed = storage.get_study_system_attrs(study._study_id)[key]
    assert fixed["law"] != stored["law"] and PRED_FINAL in frozen.user_attrs


def test_a_corrupt_stored_law_the_sampler_meets_first_is_recorded_on_its_trial() -> None:
    """With OptLawsSampler, the sampler reads the stored law before the pruner does: it
    refits it and the trial it was proposing for says so (the pruner then reads the good fit)."""
    from optuna_optlaws import OptLawsSampler, _study_state, suggest_schedule

    study = _study_with_good_trials(_pruner())
    study.sampler = OptLawsSampler(law=TEST_LAW, n_startup_trials=3, seed=0)
    _run(study, GOOD2)  # the shared fit is stored
    key = LAW_KEY_PREFIX + TEST_LAW
    stored = dict(study._storage.get_study_system_attrs(study._study_id)[key])
    stored["law"] = "{not json"
    study._storage.set_study_system_attr(study._study_id, key, stored)
    _study_state._MEMORY.clear()  # as a fresh worker would
    trial = study.ask()
    suggest_schedule(trial, total_steps=TOTAL_STEPS, families=("cosine",), peak_lr=(1e-3, 1e-2))
    assert "corrupt" in study._storage.get_trial(trial._trial_id).user_attrs[WARNING]


def test_prior_law_predicts_before_the_study_has_data(tmp_path: Path) -> None:
    steps = report_steps()
    curves = [Curve(f"r{i}", s, steps, synth_loss(s, steps)) for i, s in enumerate((GOOD, GOOD2, GOOD3, BAD))]
    path = tmp_path / "prior.json"
    make_law(TEST_LAW).fit(curves).save(path)
    study = optuna.create_study(pruner=_pruner(prior=str(path)))
    assert _run(study, BAD)[0] == "COMPLETE"  # no completed trial: the frontier is unknown
    attrs = study.trials[0].user_attrs
    assert abs(attrs[PRED_FINAL] - float(synth_loss(BAD, [TOTAL_STEPS - 1])[0])) < 0.05
    with pytest.raises(InputError, match="cannot read law file"):
        OptLawsPruner(TEST_LAW, prior=tmp_path / "missing.json")


def test_bad_constructor_arguments() -> None:
    with pytest.raises(InputError, match="unknown law"):
        OptLawsPruner("nolaw")
    with pytest.raises(InputError, match="margin"):
        OptLawsPruner(TEST_LAW, margin=-1.0)
    with pytest.raises(InputError, match="min_fraction"):
        OptLawsPruner(TEST_LAW, min_fraction=2.0)


def test_maximisation_study_is_left_to_the_fallback() -> None:
    study = optuna.create_study(direction="maximize", pruner=_pruner())
    losses = synth_loss(GOOD, report_steps()).copy()
    losses[4] = math.nan
    with pytest.warns(UserWarning, match="minimisation"):
        assert _run(study, GOOD, losses)[0] == "COMPLETE"


def test_frontier_counts_a_confident_running_trial() -> None:
    study = _study_with_good_trials(_pruner())
    best_complete = min(t.value for t in study.trials)
    running = study.ask()
    set_schedule(running, GOOD)
    for step in report_steps()[:12].tolist():
        running.report(2.9, step)
    study._storage.set_trial_user_attr(running._trial_id, PRED_HI, best_complete - 0.2)
    group = (None, False, float(TOTAL_STEPS))
    front = frontier(study._storage, study.get_trials(deepcopy=False), group, -1, min_reports=5, min_fraction=0.2)
    assert front.value == pytest.approx(best_complete - 0.2) and "running" in front.source
    assert front.n_complete == 3
    # too little evidence on the running trial: it does not count
    front = frontier(study._storage, study.get_trials(deepcopy=False), group, -1, min_reports=20, min_fraction=0.2)
    assert front.value == pytest.approx(best_complete)


def test_law_prefix_keeps_the_recent_quarter_and_few_early_points() -> None:
    from optuna_optlaws._pruner._decision import EARLY_POINTS, law_prefix

    steps = np.arange(0, 5000, 10, dtype=np.int64)
    losses = np.linspace(4.0, 3.0, steps.size)
    s, loss = law_prefix(steps, losses)
    recent = steps >= 0.75 * steps[-1]
    assert np.array_equal(s[-int(recent.sum()):], steps[recent])  # every recent point, in order
    assert np.sum(s < 0.75 * steps[-1]) == EARLY_POINTS and s[0] == 0
    assert np.all(np.diff(s) > 0) and np.array_equal(loss, np.interp(s, steps, losses))
    short = np.arange(10, dtype=np.int64)
    assert np.array_equal(law_prefix(short, short.astype(float))[0], short)


def test_a_law_that_fails_to_predict_never_loses_the_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    study = _study_with_good_trials(_pruner())
    from optuna_optlaws.laws.momentum import MomentumLaw

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(MomentumLaw, "predict", broken)
    assert _run(study, BAD)[0] == "COMPLETE"
    assert "law prediction failed: RuntimeError: boom" in study.trials[-1].user_attrs[WARNING]


def test_runs_of_nearly_equal_horizon_share_a_group() -> None:
    from optuna_optlaws._study_state import group_key, same_group

    a = group_key(Schedule.constant(1e-3, 23905), 1e8, None)
    b = group_key(Schedule.constant(1e-3, 23937), 1e8, None)
    shorter = group_key(Schedule.constant(1e-3, 15936), 1e8, None)
    bigger = group_key(Schedule.constant(1e-3, 23905), 4e8, None)
    assert same_group(a, b)
    assert not same_group(a, shorter)
    assert not same_group(a, bigger)


def _calibration_runs(cooldowns: list[float], peaks: list[float], error: object, rng: np.random.Generator,
                      sd: float = 0.004) -> tuple[list[Schedule], object]:
    """WSD schedules and their time-split residuals ``error(schedule)`` plus noise ``sd`` (nats)."""
    from optuna_optlaws._pruner._calibration import Residuals
    from optuna_optlaws._residual_gp import schedule_descriptors

    schedules = [Schedule.wsd(p, 600, 30, 0.0, c) for c, p in zip(cooldowns, peaks, strict=True)]
    values = np.array([error(s) for s in schedules]) + rng.normal(0.0, sd, len(schedules))  # type: ignore[operator]
    return schedules, Residuals(values, np.full(len(schedules), 0.03), schedule_descriptors(schedules))


def _long_cooldown_error(s: Schedule) -> float:
    return -0.06 if s.params["cooldown_fraction"] > 0.3 else 0.0


def test_calibration_learns_the_law_error_of_each_kind_of_schedule() -> None:
    from optuna_optlaws._pruner._calibration import calibrate, fraction_bucket

    rng = np.random.default_rng(0)
    cooldowns = rng.uniform(0.05, 0.5, 16).tolist()
    _, res = _calibration_runs(cooldowns, rng.uniform(2e-3, 8e-3, 16).tolist(), _long_cooldown_error, rng)
    assert abs(float(np.mean(res.values)) - -0.03) < 0.02  # one bias for the group would be about -0.03
    long_cd = calibrate(2.5, 0.03, Schedule.wsd(4e-3, 600, 30, 0.0, 0.45), res, 0.9, noise=0.0, law_below=0.1)
    short_cd = calibrate(2.5, 0.03, Schedule.wsd(4e-3, 600, 30, 0.0, 0.1), res, 0.9, noise=0.0, law_below=0.1)
    assert long_cd.bias == pytest.approx(-0.06, abs=0.015) and short_cd.bias == pytest.approx(0.0, abs=0.015)
    assert long_cd.mean == pytest.approx(2.5 + long_cd.bias) and long_cd.n == 16
    # with 16 residuals the interval is the GP's, narrower than the law's 0.1 nats
    assert long_cd.mean - long_cd.lo < 0.05 and long_cd.hi - long_cd.mean == pytest.approx(long_cd.mean - long_cd.lo)
    # with fewer than TRUSTED_CALIBRATION residuals, never narrower than the law's own interval
    _, few = _calibration_runs(cooldowns[:5], [4e-3] * 5, _long_cooldown_error, rng)
    cal = calibrate(2.5, 0.03, Schedule.wsd(4e-3, 600, 30, 0.0, 0.45), few, 0.9, noise=0.0, law_below=0.1)
    assert cal.mean - cal.lo == pytest.approx(0.1)
    # the trial's own point noise is a floor on the standard deviation
    assert calibrate(2.5, 0.03, Schedule.wsd(4e-3, 600, 30, 0.0, 0.45), res, 0.9, noise=0.2).spread == 0.2
    assert fraction_bucket(119, 600) == pytest.approx(0.2) and fraction_bucket(118, 600) == pytest.approx(0.175)


def test_calibrated_interval_covers_held_out_runs_at_its_level() -> None:
    """Residuals that vary smoothly with the schedule plus noise: over many draws, a
    held-out run's residual falls inside the 90% interval about 90% of the time."""
    from optuna_optlaws._pruner._calibration import calibrate

    rng = np.random.default_rng(1)
    def error(s: Schedule) -> float:
        return -0.08 * s.params["cooldown_fraction"] + 0.02 * math.log(s.peak_lr / 4e-3)

    inside = below = 0
    draws = 150
    for _ in range(draws):
        n = int(rng.integers(8, 20))
        cooldowns, peaks = rng.uniform(0.05, 0.5, n + 1).tolist(), np.exp(rng.uniform(-6.2, -4.8, n + 1)).tolist()
        schedules, res = _calibration_runs(cooldowns, peaks, error, rng, sd=0.01)
        from optuna_optlaws._pruner._calibration import Residuals

        train = Residuals(res.values[1:], res.law_sd[1:], res.descriptors[1:])
        cal = calibrate(0.0, 0.03, schedules[0], train, 0.9, noise=0.0)
        inside += cal.lo <= res.values[0] <= cal.hi
        below += res.values[0] < cal.lo
    assert 0.82 <= inside / draws <= 0.97
    assert below / draws <= 0.1


def _running_bad_trial(study: optuna.Study) -> tuple[list[FrozenTrial], FrozenTrial]:
    """A new RUNNING trial with the BAD schedule and its first 15 reports; the study's
    trials and that trial."""
    trial = study.ask()
    set_schedule(trial, BAD)
    steps = report_steps()
    for s, loss in zip(steps[:15].tolist(), synth_loss(BAD, steps[:15]).tolist(), strict=True):
        trial.report(loss, s)
    trials = study.get_trials(deepcopy=False)
    return trials, trials[-1]


def test_calibrated_prune_reason_and_the_same_decision_without_memoised_residuals() -> None:
    from optuna_optlaws._pruner import _calibration
    from optuna_optlaws._pruner._decision import check
    from optuna_optlaws._study_state import trial_schedule

    pruner = _pruner()
    study = _study_with_good_trials(pruner)
    # BAD's peak LR lies below the complete runs': the law's error there is unknown, no pruning;
    # one complete run at that LR is not enough either (its own residual is in sample)
    assert _run(study, BAD)[0] == "COMPLETE"
    assert _run(study, BAD)[0] == "COMPLETE"
    # now two complete runs bracket its peak LR from below: a third BAD run is pruned
    state, _step = _run(study, BAD)
    assert state == "PRUNED"
    assert "calibrated on 5 complete trials" in study.trials[-1].user_attrs[PRUNE_REASON]
    # a running trial, checked by a warm and by a fresh worker (no memoised residuals)
    trials, me = _running_bad_trial(study)
    decisions = []
    for _ in range(2):
        d, _seen = check(study._storage, trials, me, trial_schedule(me), pruner._gates,
                         lambda: pruner.law_store.get(study, trials), None)
        decisions.append((d.prune, d.pred, d.calibrated))
        _calibration._RESIDUALS.clear()
        _calibration._PREPARED.clear()
        _calibration._MODELS.clear()
    assert decisions[0] == decisions[1] and decisions[0][2] is not None


def test_final_noise_is_a_floor_on_the_calibrated_interval() -> None:
    """``final_noise`` (run-to-run noise of a final loss) keeps the calibrated interval at
    least that wide; a floor above the calibrated spread widens it and can stop a prune."""
    from dataclasses import replace

    from optuna_optlaws._pruner._decision import check
    from optuna_optlaws._study_state import trial_schedule

    pruner = _pruner()
    study = _study_with_good_trials(pruner)
    for _ in range(3):
        _run(study, BAD)  # as above: the third BAD run is pruned on a calibrated interval
    trials, me = _running_bad_trial(study)

    def decide(final_noise: float) -> Any:
        gates = replace(pruner._gates, final_noise=final_noise, noise_from_repeats=False)
        return check(study._storage, trials, me, trial_schedule(me), gates,
                     lambda: pruner.law_store.get(study, trials), None)[0]

    free = decide(0.0)
    assert free.prune and free.calibrated is not None
    floor = (free.calibrated.mean - free.calibrated.lo) + 0.05  # wider than the interval itself
    held = decide(floor)
    assert held.calibrated is not None and held.calibrated.spread == pytest.approx(floor)
    assert held.calibrated.mean == pytest.approx(free.calibrated.mean)
    assert held.calibrated.lo < free.calibrated.lo
    assert not held.prune
    for bad in (-0.01, "none", math.nan):
        with pytest.raises(InputError, match="final_noise"):
            OptLawsPruner(TEST_LAW, final_noise=bad)  # type: ignore[arg-type]


def _complete(study: optuna.Study, schedule: Schedule, losses: np.ndarray) -> None:
    """A COMPLETE trial with ``schedule`` and ``losses`` at the report steps, never asked
    whether to prune."""
    trial = study.ask()
    set_schedule(trial, schedule)
    for step, loss in zip(report_steps(TOTAL_STEPS).tolist(), losses.tolist(), strict=True):
        trial.report(loss, step)
    study.tell(trial, float(losses[-1]))


@pytest.mark.parametrize("shift", [0.02, 0.3])
def test_auto_final_noise_is_measured_on_complete_trials_that_repeat_a_schedule(shift: float) -> None:
    """``final_noise="auto"`` (the default): the pooled standard deviation of the final
    losses of COMPLETE trials that repeat a schedule; repeats with equal finals (not
    independent runs) and trials of other schedules measure nothing."""
    from dataclasses import replace

    from optuna_optlaws._pruner._calibration import group_repeat_noise
    from optuna_optlaws._pruner._decision import check
    from optuna_optlaws._study_state import group_key, trial_schedule

    pruner = _pruner()
    assert pruner._gates.noise_from_repeats
    assert OptLawsPruner(TEST_LAW, final_noise=0)._gates.noise_from_repeats is False
    study = _study_with_good_trials(pruner)
    for _ in range(2):
        _run(study, BAD)  # the same synthetic curve twice: equal finals
    group = group_key(BAD, None, None)
    before = group_repeat_noise(study._storage, study.get_trials(deepcopy=False), group)
    assert before.df == 0 and before.identical == (("trial 3", "trial 4"),)
    _complete(study, BAD, synth_loss(BAD, report_steps()) + shift)  # the schedule again, another "seed"
    trials, me = _running_bad_trial(study)
    measured = group_repeat_noise(study._storage, trials, group)
    expected = shift * math.sqrt(1 / 3)  # finals a, a, a + shift: (2 (shift/3)^2 + (2 shift/3)^2) / df 2
    assert measured.df == 2 and measured.sd == pytest.approx(expected) and measured.runs == 3

    def decide(gates: Any) -> Any:
        return check(study._storage, trials, me, trial_schedule(me), gates,
                     lambda: pruner.law_store.get(study, trials), None)[0]

    auto = decide(pruner._gates)
    fixed = decide(replace(pruner._gates, final_noise=measured.sd, noise_from_repeats=False))
    free = decide(replace(pruner._gates, final_noise=0.0, noise_from_repeats=False))
    assert auto.calibrated is not None and free.calibrated is not None
    assert (auto.prune, auto.pred, auto.calibrated) == (fixed.prune, fixed.pred, fixed.calibrated)
    assert auto.calibrated.spread == pytest.approx(max(expected, free.calibrated.spread))
    if shift == 0.3:  # the floor binds: a wider interval than without it
        assert auto.calibrated.spread > free.calibrated.spread and auto.calibrated.lo < free.calibrated.lo
    assert auto.prune and f"run-to-run noise {expected:.4f} from 3 runs repeating a schedule" in str(auto.reason)


def test_never_prunes_on_the_last_step_of_the_schedule() -> None:
    study = _study_with_good_trials(_pruner(margin=0.0, min_fraction=0.99, min_reports=1))
    assert _run(study, BAD)[0] == "COMPLETE"  # only the last report passes the gates: nothing to save


def test_a_run_that_never_trains_is_pruned_as_diverged_even_outside_the_checked_peak_lrs() -> None:
    # a peak LR 30x above the complete runs' (the law is not asked about it) whose loss
    # never comes down: noisy, far above what every healthy run had reached by then,
    # without the blow-up after a healthy start that the curve's own detector looks for
    study = _study_with_good_trials(_pruner())
    hot = Schedule.constant(9e-2, TOTAL_STEPS, 0)
    steps = report_steps()
    stuck = 20.0 + 8.0 * np.cos(np.arange(steps.size))
    state, step = _run(study, hot, stuck)
    assert state == "PRUNED" and step == int(steps[4])  # at min_reports, not later
    reason = study.trials[-1].user_attrs[PRUNE_REASON]
    assert reason.startswith("diverged") and "complete trials of its group" in reason
    # a healthy run at that peak LR (here: a slightly worse copy of a good curve) is not
    healthy = 1.3 * synth_loss(GOOD, steps)
    assert _run(study, hot, healthy) == ("COMPLETE", int(steps[-1]))


def _llm_like(schedule: Schedule) -> np.ndarray:
    """A loss from ln(50k) = 10.8 nats down to 2.6, a function of the LR area alone (a
    large vocabulary's early drop, which the synthetic loss does not have)."""
    return 2.5 + 8.3 / (1.0 + area_at(schedule, report_steps()) / 0.02)


def test_a_run_in_a_long_warmup_is_not_taken_for_one_that_never_trains() -> None:
    """At its 5th report, a run with 400 warmup steps has a loss 2.3x the lowest the
    complete runs (30 warmup steps) had reached by the same step, but not by the same LR
    area: it is no diverged run (it ends level with the cosine run), and a run that does
    not train at that peak LR still is one."""
    study = optuna.create_study(pruner=_pruner())
    for s in (GOOD, GOOD2, GOOD3):
        assert _run(study, s, _llm_like(s))[0] == "COMPLETE"
    slow = Schedule.cosine(3e-3, TOTAL_STEPS, 400, 3e-5)
    _run(study, slow, _llm_like(slow))
    assert not study.trials[-1].user_attrs.get(PRUNE_REASON, "").startswith("diverged"), study.trials[-1].user_attrs
    stuck = np.full(report_steps().size, 10.8)
    state, _ = _run(study, slow, stuck)
    assert state == "PRUNED" and "by the same LR area" in study.trials[-1].user_attrs[PRUNE_REASON]


def test_tolerance_prunes_a_run_that_could_only_tie_the_best() -> None:
    # a copy of a COMPLETE run: its interval straddles the frontier, so the default pruner
    # keeps it, while a pruner told that 0.2 nats of regret are acceptable prunes it early
    steps = report_steps()
    strict = _study_with_good_trials(_pruner())
    assert _run(strict, GOOD2, synth_loss(GOOD2, steps))[0] == "COMPLETE"
    tolerant = _study_with_good_trials(_pruner(tolerance=0.2))
    state, step = _run(tolerant, GOOD2, synth_loss(GOOD2, steps))
    assert state == "PRUNED" and step < TOTAL_STEPS // 2
    pruned = tolerant.trials[-1]
    best = min(t.value for t in tolerant.trials if t.value is not None)
    assert pruned.user_attrs[PRED_LO] < best + 0.01  # below the strict threshold: only the tolerance prunes it
    assert "tolerance 0.2" in pruned.user_attrs[PRUNE_REASON]
    with pytest.raises(InputError, match="tolerance"):
        OptLawsPruner(TEST_LAW, tolerance=-0.01)
    with pytest.raises(InputError, match="tolerance"):
        OptLawsPruner(TEST_LAW, tolerance=math.nan)


def test_point_noise_ignores_the_initial_transient() -> None:
    from optuna_optlaws._pruner._calibration import MIN_NOISE_POINTS, point_noise

    schedule = Schedule.constant(3e-3, 600, 30)
    steps = np.arange(24, 600, 25)
    smooth = 2.0 + 1.5 / np.sqrt(steps / 24.0)  # no noise, steep early

    def all_points(k: int) -> float:  # the same estimate over the last 8 reports, transient included
        return float(np.sqrt(np.mean(np.diff(smooth[:k][-8:], 2) ** 2) / 6))

    early = int(np.sum(steps < 60)) + MIN_NOISE_POINTS - 1  # one report short of the estimate
    assert all_points(4) > 0.05
    assert point_noise(schedule, steps[:early], smooth[:early]) == 0.0
    assert point_noise(schedule, steps[: early + 1], smooth[: early + 1]) < all_points(early + 1) / 4
    assert point_noise(schedule, steps, smooth) < 0.002
    noisy = smooth + np.random.default_rng(0).normal(0.0, 0.01, steps.size)
    assert 0.005 < point_noise(schedule, steps, noisy) < 0.02


def test_peak_lr_is_covered_only_when_two_complete_runs_bracket_it_on_each_side() -> None:
    from optuna_optlaws import set_schedule
    from optuna_optlaws._pruner._calibration import covered

    study = optuna.create_study()
    for peak in (1e-3, 1e-3, 3e-3, 1e-2):
        trial = study.ask()
        set_schedule(trial, Schedule.cosine(peak, 600, warmup_steps=30))
        study.tell(trial, 1.0)
    calib = study.get_trials(deepcopy=False)
    assert covered(1e-3, calib)  # two at the peak itself, two above
    assert covered(2e-3, calib)
    assert covered(3e-3, calib)
    assert not covered(1e-2, calib)  # only one run at (or above) the largest peak
    assert not covered(5e-4, calib)  # below every run
    assert not covered(9e-3, calib)
    assert covered(1.2e-3, calib)  # within the 1.25x tolerance of the two lowest


def test_evidence_counts_only_reports_past_the_laws_initial_transient() -> None:
    from optuna_optlaws._pruner._frontier import has_evidence

    long_warmup = Schedule.cosine(3e-3, 1000, 200, 0.0)  # transient: the 200-step warmup (more than 10%)
    steps = np.array([50, 100, 150, 200, 250])
    assert not has_evidence(steps, long_warmup, 3, 0.1)  # 5 reports, 2 past the transient
    assert has_evidence(np.append(steps, 300), long_warmup, 3, 0.1)
    assert not has_evidence(np.append(steps, 300), long_warmup, 3, 0.5)  # and half the schedule
    assert has_evidence(np.array([100, 110, 120]), Schedule.constant(3e-3, 1000, 0), 3, 0.1)  # first 10%
    assert not has_evidence(np.array([90, 110, 120]), Schedule.constant(3e-3, 1000, 0), 3, 0.1)
    assert not has_evidence(np.array([], dtype=np.int64), long_warmup, 1, 0.0)


def test_a_law_that_fails_on_a_run_is_left_out_and_logged_once(logged: LoggedRecords) -> None:
    """``conditioned_final`` (calibration residuals, the sampler's residuals) leaves out a
    run the law cannot predict: an InputError (sizes it cannot extrapolate to) quietly,
    any other error logged once per kind, so a bug there cannot silently switch
    calibration off."""
    from optuna_optlaws import _study_state
    from optuna_optlaws._study_state import conditioned_final

    class Failing:
        name = "failing"

        def __init__(self, exc: Exception) -> None:
            self.exc = exc

        def predict(self, *args: Any, **kwargs: Any) -> Any:
            raise self.exc

    steps = report_steps()
    curve = Curve("c", GOOD, steps, synth_loss(GOOD, steps))
    _study_state._UNPREDICTABLE_LOGGED.discard("ZeroDivisionError")
    assert conditioned_final(Failing(InputError("no extrapolation")), curve) is None  # type: ignore[arg-type]
    for _ in range(2):
        assert conditioned_final(Failing(ZeroDivisionError("bug")), curve) is None  # type: ignore[arg-type]
    assert len(logged.messages("cannot predict run 'c'")) == 1
    assert logged.messages("no extrapolation") == []
