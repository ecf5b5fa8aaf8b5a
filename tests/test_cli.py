"""``optlaws fit / predict / rank`` end to end on the vendored MPL data, through
``optuna_optlaws.cli.main`` and through the installed ``optlaws`` console script, and
the exit code / one-line message of every kind of bad input."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from optuna_optlaws import Schedule, read_curves_csv
from optuna_optlaws._cli_laws import bound_note
from optuna_optlaws.cli import main

WriteText = Callable[[str, str], Path]

TRAIN_25M = "25M_cosine_24000,25M_constant_24000,25M_wsdcon_9"
FAST_LAW = "momentum"  # where the law does not matter; the default law has its own test

CANDIDATES = {
    "cos72k": Schedule.cosine(3e-4, 72000, warmup_steps=2160, final_lr=3e-5),
    "const24k": Schedule.constant(3e-4, 24000, warmup_steps=2160),
    "cos24k": Schedule.cosine(3e-4, 24000, warmup_steps=2160, final_lr=3e-5),
    "wsd24k": Schedule.wsd(3e-4, 24000, warmup_steps=2160, final_lr=3e-5, cooldown_fraction=1 / 6, cooldown="exp"),
}


def schedules_csv(path: Path, model_size: float = 25e6, every: int = 500) -> Path:
    """A SCHEDULES.csv of the candidate schedules: lr rows only (no loss)."""
    with path.open("w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["run_id", "step", "lr", "model_size"])
        for name, s in CANDIDATES.items():
            grid = np.concatenate([np.arange(0, s.total_steps, every), s.breakpoints()[:-1], [s.total_steps - 1]])
            grid = np.unique(grid)
            for step in grid.astype(int):
                w.writerow([name, step, repr(float(s.lr_at([step])[0])), model_size])
    return path


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *parts: str) -> None:
    assert code == 2, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    for part in parts:
        assert part in lines[0], (part, lines[0])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory, mpl_csv: Path) -> Path:
    """A momentum law file fitted on the three MPL training schedules at 25M."""
    out = tmp_path_factory.mktemp("law") / "law.json"
    assert main(["fit", str(mpl_csv), "--law", FAST_LAW, "--runs", TRAIN_25M, "--out", str(out)]) == 0
    return out


# ---------------------------------------------------------------------- happy paths
def test_fit_writes_law_file_and_summary(capsys: pytest.CaptureFixture[str], mpl_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "deep" / "law.json"
    code, stdout, _ = run_main(capsys, "fit", str(mpl_csv), "--law", FAST_LAW, "--runs", TRAIN_25M, "--seed", "3",
                               "--out", str(out))
    assert code == 0
    assert "law: momentum" in stdout and "runs: 3" in stdout and "seconds:" in stdout
    assert "fit loss: n/a" not in stdout and "fit loss:" in stdout
    data = json.loads(out.read_text())
    assert data["law"] == "momentum" and data["format_version"] >= 1
    assert sorted(r["run_id"] for r in data["fitted_on"]) == sorted(TRAIN_25M.split(","))


def test_fit_with_a_prior_law(capsys: pytest.CaptureFixture[str], mpl_csv: Path, fitted: Path, tmp_path: Path) -> None:
    """``--prior``: an Opt-Law fitted on the 100M runs holds the 25M fit near its parameters
    (the floor left free); the law file says so. Bad uses are one line each."""
    prior = tmp_path / "prior.json"
    runs_100m = TRAIN_25M.replace("25M", "100M")
    assert run_main(capsys, "fit", str(mpl_csv), "--runs", runs_100m, "--out", str(prior))[0] == 0
    out = tmp_path / "law.json"
    code, stdout, _ = run_main(capsys, "fit", str(mpl_csv), "--runs", TRAIN_25M, "--prior", str(prior),
                               "--prior-sd", "0.1", "--out", str(out))
    assert code == 0 and f"prior: {prior} (sd 0.1" in stdout
    info = json.loads(out.read_text())["fit_info"]
    prior_params = json.loads(prior.read_text())["fit_info"]["params"]
    assert info["prior"]["sd"] == 0.1 and "L0" not in info["prior"]["params"]
    assert info["prior"]["params"]["alpha"] == pytest.approx(prior_params["alpha"])
    base = ["fit", str(mpl_csv), "--runs", TRAIN_25M, "--out", str(tmp_path / "bad.json")]
    for extra, parts in (
        (["--prior-sd", "0.2"], ("--prior-sd needs --prior",)),
        (["--prior", str(prior), "--law", "multipower"], ("--prior works with --law optlaw only",)),
        (["--prior", str(fitted)], (f"--prior {fitted}", "fitted optlaw law, got momentum")),
        (["--prior", str(prior), "--prior-sd", "-1"], ("prior sd must be a positive number",)),
        (["--prior", str(tmp_path / "nosuch.json")], ("nosuch.json", "cannot read law file")),
    ):
        code, _, err = run_main(capsys, *base, *extra)
        assert_one_line_error(code, err, *parts)
    assert not (tmp_path / "bad.json").exists()


def test_fit_summary_names_parameters_on_a_bound() -> None:
    """``optlaws fit`` prints one line on parameters at a bound, telling a term switched
    off (an amplitude on its zero floor) from a bound the fit wanted past."""
    assert bound_note({}) == "" and bound_note(None) == ""
    line = bound_note({
        "B": {"side": "upper", "bound": 10.0},
        "L0": {"side": "lower", "bound": 0.001},
        "k_esc": {"side": "lower", "bound": 0.0},
    })
    assert "\n" not in line
    bounded, off = line.split("; ")
    assert bounded.startswith("on a bound of their range")
    assert "B (upper bound 10)" in bounded and "L0 (lower bound 0.001)" in bounded and "k_esc" not in bounded
    assert off == "terms switched off (amplitude 0): k_esc"


def test_predict_one_row_per_input_row(fitted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sched = schedules_csv(tmp_path / "sched.csv")
    pred = tmp_path / "pred.csv"
    code, _, err = run_main(capsys, "predict", str(fitted), str(sched), "--out", str(pred))
    assert code == 0, err
    with sched.open() as f:
        inp = [(r["run_id"], int(r["step"])) for r in csv.DictReader(f)]
    with pred.open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["run_id", "step", "pred_loss", "pred_lo", "pred_hi"]
        rows = list(reader)
    assert [(r["run_id"], int(r["step"])) for r in rows] == inp
    late = [r for r in rows if int(r["step"]) >= 2160]
    for r in late:
        lo, m, hi = float(r["pred_lo"]), float(r["pred_loss"]), float(r["pred_hi"])
        assert math.isfinite(m) and lo <= m <= hi
        assert 2.5 < m < 6.0
    # the loss falls along a constant schedule
    const = [float(r["pred_loss"]) for r in late if r["run_id"] == "const24k"]
    assert const[-1] < const[0]


def test_predict_accepts_a_byte_order_mark(fitted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sched = schedules_csv(tmp_path / "sched.csv")
    bom = tmp_path / "bom.csv"
    bom.write_bytes(sched.read_text().encode("utf-8-sig"))
    plain, marked = tmp_path / "plain.csv", tmp_path / "marked.csv"
    assert run_main(capsys, "predict", str(fitted), str(sched), "--out", str(plain))[0] == 0
    code, _, err = run_main(capsys, "predict", str(fitted), str(bom), "--out", str(marked))
    assert code == 0, err
    assert marked.read_text() == plain.read_text()


def test_predict_matches_observed_training_run(fitted: Path, mpl_csv: Path, tmp_path: Path) -> None:
    (cos,) = read_curves_csv(mpl_csv, runs=["25M_cosine_24000"])
    sched = tmp_path / "cos.csv"
    knots = zip(cos.schedule.params["steps"], cos.schedule.params["lrs"], strict=True)
    sched.write_text("run_id,step,lr,model_size\n" + "".join(f"c,{int(s)},{v!r},25e6\n" for s, v in knots))
    pred = tmp_path / "pred.csv"
    assert main(["predict", str(fitted), str(sched), "--out", str(pred)]) == 0
    with pred.open() as f:
        last = list(csv.DictReader(f))[-1]
    assert int(last["step"]) == cos.last_step
    assert abs(float(last["pred_loss"]) - cos.final_loss) < 0.02


def test_rank_best_first_and_consistent_with_predict(
    fitted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sched = schedules_csv(tmp_path / "sched.csv")
    code, out, err = run_main(capsys, "rank", str(fitted), str(sched))
    assert code == 0, err
    lines = [x.split() for x in out.splitlines()]
    assert [int(x[0]) for x in lines] == [1, 2, 3, 4]
    assert sorted(x[1] for x in lines) == sorted(CANDIDATES)
    finals = [float(x[2]) for x in lines]
    assert finals == sorted(finals)
    assert all(float(x[3]) <= float(x[2]) <= float(x[4]) for x in lines)
    assert lines[0][1] == "cos72k" and lines[-1][1] == "const24k"  # 3x the steps wins; no decay loses
    pred = tmp_path / "pred.csv"
    assert main(["predict", str(fitted), str(sched), "--out", str(pred)]) == 0
    with pred.open() as f:
        rows = list(csv.DictReader(f))
    last = {r["run_id"]: float(r["pred_loss"]) for r in rows}  # the last row of each run wins
    for x in lines:
        assert float(x[2]) == pytest.approx(last[x[1]], abs=2e-6)


def test_default_law_end_to_end(capsys: pytest.CaptureFixture[str], mpl_csv: Path, tmp_path: Path) -> None:
    law = tmp_path / "optlaw.json"
    code, out, err = run_main(capsys, "fit", str(mpl_csv), "--runs", TRAIN_25M, "--out", str(law))
    assert code == 0, err
    assert "law: optlaw" in out
    assert json.loads(law.read_text())["law"] == "optlaw"
    sched = schedules_csv(tmp_path / "sched.csv")
    code, out, err = run_main(capsys, "rank", str(law), str(sched))
    assert code == 0, err
    ranked = [x.split()[1] for x in out.splitlines()]
    assert ranked[0] == "cos72k" and ranked[-1] == "const24k"
    pred = tmp_path / "pred.csv"
    with pytest.warns(UserWarning, match=r"34 rows \(runs 'cos72k', 'const24k', 'cos24k' and 1 more\) lie in a run's "
                      r"initial transient .* extrapolations") as caught:
        code, _, err = run_main(capsys, "predict", str(law), str(sched), "--out", str(pred))
    assert code == 0, err
    assert len(caught) == 1  # one line for the whole file
    with pred.open() as f:
        assert sum(1 for _ in csv.DictReader(f)) == sum(1 for _ in sched.open()) - 1


def test_console_script_fit_predict_rank(mpl_csv: Path, tmp_path: Path) -> None:
    exe = shutil.which("optlaws") or str(Path(sys.executable).parent / "optlaws")
    law, pred = tmp_path / "law.json", tmp_path / "pred.csv"
    sched = schedules_csv(tmp_path / "sched.csv")

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, *argv], capture_output=True, text=True, timeout=120, check=False)

    r = run("fit", str(mpl_csv), "--law", FAST_LAW, "--runs", TRAIN_25M, "--out", str(law))
    assert r.returncode == 0, r.stderr
    assert "law: momentum" in r.stdout
    r = run("predict", str(law), str(sched), "--out", str(pred))
    assert r.returncode == 0, r.stderr
    assert pred.read_text().startswith("run_id,step,pred_loss,pred_lo,pred_hi\n")
    r = run("rank", str(law), str(sched))
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == len(CANDIDATES)
    r = run("rank", str(law), str(tmp_path / "missing.csv"))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "missing.csv" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("run_id,lr,loss\na,1e-3,3\n", ["line 1", "'step'"]),
        ("run_id,step,lr,loss\na,0,1e-3,3\na,10,1e-3,oops\n", ["line 3", "'loss'", "'oops'"]),
        ("run_id,step,lr,loss\na,0,1e-3,3\na,10,-1e-3,2.9\n", ["line 3", "'lr'"]),
        ("run_id,step,lr,loss\na,0,1e-3,3\na,nan,1e-3,2.9\n", ["line 3", "'step'"]),
        ("run_id,step,lr,loss\na,0,1e-3,3\nb,0,,3\n", ["run 'b'", "'lr'"]),
        ("run_id,step,lr,loss\na,0,1e-3,\na,10,1e-3,\n", ["no run has a finite 'loss'"]),
    ],
)
def test_fit_bad_curves_file(
    capsys: pytest.CaptureFixture[str], write_text: WriteText, text: str, parts: list[str]
) -> None:
    path = write_text("bad.csv", text)
    out = path.parent / "law.json"
    code, _, err = run_main(capsys, "fit", str(path), "--law", FAST_LAW, "--out", str(out))
    assert_one_line_error(code, err, "optlaws fit: error:", str(path), *parts)
    assert not out.exists()


def test_fit_a_file_that_is_not_csv_text(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A SQLite database (an Optuna storage) or bytes that are not UTF-8: one line, no traceback."""
    import optuna

    optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    capsys.readouterr()  # Optuna's log line
    code, _, err = run_main(capsys, "fit", str(tmp_path / "s.db"), "--out", str(tmp_path / "l.json"))
    assert_one_line_error(code, err, "s.db", "a SQLite database, not a curves file", "--study")
    binary = tmp_path / "latin1.csv"
    binary.write_bytes("run_id,step,lr,loss\na,0,1e-3,3\nb\xe9,0,1e-3,3\n".encode("latin-1"))
    code, _, err = run_main(capsys, "fit", str(binary), "--out", str(tmp_path / "l.json"))
    assert_one_line_error(code, err, "latin1.csv line 3", "not UTF-8 text (byte 0xe9)")


