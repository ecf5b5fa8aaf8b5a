"""Logged runs added to a study as finished trials (``add_logged_runs``, ``optlaws import``):
they round-trip with ``optlaws export``, the pruner judges new trials against them before
the study has trained anything, and bad input adds nothing."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from _study_helpers import TEST_LAW, check_trial, make_components, report_steps, run_study, synth_loss
from test_cli import assert_one_line_error, run_main

from optuna_optlaws import Curve, Schedule, add_logged_runs, read_curves_csv, set_schedule
from optuna_optlaws.logged_runs import RUN_ID_ATTR

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 8-trial OptLaws sweep on SQLite, exported (complete and pruned trials)."""
    folder = tmp_path_factory.mktemp("sweep")
    url = f"sqlite:///{folder / 'source.db'}"
    sampler, pruner = make_components(TEST_LAW, 0)
    run_study(optuna.create_study(storage=url, study_name="source", sampler=sampler, pruner=pruner), 8)
    out = folder / "source.csv"
    assert main_ok("export", url, "--states", "complete,pruned", "--out", str(out))
    return out


def main_ok(*argv: str) -> bool:
    from optuna_optlaws.cli import main

    return main(list(argv)) == 0


def _later_trial(study: optuna.Study, like: Curve) -> int:
    """A RUNNING trial with ``like``'s schedule, half of its reports made with losses
    0.1 nats above ``like``'s; its number."""
    trial = study.ask()
    set_schedule(trial, like.schedule)
    steps = report_steps()[: len(report_steps()) // 2]
    for step, loss in zip(steps.tolist(), (synth_loss(like.schedule, steps) + 0.1).tolist(), strict=True):
        trial.report(loss, step)
    return trial.number


def test_import_round_trips_with_export_and_keeps_states(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = optuna.load_study(study_name="source", storage=f"sqlite:///{sweep.parent / 'source.db'}")
    db = tmp_path / "warm.db"
    code, out, err = run_main(capsys, "import", str(sweep), str(db), "--study", "warm")
    assert code == 0, err
    warm = optuna.load_study(study_name="warm", storage=f"sqlite:///{db}")
    want = [(t.state, t.value) for t in source.trials]
    assert [(t.state, t.value) for t in warm.trials] == want
    n_pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in source.trials)
    assert f"added: {8 - n_pruned} complete and {n_pruned} pruned trials" in out and "(created)" in out
    assert [t.user_attrs[RUN_ID_ATTR] for t in warm.trials] == [f"trial_{t.number}" for t in source.trials]
    again = tmp_path / "again.csv"
    assert main_ok("export", str(db), "--states", "complete,pruned", "--out", str(again))
    assert again.read_text() == sweep.read_text()
    # adding the same runs again adds nothing
    code, out, _ = run_main(capsys, "import", str(sweep), str(db))
    assert code == 0 and "added: 0 complete and 0 pruned" in out and "skipped (already in the study): trial_0" in out
    assert len(optuna.load_study(study_name="warm", storage=f"sqlite:///{db}").trials) == 8


def _told(curves: list[Curve]) -> optuna.Study:
    """A study whose trials trained ``curves`` through Optuna's own API (ask, set_schedule,
    report, tell)."""
    study = optuna.create_study()
    for curve in curves:
        trial = study.ask()
        set_schedule(trial, curve.schedule)
        for step, loss in zip(curve.steps.tolist(), curve.losses.tolist(), strict=True):
            trial.report(loss, step)
        if curve.steps[-1] >= curve.schedule.total_steps - 1:
            study.tell(trial, float(curve.losses[-1]))
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return study


def test_the_pruner_judges_a_new_trial_on_imported_runs_as_on_trained_ones(sweep: Path) -> None:
    """A new trial of a study the sweep's runs were added to is judged as in a study whose
    trials trained those runs (the same law, prediction and decision); in an empty study
    it is not judged (too little evidence)."""
    curves = read_curves_csv(sweep)
    complete = [c for c in curves if c.steps[-1] >= c.schedule.total_steps - 1]
    best = min(complete, key=lambda c: float(c.losses[-1]))
    studies = {"trained": _told(curves)}
    for name, runs in (("imported", curves), ("empty", [])):
        studies[name] = optuna.create_study()
        added = add_logged_runs(studies[name], runs)
        assert len(added.complete) + len(added.pruned) == len(runs)
    verdicts = {}
    for name, study in studies.items():
        _, pruner = make_components(TEST_LAW, 0)
        verdicts[name] = check_trial(study, pruner, _later_trial(study, best))
    assert "optlaws_pred_lo" in verdicts["trained"]["attrs"]
    assert verdicts["imported"] == verdicts["trained"]
    assert verdicts["empty"]["prune"] is False and "optlaws_pred_final" not in verdicts["empty"]["attrs"]


def test_a_run_that_stops_early_or_ends_in_nan_is_pruned_not_complete() -> None:
    sched = Schedule.cosine(1e-3, 100)
    runs = [
        Curve("full", sched, [0, 50, 99], [3.0, 2.5, 2.2]),
        Curve("nan_inside", sched, [0, 50, 99], [3.0, math.nan, 2.3]),
        Curve("stopped", sched, [0, 50], [3.0, 2.6]),
        Curve("nan_at_end", sched, [0, 50, 99], [3.0, 2.6, math.inf]),
        Curve("no_loss", sched),
    ]
    study = optuna.create_study()
    added = add_logged_runs(study, runs)
    assert list(added.complete) == ["full", "nan_inside"] and list(added.pruned) == ["stopped", "nan_at_end"]
    assert added.no_loss == ["no_loss"]
    trials = {t.user_attrs[RUN_ID_ATTR]: t for t in study.trials}
    assert trials["nan_inside"].value == 2.3 and math.isnan(trials["nan_inside"].intermediate_values[50])
    assert trials["stopped"].value == 2.6  # a pruned trial's value is its last loss, as Optuna's tell sets it
    assert trials["nan_at_end"].value == math.inf and trials["nan_at_end"].intermediate_values[99] == math.inf


def test_bad_input_is_one_line_and_adds_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    curves = tmp_path / "c.csv"
    curves.write_text(
        "run_id,step,lr,loss,resume_from,resume_step\n"
        "base,0,0.001,3.0,,\nbase,99,0.001,2.5,,\n"
        "cont,0,0.0005,2.5,base,99\ncont,49,0.0005,2.4,base,99\n"
    )
    db = tmp_path / "s.db"
    code, _, err = run_main(capsys, "import", str(curves), str(db), "--study", "s", "--runs", "cont")
    assert_one_line_error(code, err, "continue 'base'", "neither in the file nor the parent run")
    assert optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials == []
    optuna.create_study(storage=f"sqlite:///{db}", study_name="acc", direction="maximize")
    code, _, err = run_main(capsys, "import", str(curves), str(db), "--study", "acc", "--runs", "base")
    assert_one_line_error(code, err, "'acc'", "minimises one loss")
    code, _, err = run_main(capsys, "import", str(curves), str(db), "--runs", "base")
    assert_one_line_error(code, err, "holds 2 studies", "--study")
    code, _, err = run_main(capsys, "import", str(curves), str(tmp_path / "no" / "x.db"), "--study", "s")
    assert_one_line_error(code, err, "no folder")
    code, _, err = run_main(capsys, "import", str(tmp_path / "none.csv"), str(db), "--study", "s")
    assert_one_line_error(code, err, "none.csv")


def test_continued_runs_join_a_study_that_continues_their_parent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fine-tuning sweep's log imports into a study whose trials continue its parent:
    the parent becomes the study's parent run (not a trial), runs from scratch are left
    out, and the study's law then predicts new trials from the parent's state."""
    from optuna_optlaws import get_parent_run

    root = Path(__file__).resolve().parent.parent
    finetune = root / "studies" / "finetune" / "curves.csv"
    db = tmp_path / "ft.db"
    code, out, _ = run_main(capsys, "import", str(finetune), str(db), "--study", "ft")
    assert code == 0
    assert "parent: pre (set as the study's parent run; every trial continues it)" in out
    assert "added: 21 complete and 0 pruned trials" in out
    assert "left out (not continuing pre): scratch_cos_p3e-3" in out
    study = optuna.load_study(study_name="ft", storage=f"sqlite:///{db}")
    parent = get_parent_run(study)
    assert parent is not None and parent.run_id == "pre" and parent.resume_step == 599
    assert "pre" not in {t.user_attrs[RUN_ID_ATTR] for t in study.trials}
    code, out, _ = run_main(capsys, "import", str(finetune), str(db), "--study", "ft")
    assert code == 0 and "(the study's parent run;" in out and "skipped (already in the study)" in out

    # runs from scratch first: continued runs cannot join them
    scratch = tmp_path / "scratch.csv"
    scratch.write_text("run_id,step,lr,loss\nr,0,0.001,3.0\nr,99,0.001,2.5\n")
    assert run_main(capsys, "import", str(scratch), str(db), "--study", "plain")[0] == 0
    code, _, err = run_main(capsys, "import", str(finetune), str(db), "--study", "plain")
    assert_one_line_error(code, err, "continue 'pre'", "already holds runs from scratch")
    # a parent other than the study's
    other = tmp_path / "other.csv"
    other.write_text(
        "run_id,step,lr,loss,resume_from,resume_step\n"
        "base,0,0.001,3.0,,\nbase,99,0.001,2.5,,\n"
        "cont,0,0.0005,2.5,base,99\ncont,49,0.0005,2.4,base,99\n"
        "cont2,0,0.0005,2.5,base,50\ncont2,49,0.0005,2.4,base,50\n"
    )
    code, _, err = run_main(capsys, "import", str(other), str(db), "--study", "ft", "--runs", "base,cont")
    assert_one_line_error(code, err, "continue 'base' at step 99", "continue 'pre' at step 599")
    code, _, err = run_main(capsys, "import", str(other), str(db), "--study", "new")
    assert_one_line_error(code, err, "several runs or steps", "'base' at step 50")
    assert len(optuna.load_study(study_name="ft", storage=f"sqlite:///{db}").trials) == 21


def test_a_study_with_a_parent_exports_and_imports_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``optlaws export`` writes the parent first and every trial continuing it; importing
    that file into a new study gives the same parent and trials."""
    from optuna_optlaws import get_parent_run
    from optuna_optlaws.curves import read_curves_csv

    root = Path(__file__).resolve().parent.parent
    db = tmp_path / "ft.db"
    assert run_main(capsys, "import", str(root / "studies" / "finetune" / "curves.csv"), str(db), "--study", "a",
                    "--runs", "pre,ft_const_p1e-3,ft_cos_p3e-3,ft_wsd_p1e-4")[0] == 0
    out_csv = tmp_path / "out.csv"
    code, out, _ = run_main(capsys, "export", str(db), "--study", "a", "--out", str(out_csv))
    assert code == 0 and "parent: pre (written first; every trial continues it)" in out and "exported: 3 trials" in out
    curves = read_curves_csv(out_csv)
    assert curves[0].run_id == "pre" and curves[0].resume_from is None
    assert all(c.resume_from == "pre" and c.resume_step == 599 for c in curves[1:])
    assert run_main(capsys, "import", str(out_csv), str(db), "--study", "b")[0] == 0
    a = optuna.load_study(study_name="a", storage=f"sqlite:///{db}")
    b = optuna.load_study(study_name="b", storage=f"sqlite:///{db}")
    pa, pb = get_parent_run(a), get_parent_run(b)
    assert pa is not None and pb is not None and pb.resume_step == pa.resume_step
    assert pb.curve.schedule.lrs().tolist() == pytest.approx(pa.curve.schedule.lrs().tolist(), rel=1e-12)
    assert sorted(t.value for t in b.trials) == sorted(t.value for t in a.trials)
