"""Tests of the pruner replay benchmark (``optlaws replay``) on vendored and synthetic curves."""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

import numpy as np
import optuna
import pytest

from optuna_optlaws.benchmarks.replay import (
    group_curves,
    make_pruner,
    oracle_steps,
    pruner_settings,
    replay_order,
    run_replay,
    trial_orders,
)
from optuna_optlaws.cli import main
from optuna_optlaws.curves import Curve, read_curves_csv, write_curves_csv
from optuna_optlaws.schedules import Schedule

MPL = Path(str(resources.files("optuna_optlaws") / "data" / "mpl_luo2025.csv"))


@pytest.fixture(scope="module")
def mpl_curves() -> list[Curve]:
    return read_curves_csv(MPL)


def _synthetic(late_bloomer: bool = True) -> list[Curve]:
    """Four runs of 1000 steps, reported every 50 steps: three parallel power laws and
    (optionally) a run that is the worst until step 800 and then drops to the best."""
    steps = np.arange(50, 1001, 50)
    curves = []
    for i, offset in enumerate((0.0, 0.1, 0.2)):
        losses = 3.0 + offset + 2.0 * (steps / 50.0) ** -0.5
        curves.append(Curve(f"run{i}", Schedule.constant(1e-3, 1001), steps, losses, model_size=1e6))
    if late_bloomer:
        losses = 3.3 + 2.0 * (steps / 50.0) ** -0.5
        losses = np.where(steps > 800, losses - 0.4 * (steps - 800) / 200, losses)
        curves.append(Curve("wsd", Schedule.wsd(1e-3, 1001, cooldown_fraction=0.2), steps, losses, model_size=1e6))
    return curves


def test_mpl_groups_share_horizon_and_size(mpl_curves: list[Curve]) -> None:
    groups = group_curves(mpl_curves)
    assert len(groups) == 9
    for g in groups:
        sizes = {c.model_size for c in g.curves}
        horizons = [c.schedule.total_steps for c in g.curves]
        assert len(sizes) == 1
        assert max(horizons) <= 1.1 * min(horizons)
    by_label = {g.label: g for g in groups}
    g400 = by_label["N=400M T~23.9k"]
    assert sorted(c.run_id for c in g400.curves) == sorted(
        ["400M_constant_24000", "400M_cosine_24000", "400M_wsd_20000_24000", "400M_wsdld_20000_24000"]
    )
    assert g400.curves[g400.best_index].run_id == "400M_wsd_20000_24000"
    # by model size only: 9 runs per size in one study
    assert [len(g.curves) for g in group_curves(mpl_curves, ["model_size"])] == [9, 9, 9]


def test_common_grid_interpolates_offset_logs(mpl_curves: list[Curve]) -> None:
    g = next(g for g in group_curves(mpl_curves) if g.label == "N=400M T~23.9k")
    assert np.all(np.diff(g.report_steps) == 128)
    cos = next(i for i, c in enumerate(g.curves) if "cosine" in c.run_id)
    curve = g.curves[cos]
    assert curve.steps[0] == 2160  # cosine runs are logged 16 steps off the others
    steps, values = g.reports(cos)
    assert steps[0] == 2176
    lo, hi = sorted(curve.losses[:2])
    assert lo <= values[0] <= hi
    # a run logged on the grid reports its own logged losses
    const = next(i for i, c in enumerate(g.curves) if "constant" in c.run_id)
    steps, values = g.reports(const)
    logged = dict(zip(g.curves[const].steps.tolist(), g.curves[const].losses.tolist(), strict=True))
    assert all(math.isclose(logged[s], v) for s, v in zip(steps.tolist(), values.tolist(), strict=True))


def test_trial_orders_are_distinct_and_exhaustive_when_few() -> None:
    assert len(trial_orders(3, 20, 0)) == 6
    orders = trial_orders(5, 20, 1)
    assert len(orders) == 20 and len({tuple(o) for o in orders}) == 20
    assert all(sorted(o) == list(range(5)) for o in orders)


def test_no_pruning_trains_everything() -> None:
    res = run_replay(_synthetic(), ["none"], orders=5, progress=False)
    r = res["pruners"]["none"]
    assert r["steps_share"] == 1.0 and r["best_survival"] == 1.0 and r["regret_worst"] == 0.0