def test_fit_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_main(capsys, "fit", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "l.json"))
    assert_one_line_error(code, err, "nope.csv", "cannot open")


def test_fit_unknown_run(capsys: pytest.CaptureFixture[str], mpl_csv: Path, tmp_path: Path) -> None:
    code, _, err = run_main(capsys, "fit", str(mpl_csv), "--law", FAST_LAW, "--runs", "25M_cosine_24000,25M_nope",
                            "--out", str(tmp_path / "l.json"))
    assert_one_line_error(code, err, "'25M_nope'", "--runs")


def test_fit_empty_runs(capsys: pytest.CaptureFixture[str], mpl_csv: Path, tmp_path: Path) -> None:
    code, _, err = run_main(capsys, "fit", str(mpl_csv), "--runs", " , ", "--out", str(tmp_path / "l.json"))
    assert_one_line_error(code, err, "--runs")


def test_fit_unknown_law_is_a_usage_error(capsys: pytest.CaptureFixture[str], mpl_csv: Path, tmp_path: Path) -> None:
    code, _, err = run_main(capsys, "fit", str(mpl_csv), "--law", "quadratic", "--out", str(tmp_path / "l.json"))
    assert_one_line_error(code, err, "optlaws fit", "quadratic", "invalid choice", "--help")
    code, _, err = run_main(capsys, "divergence", "nosuch")
    assert_one_line_error(code, err, "optlaws divergence", "nosuch")


