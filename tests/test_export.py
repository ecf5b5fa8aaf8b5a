"""``optlaws export``: a study's trials as a curves file, read back exactly."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from test_cli import assert_one_line_error, run_main

from optuna_optlaws import Schedule, read_curves_csv, set_schedule
from optuna_optlaws.curves import KNOT_TOLERANCE, MAX_KNOTS, knotted

N, TPS = 1.2e5, 1024.0
SCHEDULES = {
    0: Schedule.cosine(3e-3, 600, warmup_steps=30, final_lr=3e-4),
    1: Schedule.wsd(4e-3, 600, warmup_steps=20, final_lr=1e-4, cooldown_fraction=0.23),
    2: Schedule.constant(2e-3, 600, warmup_steps=25),
}


def _loss(step: int, k: int) -> float:
    return 2.0 + 3.0 / (1.0 + 0.01 * step) + 0.01 * k


@pytest.fixture()
def study_db(tmp_path: Path) -> Path:
    """A SQLite study: trials 0-2 complete with schedules (trial 2 with a NaN report and
    two reports past its schedule's end), trial 3 pruned at step 200, trial 4 complete
    without a schedule; and a second, empty study."""
    path = tmp_path / "s.db"
    url = f"sqlite:///{path}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=url, study_name="sweep")
    for k in range(5):
        trial = study.ask()
        if k in SCHEDULES:
            set_schedule(trial, SCHEDULES[k], model_size=N, tokens_per_step=TPS)
        elif k == 3:
            set_schedule(trial, SCHEDULES[0], model_size=N, tokens_per_step=TPS)
        last = 200 if k == 3 else 600
        for step in range(0, last, 25):
            trial.report(math.nan if (k == 2 and step == 100) else _loss(step, k), step)
        if last == 600:
            trial.report(_loss(599, k), 599)
        if k == 2:
            trial.report(1.0, 600)
            trial.report(1.0, 650)
        if k == 3:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, _loss(599, k))
    optuna.create_study(storage=url, study_name="empty")
    return path


def test_export_round_trips_schedules_and_reports(
    study_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "curves.csv"
    code, stdout, err = run_main(capsys, "export", str(study_db), "--study", "sweep", "--out", str(out))
    assert code == 0, err
    assert "exported: 3 trials (complete), 75 reports, 1 of them NaN or inf" in stdout
    assert "skipped (no readable schedule): trials 4" in stdout
    assert "left out (reports past the schedule's end): 2 reports of trial 2" in stdout
    curves = {c.run_id: c for c in read_curves_csv(out)}
    assert sorted(curves) == ["trial_0", "trial_1", "trial_2"]
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{study_db}")
    for k, schedule in SCHEDULES.items():
        c = curves[f"trial_{k}"]
        assert c.schedule.total_steps == schedule.total_steps
        np.testing.assert_allclose(c.schedule.lrs(), schedule.lrs(), rtol=1e-12, atol=0)
        assert c.model_size == N and c.tokens_per_step == TPS
        reported = {s: v for s, v in study.trials[k].intermediate_values.items() if s < schedule.total_steps}
        assert c.steps.tolist() == sorted(reported)
        np.testing.assert_array_equal(c.losses, [reported[s] for s in sorted(reported)])
    assert np.isnan(curves["trial_2"].losses[curves["trial_2"].steps.tolist().index(100)])


def test_export_chosen_states_and_the_file_fits(
    study_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "all.csv"
    code, _, err = run_main(capsys, "export", f"sqlite:///{study_db}", "--study", "sweep",
                            "--states", "complete,pruned", "--out", str(out))
    assert code == 0, err
    curves = {c.run_id: c for c in read_curves_csv(out)}
    assert "trial_3" in curves and int(curves["trial_3"].steps[-1]) == 175
    code, stdout, err = run_main(capsys, "fit", str(out), "--law", "momentum", "--out", str(tmp_path / "law.json"))
    assert code == 0, err
    assert "runs: 4" in stdout


@pytest.mark.parametrize("cooldown", ["1-sqrt", "cosine"])
def test_long_schedules_are_knotted_within_their_lr(cooldown: str) -> None:
    """A 100,000-step schedule is written with a few thousand knots that follow its LR at
    every step, the infinitely steep start of a 1-sqrt cooldown included."""
    s = Schedule.wsd(3e-4, 100_000, warmup_steps=2000, final_lr=3e-5, cooldown_fraction=0.2, cooldown=cooldown)
    k = knotted(s)
    assert k.total_steps == s.total_steps
    assert MAX_KNOTS <= len(k.params["steps"]) <= 2 * MAX_KNOTS
    assert float(np.max(np.abs(k.lrs() - s.lrs()))) <= KNOT_TOLERANCE * s.peak_lr


def test_export_bad_input_is_one_line(study_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "x.csv")
    missing = tmp_path / "none.db"
    code, _, err = run_main(capsys, "export", f"sqlite:///{missing}", "--out", out)
    assert_one_line_error(code, err, "no SQLite file", str(missing))
    assert not missing.exists()  # Optuna would have created it empty
    code, _, err = run_main(capsys, "export", str(missing), "--out", out)
    assert_one_line_error(code, err, "no such file")
    code, _, err = run_main(capsys, "export", str(study_db), "--out", out)
    assert_one_line_error(code, err, "holds 2 studies", "'sweep'", "--study")
    code, _, err = run_main(capsys, "export", str(study_db), "--study", "other", "--out", out)
    assert_one_line_error(code, err, "no study 'other'", "'empty'")
    code, _, err = run_main(capsys, "export", str(study_db), "--study", "sweep", "--states", "done", "--out", out)
    assert_one_line_error(code, err, "--states 'done'")
    code, _, err = run_main(capsys, "export", str(study_db), "--study", "empty", "--out", out)
    assert_one_line_error(code, err, "study 'empty'", "no complete trial with a schedule")
    assert not Path(out).exists()
    code, _, err = run_main(capsys, "export", str(study_db), "--study", "sweep", "--out", str(tmp_path))
    assert_one_line_error(code, err, str(tmp_path), "Is a directory")


def test_replay_reads_a_study_directly(study_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``optlaws replay STORAGE --study NAME`` replays the study's complete trials with a
    schedule, as the exported file would be replayed, and records that command."""
    out = tmp_path / "replay"
    code, stdout, err = run_main(capsys, "replay", str(study_db), "--study", "sweep", "--pruner", "median", "none",
                                 "--orders", "2", "--out", str(out))
    assert code == 0, err
    assert "3 runs, 2 orders" in stdout
    assert "left out (no readable schedule or no report): complete trials 4" in stdout
    assert f"optlaws replay {study_db} --study sweep --pruner median none" in (out / "README.md").read_text()
    code, _, err = run_main(capsys, "replay", str(study_db), "--study", "empty", "--pruner", "none", "--orders", "1")
    assert_one_line_error(code, err, "study 'empty'", "no complete trial")