def test_median_prunes_parallel_losers_but_never_a_uniform_best() -> None:
    res = run_replay(_synthetic(late_bloomer=False), ["median"], orders=6, progress=False)
    r = res["pruners"]["median"]
    assert r["best_survival"] == 1.0
    assert r["steps_share"] < 1.0
    # the worst run is pruned whenever two better runs completed before it
    assert r["per_group"][0]["pruned_share_by_run"]["run2"] > 0


def test_median_prunes_a_late_bloomer_in_some_orders() -> None:
    res = run_replay(_synthetic(), ["median", "none"], orders=24, progress=False)
    med = res["pruners"]["median"]
    assert res["groups"][0]["best_run"] == "wsd"
    assert 0.0 < med["best_survival"] < 1.0
    assert med["regret_worst"] > 0.0
    assert med["steps_share"] < res["pruners"]["none"]["steps_share"]


def test_pruned_steps_are_counted_at_the_pruning_report() -> None:
    curves = _synthetic(late_bloomer=False)
    group = group_curves(curves)[0]
    # best two first: the worst run is pruned at the first report at or after warmup (int(0.2 * 1001) = 200)
    out = replay_order(group, [0, 1, 2], make_pruner("median", group))
    assert out.completed == [True, True, False]
    assert out.pruned_at[2] == 200
    assert out.steps_trained == [1001, 1001, 200]


def test_oracle_completes_the_first_runs_and_the_records_and_prunes_the_rest_at_the_gates() -> None:
    group = group_curves(_synthetic(late_bloomer=False))[0]  # finals run0 < run1 < run2
    # worst first: every run is a record and completes
    assert oracle_steps(group, [[2, 1, 0]], n_min_trials=1, min_reports=3, min_fraction=0.1) == (3003, 3003)
    # best first: the others are pruned at their first report with 3 reports past the law's initial
    # transient (its first 100 steps: reports 100, 150, 200) and 10% of the schedule: step 200
    assert oracle_steps(group, [[0, 1, 2]], n_min_trials=1, min_reports=3, min_fraction=0.1) == (1001 + 400, 3003)
    # two runs must complete first
    assert oracle_steps(group, [[0, 1, 2]], n_min_trials=2, min_reports=1, min_fraction=0.2) == (2002 + 200, 3003)


def test_replay_uses_storage_and_attaches_schedules(tmp_path: Path) -> None:
    pytest.importorskip("optuna_optlaws.trial_schedule")
    from optuna_optlaws.trial_schedule import get_schedule, get_sizes

    curves = _synthetic()
    group = group_curves(curves)[0]
    url = f"sqlite:///{tmp_path / 'replay.db'}"
    replay_order(group, [3, 0, 1, 2], make_pruner("none", group), storage=url, study_name="r")
    study = optuna.load_study(study_name="r", storage=url)
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4
    assert get_schedule(trials[0]) == curves[3].schedule
    assert get_sizes(trials[0])[0] == 1e6
    assert trials[1].intermediate_values[1000] == pytest.approx(curves[0].final_loss)