def test_fit_law_refuses_mixed_sizes(capsys: pytest.CaptureFixture[str], mpl_csv: Path, tmp_path: Path) -> None:
    code, _, err = run_main(capsys, "fit", str(mpl_csv), "--law", FAST_LAW,
                            "--runs", "25M_cosine_24000,100M_cosine_24000", "--out", str(tmp_path / "l.json"))
    assert_one_line_error(code, err, str(mpl_csv), "model")


def test_fit_unwritable_out(capsys: pytest.CaptureFixture[str], mpl_csv: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_main(capsys, "fit", str(mpl_csv), "--law", FAST_LAW, "--runs", TRAIN_25M,
                            "--out", str(blocker / "law.json"))
    assert_one_line_error(code, err, str(blocker / "law.json"))


@pytest.mark.parametrize("command", ["predict", "rank"])
@pytest.mark.parametrize(
    ("law_text", "parts"),
    [
        ("{not json", ["not valid JSON"]),
        ('{"hello": 1}', ["not a law file"]),
        ('{"law": "momentum", "format_version": 99, "params": {}}', ["format_version 99", "refit"]),
        ('{"law": "quadratic", "format_version": 1, "params": {}}', ["unknown law 'quadratic'"]),
        ('{"law": "momentum", "format_version": 1, "params": {"theta": "x"}}', ["momentum"]),
        ("\udcff{}", ["not UTF-8 text", "law file"]),
        ("SQLite format 3\x00 rest", ["a SQLite database, not a law file"]),
    ],
)
def test_bad_law_file(
    capsys: pytest.CaptureFixture[str], write_text: WriteText, tmp_path: Path, command: str, law_text: str,
    parts: list[str]
) -> None:
    law = tmp_path / "law.json"
    law.write_bytes(law_text.encode("utf-8", "surrogateescape"))
    sched = schedules_csv(tmp_path / "sched.csv")
    extra = ["--out", str(tmp_path / "p.csv")] if command == "predict" else []
    code, _, err = run_main(capsys, command, str(law), str(sched), *extra)
    assert_one_line_error(code, err, str(law), *parts)


@pytest.mark.parametrize(("field", "value"), [("fitted_on", 5), ("fit_info", [1, 2])])
def test_law_file_with_mistyped_metadata(
    capsys: pytest.CaptureFixture[str], fitted: Path, tmp_path: Path, field: str, value: object
) -> None:
    data = json.loads(fitted.read_text())
    data[field] = value
    law = tmp_path / "law.json"
    law.write_text(json.dumps(data))
    code, _, err = run_main(capsys, "rank", str(law), str(schedules_csv(tmp_path / "sched.csv")))
    assert_one_line_error(code, err, str(law), "'fitted_on' must be a list and 'fit_info' an object")


@pytest.mark.parametrize("command", ["predict", "rank"])
def test_missing_law_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str) -> None:
    sched = schedules_csv(tmp_path / "sched.csv")
    extra = ["--out", str(tmp_path / "p.csv")] if command == "predict" else []
    code, _, err = run_main(capsys, command, str(tmp_path / "none.json"), str(sched), *extra)
    assert_one_line_error(code, err, "none.json", "cannot read")


