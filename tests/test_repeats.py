"""Run-to-run noise from runs that repeat a schedule: the estimator and ``optlaws noise``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from scipy import stats
from test_cli import assert_one_line_error, run_main

from optuna_optlaws import Schedule, set_schedule
from optuna_optlaws._repeats import repeat_key, repeat_noise
from optuna_optlaws.curves import Curve, knotted, write_curves_csv

COS = Schedule.cosine(3e-3, 200, 20, 3e-4)
WSD = Schedule.wsd(2e-3, 200, 20, 0.0, 0.2)
STEPS = np.arange(19, 200, 20)


def test_pooled_noise_of_repeated_schedules() -> None:
    cos, wsd = repeat_key(COS, 1e5, 1024.0), repeat_key(WSD, 1e5, 1024.0)
    runs = [("a", cos, 2.00), ("b", cos, 2.02), ("c", cos, 2.04), ("d", wsd, 1.95), ("e", wsd, 1.90),
            ("f", repeat_key(COS, 2e5, 1024.0), 1.80),  # another model size: no repeat
            ("g", wsd, math.nan)]  # a diverged run: left out
    noise = repeat_noise(runs)
    expected = math.sqrt((0.02**2 + 0 + 0.02**2 + 2 * 0.025**2) / 3)  # squared deviations / (2 + 1)
    assert noise.df == 3 and noise.sd == pytest.approx(expected)
    assert noise.sets == (("a", "b", "c"), ("d", "e")) and noise.runs == 5 and noise.identical == ()
    lo, hi = noise.interval(0.9)
    assert lo < noise.sd < hi
    assert hi == pytest.approx(math.sqrt(3 * expected**2 / stats.chi2.ppf(0.05, 3)))
    with pytest.raises(ValueError, match="level"):
        noise.interval(1.0)


def test_repeats_with_equal_finals_and_no_repeats_measure_nothing() -> None:
    key = repeat_key(COS, None, None)
    same = repeat_noise([("a", key, 2.0), ("b", key, 2.0), ("c", repeat_key(WSD, None, None), 2.1)])
    assert same.df == 0 and math.isnan(same.sd) and same.identical == (("a", "b"),) and same.sets == ()
    assert all(math.isnan(v) for v in same.interval())
    # the same schedule built twice is a repeat; a continued run repeats only with the same parent and step
    assert repeat_key(Schedule.cosine(3e-3, 200, 20, 3e-4), None, None) == key
    assert repeat_key(COS, None, None, "pre", 599) != repeat_key(COS, None, None, "pre", 299)
    assert repeat_key(Schedule.cosine(3e-3, 201, 20, 3e-4), None, None) != key


def _curve(run_id: str, schedule: Schedule, shift: float, last: int = 199) -> Curve:
    """A run of ``schedule`` (as LR knots at every step, as a log holds it) observed up to ``last``."""
    steps = STEPS[:int(np.searchsorted(STEPS, last, side='right'))]
    return Curve(run_id, knotted(schedule), steps, 3.0 - 0.004 * np.sqrt(steps) + shift, 1e5, 1024.0)


def test_noise_command_on_a_curves_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "curves.csv"
    shifts = {"cos_s0": (COS, 0.0), "cos_s1": (COS, 0.012), "cos_s2": (COS, -0.006),
              "wsd_s0": (WSD, 0.0), "wsd_s1": (WSD, 0.01), "other": (Schedule.constant(1e-3, 200, 20), 0.0)}
    runs = [_curve(r, s, d) for r, (s, d) in shifts.items()]
    write_curves_csv(path, [*runs, _curve("wsd_stopped", WSD, 0.3, last=119)])
    code, out, err = run_main(capsys, "noise", str(path))
    assert code == 0, err
    cos = np.array([0.0, 0.012, -0.006])
    sd = math.sqrt((float(np.sum((cos - cos.mean()) ** 2)) + 2 * 0.005**2) / 3)
    assert f"run-to-run noise of the final loss: {sd:.4f} nats" in out and "3 degrees of freedom" in out
    assert "cos_s0, cos_s1, cos_s2" in out and "wsd_s0, wsd_s1" in out
    assert "left out: wsd_stopped stopped at step 119, before its repeats (step 199)" in out

    alone = tmp_path / "alone.csv"
    write_curves_csv(alone, [runs[0], runs[-1]])
    code, _out, err = run_main(capsys, "noise", str(alone))
    assert_one_line_error(code, err, str(alone), "no schedule was trained more than once")
    code, _out, err = run_main(capsys, "noise", str(path), "--level", "1.5")
    assert_one_line_error(code, err, "--level")


def test_noise_command_on_a_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "s.db"
    study = optuna.create_study(storage=f"sqlite:///{db}", study_name="lr")
    for shift in (0.0, 0.02, 0.0, 0.0):
        trial = study.ask()
        set_schedule(trial, COS if shift or trial.number == 0 else WSD)
        curve = _curve("x", COS, shift)
        for step, loss in zip(curve.steps.tolist(), curve.losses.tolist(), strict=True):
            trial.report(loss, step)
        study.tell(trial, float(curve.losses[-1]))
    code, out, err = run_main(capsys, "noise", str(db), "--study", "lr")
    assert code == 0, err
    assert "trial_0, trial_1" in out and f"{0.02 / math.sqrt(2):.4f} nats" in out
    # trials 2 and 3 repeat WSD with the same reports: named, not counted
    assert "left out: trial_2, trial_3 repeat a schedule with exactly equal final losses" in out
    code, _out, err = run_main(capsys, "noise", str(db), "--study", "nope")
    assert_one_line_error(code, err, "no study 'nope'")


def test_an_enqueued_trial_repeats_the_schedule_the_pruner_measures() -> None:
    """``study.enqueue_trial(trial.params)`` gives the same schedule again, with either
    sampler, so the default ``final_noise="auto"`` finds the repeat."""
    from optuna_optlaws import OptLawsSampler, suggest_schedule
    from optuna_optlaws._pruner._calibration import group_repeat_noise
    from optuna_optlaws._study_state import group_key, readable_schedule

    for sampler in (optuna.samplers.TPESampler(seed=0), OptLawsSampler(seed=0)):
        study = optuna.create_study(sampler=sampler)

        def objective(trial: optuna.Trial) -> float:
            schedule = suggest_schedule(trial, total_steps=200, peak_lr=(1e-3, 1e-2), warmup_steps=(0, 20))
            final = 2.0 + 0.01 * trial.number  # another "seed", another final loss
            trial.report(final, schedule.total_steps - 1)
            return final

        study.optimize(objective, n_trials=1)
        study.enqueue_trial(study.trials[0].params)
        study.optimize(objective, n_trials=1)
        first, again = (readable_schedule(t) for t in study.trials)
        assert first is not None and first == again
        noise = group_repeat_noise(study._storage, study.get_trials(deepcopy=False), group_key(first, None, None))
        assert noise.sets == (("trial 0", "trial 1"),) and noise.sd == pytest.approx(0.01 / math.sqrt(2))
