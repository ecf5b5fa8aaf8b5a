"""The curves file reader/writer: every error case of interface.md section 1, warnings,
diverged points, unsorted rows, run filtering."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from optuna_optlaws import Curve, InputError, Schedule, read_curves_csv
from optuna_optlaws.curves import write_curves_csv

WriteText = Callable[[str, str], Path]

GOOD = """run_id,step,lr,loss,model_size
a,0,0.0,,1e6
a,10,1e-3,,1e6
a,20,1e-3,3.0,1e6
a,30,1e-4,2.5,1e6
b,0,1e-3,,2e6
b,30,1e-3,2.8,2e6
"""


def error_of(path: Path, runs: list[str] | None = None) -> str:
    with pytest.raises(InputError) as info:
        read_curves_csv(path, runs=runs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_reads_runs_schedules_and_losses(write_text: WriteText) -> None:
    curves = read_curves_csv(write_text("c.csv", GOOD))
    assert [c.run_id for c in curves] == ["a", "b"]
    a, b = curves
    assert a.schedule.total_steps == 31
    assert a.schedule.lr_at([5])[0] == pytest.approx(5e-4)
    assert a.schedule.lr_at([25])[0] == pytest.approx(5.5e-4)
    np.testing.assert_array_equal(a.steps, [20, 30])
    np.testing.assert_array_equal(a.losses, [3.0, 2.5])
    assert a.final_loss == 2.5 and not a.diverged
    assert a.model_size == 1e6 and b.model_size == 2e6
    assert a.tokens_per_step is None
    assert a.prefix(25).final_loss == 3.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("step,lr,loss\n0,1e-3,3\n", ["line 1", "'run_id'"]),
        ("run_id,lr,loss\na,1e-3,3\n", ["line 1", "'step'"]),
        ("run_id,step,loss\na,0,3\n", ["line 1", "'lr'"]),
        ("run_id,step,lr,loss\na,0,1e-3,3\na,1,fast,3\n", ["line 3", "column 'lr'", "'fast'"]),
        ("run_id,step,lr,loss\na,0,1e-3,3\na,1,1e-3,low\n", ["line 3", "column 'loss'", "'low'"]),
        ("run_id,step,lr,loss\na,0,1e-3,3\na,x,1e-3,3\n", ["line 3", "column 'step'", "'x'"]),
        ("run_id,step,lr,loss\na,0,1e-3,3\na,5,-1e-3,3\n", ["line 3", "column 'lr'", "-1e-3"]),
        ("run_id,step,lr,loss\na,0,1e-3,3\na,5,inf,3\n", ["line 3", "column 'lr'"]),
        ("run_id,step,lr,loss\na,0,1e-3,3\na,nan,1e-3,3\n", ["line 3", "column 'step'", "nan"]),
        ("run_id,step,lr,loss\na,0,1e-3,3\na,,1e-3,3\n", ["line 3", "column 'step'"]),
        ("run_id,step,lr,loss\na,-1,1e-3,3\n", ["line 2", "column 'step'", "[0, 1e+12]"]),
        ("run_id,step,lr,loss\na,0,1e-3,3\na,1e30,1e-3,2\n", ["line 3", "column 'step'", "1e30"]),
        ("run_id,step,lr,loss\na,1.5,1e-3,3\n", ["line 2", "column 'step'", "whole"]),
        ("run_id,step,lr,loss\n,0,1e-3,3\n", ["line 2", "column 'run_id'"]),
        ("run_id,step,lr,loss\na,0,1e-3,3,9\n", ["line 2", "5 fields", "header has 4"]),
        ("run_id,step,lr,loss,model_size\na,0,1e-3,3,1e6\na,1,1e-3,3,2e6\n", ["line 3", "'model_size'", "line 2"]),
        ("run_id,step,lr,loss,model_size\na,0,1e-3,3,-5\n", ["line 2", "'model_size'"]),
        ("run_id,step,lr,loss\na,0,1e-3,3\nb,0,,3\nb,1,,2.9\n", ["run 'b'", "no 'lr'"]),
        ("run_id,step,lr,loss\n", ["header but no rows"]),
        ("", ["empty"]),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None,
)
def test_bad_input_names_file_line_and_column(write_text: WriteText, text: str, expected: list[str]) -> None:
    path = write_text("bad.csv", text)
    msg = error_of(path)
    assert str(path) in msg
    for part in expected:
        assert part in msg, (part, msg)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    msg = error_of(path)
    assert str(path) in msg and "cannot open" in msg


def test_first_lr_after_step_zero_is_held_back_with_a_warning(write_text: WriteText) -> None:
    path = write_text("late.csv", "run_id,step,lr,loss\na,100,2e-4,3.0\na,200,1e-4,2.9\n")
    with pytest.warns(UserWarning, match=r"run 'a'.*first lr at step 100"):
        (a,) = read_curves_csv(path)
    assert a.schedule.lr_at([0])[0] == pytest.approx(2e-4)
    assert a.schedule.lr_at([50])[0] == pytest.approx(2e-4)
    assert a.schedule.lr_at([150])[0] == pytest.approx(1.5e-4)


def test_no_warning_when_lr_starts_at_zero(write_text: WriteText) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_curves_csv(write_text("c.csv", GOOD))


@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-inf"])
def test_nan_and_inf_loss_are_diverged_points(write_text: WriteText, bad: str) -> None:
    text = f"run_id,step,lr,loss\na,0,1e-3,3.0\na,10,1e-3,2.5\na,20,1e-3,{bad}\n"
    (a,) = read_curves_csv(write_text("div.csv", text))
    assert a.diverged
    np.testing.assert_array_equal(a.finite, [True, True, False])
    assert not math.isfinite(a.final_loss)
    assert not a.prefix(10).diverged


def test_unsorted_rows_and_interleaved_runs(write_text: WriteText) -> None:
    text = "run_id,step,lr,loss\nb,30,1e-4,2.0\na,20,1e-3,2.5\nb,0,1e-3,3.0\na,0,1e-3,\nb,10,1e-3,2.6\na,10,1e-3,2.8\n"
    a, b = read_curves_csv(write_text("mixed.csv", text))
    assert (a.run_id, b.run_id) == ("b", "a")  # file order of first appearance
    np.testing.assert_array_equal(a.steps, [0, 10, 30])
    np.testing.assert_array_equal(a.losses, [3.0, 2.6, 2.0])
    assert a.schedule.lr_at([20])[0] == pytest.approx(5.5e-4)
    np.testing.assert_array_equal(b.steps, [10, 20])


def test_loss_after_last_lr_extends_the_schedule_at_the_last_lr(write_text: WriteText) -> None:
    (a,) = read_curves_csv(write_text("c.csv", "run_id,step,lr,loss\na,0,1e-3,\na,10,5e-4,\na,40,,2.0\n"))
    assert a.schedule.total_steps == 41
    assert a.schedule.lr_at([40])[0] == pytest.approx(5e-4)


def test_runs_filter_keeps_only_and_in_given_order(write_text: WriteText) -> None:
    path = write_text("c.csv", GOOD)
    (b,) = read_curves_csv(path, runs=["b"])
    assert b.run_id == "b"
    b2, a2 = read_curves_csv(path, runs=[" b", "a "])
    assert (b2.run_id, a2.run_id) == ("b", "a")


def test_runs_filter_unknown_id_is_an_error(write_text: WriteText) -> None:
    path = write_text("c.csv", GOOD)
    msg = error_of(path, runs=["a", "zzz"])
    assert "'zzz'" in msg and str(path) in msg


def test_runs_filter_skips_a_bad_run_it_does_not_ask_for(write_text: WriteText) -> None:
    path = write_text("c.csv", GOOD + "c,5,,2.0\n")  # run c has no lr
    assert [c.run_id for c in read_curves_csv(path, runs=["a"])] == ["a"]
    assert "run 'c'" in error_of(path)


def test_extra_columns_and_any_column_order(write_text: WriteText) -> None:
    text = "loss,comment,lr,step,run_id,tokens_per_step\n3.0,hi,1e-3,0,a,4096\n2.0,,1e-3,9,a,4096\n"
    (a,) = read_curves_csv(write_text("c.csv", text))
    assert a.tokens_per_step == 4096
    np.testing.assert_array_equal(a.losses, [3.0, 2.0])


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    sched = Schedule.wsd(1e-3, 200, warmup_steps=20, final_lr=1e-5, cooldown_fraction=0.25)
    steps = np.arange(20, 200, 20)
    curve = Curve("w", sched, steps, 3.0 - 1e-3 * steps, model_size=5e7, tokens_per_step=1024.0)
    path = tmp_path / "sub" / "out.csv"
    write_curves_csv(path, [curve])
    (back,) = read_curves_csv(path)
    assert back.run_id == "w" and back.model_size == 5e7 and back.tokens_per_step == 1024.0
    np.testing.assert_array_equal(back.steps, curve.steps)
    np.testing.assert_allclose(back.losses, curve.losses)
    grid = np.arange(0, 181)
    np.testing.assert_allclose(back.schedule.lr_at(grid), sched.lr_at(grid), rtol=1e-9)


@pytest.mark.parametrize(
    "sched",
    [Schedule.cosine(3e-3, 1000, 50, 3e-5), Schedule.wsd(1e-3, 1000, 20, 0.0, 0.3, cooldown="1-sqrt")],
)
def test_a_family_schedule_reads_back_whole_after_its_last_observation(tmp_path: Path, sched: Schedule) -> None:
    """A run observed only up to step 900 of its 1000-step cosine or WSD schedule reads
    back with its 1000 steps and its LR at every one of them (not linear after the last
    observation, not ending there)."""
    from optuna_optlaws.curves import KNOT_TOLERANCE

    steps = np.arange(0, 901, 100)
    path = tmp_path / "c.csv"
    write_curves_csv(path, [Curve("c", sched, steps, 3.0 - 1e-3 * steps)])
    (back,) = read_curves_csv(path)
    assert back.schedule.total_steps == 1000
    assert float(np.max(np.abs(back.schedule.lrs() - sched.lrs()))) <= KNOT_TOLERANCE * sched.peak_lr


def test_vendored_mpl_data(mpl_csv: Path) -> None:
    curves = read_curves_csv(mpl_csv)
    assert len(curves) == 27
    sizes = {c.model_size for c in curves}
    assert sizes == {25e6, 100e6, 400e6}
    by_id = {c.run_id: c for c in curves}
    cos = by_id["400M_cosine_24000"]
    assert cos.schedule.lr_at([0])[0] == 0.0
    assert cos.schedule.lr_at([1080])[0] == pytest.approx(1.5e-4)
    assert cos.schedule.lr_at([2160])[0] == pytest.approx(3e-4)
    assert all(not c.diverged and math.isfinite(c.final_loss) for c in curves)
    assert by_id["400M_cosine_24000"].final_loss < by_id["25M_cosine_24000"].final_loss


def test_written_curves_read_back_with_their_parent(tmp_path: Path) -> None:
    parent = Curve("pre", Schedule.cosine(1e-3, 400, 20, 1e-4), np.arange(0, 400, 50), np.linspace(4, 3, 8))
    child = Curve(
        "ft", Schedule.constant(3e-4, 200, 10), np.arange(0, 200, 50), np.linspace(3.2, 3.0, 4),
        resume_from="pre", resume_step=350,
    )
    path = tmp_path / "c.csv"
    write_curves_csv(path, [parent, child])
    back = {c.run_id: c for c in read_curves_csv(path)}
    assert back["ft"].resume_from == "pre" and back["ft"].resume_step == 350
    assert back["pre"].resume_from is None
    np.testing.assert_allclose(back["ft"].losses, child.losses)
    np.testing.assert_allclose(back["pre"].schedule.lr_at([25, 200]), parent.schedule.lr_at([25, 200]), rtol=0.05)


def test_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("run_id,step,lr,loss\na,0,0.001,\na,10,0.001,3.0\n".encode("utf-8-sig"))
    (curve,) = read_curves_csv(path)
    assert curve.run_id == "a" and curve.final_loss == 3.0