@pytest.mark.parametrize("command", ["predict", "rank"])
@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("run_id,lr\na,1e-3\n", ["line 1", "'step'"]),
        ("run_id,step,lr\na,0,0\na,5,x\n", ["line 3", "'lr'", "'x'"]),
        ("run_id,step,lr\na,0,0\na,5,-3e-4\n", ["line 3", "'lr'"]),
        ("run_id,step,lr\na,0,0\na,nan,3e-4\n", ["line 3", "'step'"]),
        ("run_id,step,lr,loss\na,0,1e-3,\nb,0,,3.0\n", ["run 'b'", "no 'lr'"]),
    ],
)
def test_bad_schedules_file(
    capsys: pytest.CaptureFixture[str], fitted: Path, write_text: WriteText, tmp_path: Path, command: str,
    text: str, parts: list[str]
) -> None:
    sched = write_text("s.csv", text)
    extra = ["--out", str(tmp_path / "p.csv")] if command == "predict" else []
    code, out, err = run_main(capsys, command, str(fitted), str(sched), *extra)
    assert_one_line_error(code, err, str(sched), *parts)
    assert out == ""


@pytest.mark.parametrize("command", ["predict", "rank"])
def test_size_the_law_cannot_extrapolate_to(
    capsys: pytest.CaptureFixture[str], fitted: Path, tmp_path: Path, command: str
) -> None:
    sched = schedules_csv(tmp_path / "big.csv", model_size=400e6)
    extra = ["--out", str(tmp_path / "p.csv")] if command == "predict" else []
    code, _, err = run_main(capsys, command, str(fitted), str(sched), *extra)
    assert_one_line_error(code, err, str(sched), "model_size", "momentum")
    assert not (tmp_path / "p.csv").exists()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from optuna_optlaws import __version__

    code, out, _ = run_main(capsys, "--version")
    assert code == 0 and out.strip() == f"optlaws (optuna-optlaws) {__version__}"