def test_cli_writes_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "curves.csv"
    write_curves_csv(path, _synthetic())
    out = tmp_path / "out"
    code = main(["replay", str(path), "--pruner", "median", "none", "--orders", "3", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| median |" in printed and "| none |" in printed
    data = json.loads((out / "results.json").read_text())
    assert set(data["pruners"]) == {"median", "none"}
    assert data["pruners"]["none"]["steps_share"] == 1.0
    readme = (out / "README.md").read_text()
    assert "optlaws replay" in readme and "| median |" in readme


def test_replay_combine_sums_the_replays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``optlaws replay-combine`` puts the groups of several replays side by side and
    summarises each pruner they share over all their group-orders."""
    path = tmp_path / "curves.csv"
    write_curves_csv(path, _synthetic())
    plain = tmp_path / "plain.csv"
    write_curves_csv(plain, _synthetic(late_bloomer=False))
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "both"
    assert main(["replay", str(path), "--pruner", "median", "none", "--orders", "3", "--out", str(a)]) == 0
    assert main(["replay", str(plain), "--pruner", "median", "--orders", "2", "--out", str(b)]) == 0
    assert main(["replay-combine", str(a), str(b), "--out", str(out)]) == 0
    parts = [json.loads((d / "results.json").read_text()) for d in (a, b)]
    data = json.loads((out / "results.json").read_text())
    assert set(data["pruners"]) == {"median"}  # "none" is not in both
    assert [g["group"].split(":")[0] for g in data["groups"]] == [str(a), str(b)]
    med = [p["pruners"]["median"]["per_group"][0] for p in parts]
    trained = sum(g["steps_trained"] for g in med)
    full = sum(g["steps_full"] for g in med)
    assert data["pruners"]["median"]["steps_share"] == pytest.approx(trained / full)
    assert data["pruners"]["median"]["group_orders"] == 5
    survived = sum(g["best_survived"] for g in med)
    assert data["pruners"]["median"]["best_survival"] == pytest.approx(survived / 5)
    readme = (out / "README.md").read_text()
    assert "optlaws replay-combine" in readme and f"optlaws replay {path}" in readme
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    assert main(["replay-combine", str(a), str(tmp_path / "empty"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "results.json" in err and "optlaws replay --out" in err


def test_cli_rejects_unknown_pruner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "curves.csv"
    write_curves_csv(path, _synthetic())
    assert main(["replay", str(path), "--pruner", "bogus"]) == 2
    assert "bogus" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("spec", "what"),
    [
        ("median:tolerance=0.01", "only optlaws takes arguments"),
        ("optlaws:patience=3", "'patience=3' is not key=value"),
        ("optlaws:tolerance", "'tolerance' is not key=value"),
        ("optlaws:tolerance=-0.1", "tolerance='-0.1' must be a number of nats >= 0"),
        ("optlaws:margin=abc", "margin='abc' must be a number"),
        ("optlaws:tolerance=auto", "tolerance='auto' must be a number"),  # only final_noise takes auto
        ("optlaws:final_noise=often", "final_noise='often' must be a number"),
        ("optlaws:min_reports=0", "min_reports='0' must be an int >= 1"),
        ("optlaws:min_reports=2.5", "min_reports='2.5' must be an int >= 1"),
        ("optlaws:min_fraction=1.5", "min_fraction='1.5' must lie in [0, 1]"),
        ("optlaws:transfer_prior=no/such/law.json", "transfer_prior='no/such/law.json' is not a law file"),
        ("optlaws:transfer_prior_sd=0", "transfer_prior_sd='0' must be a number > 0"),
    ],
)
def test_cli_rejects_bad_pruner_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str, what: str
) -> None:
    path = tmp_path / "curves.csv"
    write_curves_csv(path, _synthetic())
    assert main(["replay", str(path), "--pruner", spec]) == 2
    err = capsys.readouterr().err
    assert what in err and spec in err and len(err.strip().splitlines()) == 1


def test_optlaws_arguments_reach_the_pruner_and_the_results() -> None:
    pytest.importorskip("optuna_optlaws.pruner")
    group = group_curves(_synthetic())[0]
    pruner = make_pruner("optlaws:tolerance=0.02,margin=0", group)
    assert pruner._gates.tolerance == 0.02 and pruner._gates.margin == 0.0  # type: ignore[attr-defined]
    assert pruner._gates.noise_from_repeats  # type: ignore[attr-defined]  # the default: final_noise="auto"
    fixed = make_pruner("optlaws:final_noise=0.01", group)
    assert not fixed._gates.noise_from_repeats and fixed._gates.final_noise == 0.01  # type: ignore[attr-defined]
    assert make_pruner("optlaws:final_noise=auto", group)._gates.noise_from_repeats  # type: ignore[attr-defined]
    gated = make_pruner("optlaws:min_reports=1,min_fraction=0.05", group)._gates  # type: ignore[attr-defined]
    assert (gated.min_reports, gated.min_fraction) == (1, 0.05) and isinstance(gated.min_reports, int)
    assert pruner_settings("optlaws:final_noise=auto,min_reports=2") == (
        "OptLawsPruner(final_noise=auto, min_reports=2) (other arguments default)"
    )
    res = run_replay(_synthetic(), ["none", "optlaws:tolerance=0.02"], orders=1, progress=False)
    row = res["pruners"]["optlaws:tolerance=0.02"]
    assert row["settings"].startswith("OptLawsPruner(tolerance=0.02)")


def test_target_line_judges_the_optlaws_row() -> None:
    from optuna_optlaws.benchmarks.replay import target_line

    res = run_replay(_synthetic(), ["none"], orders=2, progress=False)
    assert "not checked" in target_line(res)
    res["pruners"]["optlaws"] = dict(res["pruners"]["none"])  # survives always, trains everything
    line = target_line(res)
    assert "NOT met" in line and "100.0%" in line
    res["pruners"]["optlaws"].update(steps_share=0.3, best_survival=0.96)
    assert "Targets met" in target_line(res)


def test_pruner_calibration_tables_on_synthetic_runs() -> None:
    from optuna_optlaws.benchmarks.pruner_calibration import calibrated_table, early_table, errors, table

    curves = _synthetic()
    loco = errors(curves, "momentum", loco=True)
    insample = errors(curves, "momentum", loco=False)
    assert {r["run"] for r in loco} == {c.run_id for c in curves}
    assert all(r["lo"] <= r["mean"] <= r["hi"] for r in loco)
    assert len(table(loco)) > 2
    lines = calibrated_table(loco, insample, repeats=2)
    assert any(line.startswith("| 3 | 0.5 |") for line in lines)
    # early phase: law fitted on 3 of the 4 runs, asked about the fourth (same peak LR)
    table_lines = early_table(curves, "momentum", ns=(3, 4), draws=2)
    early = [line.split("|") for line in table_lines if line.startswith("| 3 |")]
    # at 10% of the schedule these runs have reported once: too little to condition on
    assert [row[2].strip() for row in early] == ["0.5"]
    for row in early:
        assert int(row[3]) == 2  # one held-out run per draw
        assert 0.0 <= float(row[4]) <= 1.0 and 0.0 <= float(row[5]) <= 1.0
        assert float(row[7]) > 0


def _finetune_subset(tmp_path: Path, n: int = 4) -> tuple[Path, list[Curve]]:
    """The fine-tuning curves' parent, ``n`` of its continued runs and one run from scratch."""
    root = Path(__file__).resolve().parent.parent
    curves = read_curves_csv(root / "studies" / "finetune" / "curves.csv")
    keep = [c for c in curves if c.resume_from is None] + [c for c in curves if c.resume_from][:n]
    path = tmp_path / "ft.csv"
    write_curves_csv(path, keep)
    return path, keep


def test_continued_runs_replay_as_studies_that_continue_their_parent(tmp_path: Path) -> None:
    """A curves file of continued runs replays those runs, each study declaring their
    parent run (``set_parent_run``); the parent and runs from scratch are left out;
    ``--no-parent`` replays the same runs as runs from scratch."""
    pytest.importorskip("optuna_optlaws.pruner")
    from optuna_optlaws.benchmarks.replay import split_parent
    from optuna_optlaws.parent_run import get_parent_run

    path, curves = _finetune_subset(tmp_path)
    runs, parent, left = split_parent(curves)
    assert parent is not None and parent.run_id == "pre" and parent.resume_step == 599
    assert [c.run_id for c in runs] == [c.run_id for c in curves if c.resume_from]
    assert set(left) == {c.run_id for c in curves if c.resume_from is None} and "pre" in left
    scratch, none, _ = split_parent(curves, from_scratch=True)
    assert none is None and all(c.resume_from is None for c in scratch)

    group = group_curves(runs, parent=parent)[0]
    url = f"sqlite:///{tmp_path / 'r.db'}"
    replay_order(group, [0, 1, 2, 3], make_pruner("none", group), storage=url, study_name="r")
    got = get_parent_run(optuna.load_study(study_name="r", storage=url))
    assert got is not None and got.run_id == "pre"

    out = tmp_path / "out"
    assert main(["replay", str(path), "--pruner", "none", "--orders", "1", "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["parent"] == {"run": "pre", "resume_step": 599} and "pre" in data["left_out"]
    assert len(data["groups"][0]["runs"]) == 4
    assert "Every run continues run pre from its step 599" in (out / "README.md").read_text()
    assert main(["replay", str(path), "--pruner", "none", "--orders", "1", "--no-parent", "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["parent"] is None and data["continued_from_scratch"]
    readme = (out / "README.md").read_text()
    assert "--no-parent" in readme and "replayed as runs from scratch" in readme


def test_continued_runs_of_several_parents_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import replace

    _, curves = _finetune_subset(tmp_path)
    pre = next(c for c in curves if c.run_id == "pre")
    other = [*curves, replace(pre, run_id="pre2"), replace(curves[-1], run_id="x", resume_from="pre2")]
    path = tmp_path / "two.csv"
    write_curves_csv(path, other)
    assert main(["replay", str(path), "--pruner", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert "must all resume from one run at one step" in err and len(err.splitlines()) == 1
    orphan = [c for c in curves if c.run_id != "pre"]
    path = tmp_path / "orphan.csv"
    write_curves_csv(path, orphan)
    assert main(["replay", str(path), "--pruner", "none"]) == 2
    assert "resume from 'pre', which is not in the curves file" in capsys.readouterr().err


def test_a_transfer_prior_reaches_the_replayed_pruner(tmp_path: Path) -> None:
    pytest.importorskip("optuna_optlaws.pruner")
    from optuna_optlaws.laws.optlaw import OptLaw

    _, curves = _finetune_subset(tmp_path)
    law = tmp_path / "prior.json"
    OptLaw(loco=False).fit([c for c in curves if c.run_id == "pre"]).save(law)
    group = group_curves(_synthetic())[0]
    pruner = make_pruner(f"optlaws:transfer_prior={law},transfer_prior_sd=0.3", group)
    store = pruner.law_store  # type: ignore[attr-defined]
    assert store.transfer_prior is not None and store.transfer_prior_sd == 0.3
    assert pruner_settings(f"optlaws:transfer_prior={law}") == (
        f"OptLawsPruner(transfer_prior={law}) (other arguments default)"
    )


class _Witness(optuna.pruners.BasePruner):
    """Never prunes; records, at each check, the trial and how many other trials run."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        self.seen.append((trial.number, len(running) - 1))
        return False


def test_parallel_workers_train_runs_side_by_side() -> None:
    """``workers=2``: two runs train at once, their reports interleaved in time (optimizer
    steps), and each worker takes the next run when its trial ends; one worker reports each
    run to its end before the next begins."""
    group = group_curves(_synthetic())[0]
    witness = _Witness()
    out = replay_order(group, [0, 1, 2, 3], witness, workers=2)
    assert out.completed == [True] * 4 and out.steps_trained == [1001] * 4
    numbers = [n for n, _ in witness.seen]
    reports = group.report_steps.size
    # trials 0 and 1 alternate report by report, then trials 2 and 3
    assert numbers[: 2 * reports] == [0, 1] * reports and numbers[2 * reports :] == [2, 3] * reports
    assert {others for _, others in witness.seen[:-1]} == {1}  # the last report: trial 3 alone
    alone = _Witness()
    replay_order(group, [0, 1, 2, 3], alone)
    assert [n for n, _ in alone.seen] == [0] * reports + [1] * reports + [2] * reports + [3] * reports
    assert {others for _, others in alone.seen} == {0}


class _PruneTrialZeroAtItsSecondReport(_Witness):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        super().prune(study, trial)
        return trial.number == 0 and len(trial.intermediate_values) == 2


def test_a_pruned_run_frees_its_worker_for_the_next_one() -> None:
    """Trial 0 pruned at its second report (step 100): its worker takes run 2 at that time
    (optimizer step 100 of the replay), so run 2 reports beside run 1, 100 steps behind."""
    group = group_curves(_synthetic())[0]
    pruner = _PruneTrialZeroAtItsSecondReport()
    out = replay_order(group, [0, 1, 2, 3], pruner, workers=2)
    assert out.completed == [False, True, True, True] and out.pruned_at[0] == 100
    assert out.steps_trained == [100, 1001, 1001, 1001]
    numbers = [n for n, _ in pruner.seen]
    # 0 and 1 at step 50, 0 at step 100 (pruned), 1 at step 100; then run 2 (its step 50, at time 150)
    # and run 1 (step 150) alternate
    assert numbers[:6] == [0, 1, 0, 1, 2, 1]
    with pytest.raises(Exception, match="workers=0 must be an int >= 1"):
        replay_order(group, [0, 1, 2], make_pruner("none", group), workers=0)


def test_cli_replays_with_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "curves.csv"
    write_curves_csv(path, _synthetic())
    out = tmp_path / "out"
    assert main(["replay", str(path), "--pruner", "none", "--orders", "2", "--workers", "3", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["workers"] == 3
    readme = (out / "README.md").read_text()
    assert "Workers: 3 runs train at once" in readme and "--orders 2 --seed 0" in readme
    assert "--workers 3 --out" in readme  # the command that reruns it
    capsys.readouterr()
    assert main(["replay", str(path), "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