def test_missing_required_argument_is_a_usage_error(capsys: pytest.CaptureFixture[str], mpl_csv: Path) -> None:
    code, _, err = run_main(capsys, "fit", str(mpl_csv))
    assert_one_line_error(code, err, "--out")
    code, _, err = run_main(capsys)
    assert_one_line_error(code, err, "COMMAND")


# ---------------------------------------------------------------------- bench laws
def test_bench_laws_on_a_tiny_subset(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "bench"
    code, stdout, err = run_main(
        capsys, "bench", "laws", "--out", str(out), "--laws", FAST_LAW, "--sizes", "25M", "--no-cross-size",
        "--candidates", "5", "--candidate-steps", "1000", "--shared-data", str(tmp_path / "absent"),
    )
    assert code == 0, err
    assert "wrote" in stdout
    results = json.loads((out / "results.json").read_text())
    ev = results["mpl"]["25M"][FAST_LAW]
    assert ev["status"] == "ok"
    assert [r["run_id"] for r in ev["runs"]] == [
        "25M_cosine_72000", "25M_constant_72000", "25M_wsd_20000_24000", "25M_wsdld_20000_24000",
        "25M_wsdcon_3", "25M_wsdcon_18",
    ]
    s = ev["summary"]
    assert 0 < s["rel_err_pct"] < 5 and 0 <= s["mean_final_err"] <= s["worst_final_err"] < 0.5
    assert 0 <= s["coverage"] <= 1 and -1 <= s["spearman"] <= 1
    worst = max(abs(r["final_error"]) for r in ev["runs"])
    assert worst == pytest.approx(s["worst_final_err"])
    assert "skipped" in results["tissue"]
    assert results["timing"][FAST_LAW]["status"] == "ok"
    assert results["timing"][FAST_LAW]["finite_predictions"] == 5
    readme = (out / "README.md").read_text()
    assert f"optlaws bench laws --out {out} --laws momentum --sizes 25M" in readme
    assert "| momentum |" in readme and "Skipped:" in readme
    assert (out / "mpl_25M.png").stat().st_size > 1000


def test_bench_laws_bad_options(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_main(capsys, "bench", "laws", "--out", str(tmp_path), "--sizes", "7B")
    assert_one_line_error(code, err, "--sizes", "'7B'")
    code, _, err = run_main(capsys, "bench", "laws", "--out", str(tmp_path), "--laws", "quadratic")
    assert_one_line_error(code, err, "--laws", "'quadratic'")
