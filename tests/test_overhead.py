"""The overhead benchmark runs end to end on a small study (its figures are the
benchmark's business, not the tests')."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from optuna_optlaws import get_schedule


@pytest.mark.parametrize("logged", [False, True])
def test_overhead_benchmark_writes_its_tables(tmp_path: Path, logged: bool) -> None:
    from optuna_optlaws.benchmarks import overhead

    args = ["--trials", "4", "--reports", "20", "--storages", "inmemory,sqlite", "--sampler-trials", "0",
            "--db-dir", str(tmp_path / "db"), "--out", str(tmp_path)]
    assert overhead.main([*args, "--logged"] if logged else args) == 0
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["options"]["logged"] is logged
    for kind in ("inmemory", "sqlite"):
        res = record["results"][kind]
        # both pruners saw the same 4 trials of 20 reports; every check was timed
        for arm in ("median", "optlaws"):
            checks = res[arm]["checks"]["n"] + res[arm]["refit_checks"]["n"]
            assert 4 <= checks <= 4 * 20
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path / 'db' / 'sqlite-optlaws.db'}")
    schedule = get_schedule(study.trials[0])
    assert schedule is not None and (schedule.family == "knots") is logged
    readme = (tmp_path / "README.md").read_text()
    assert ("logged knots, one per optimizer step" in readme) is logged
    assert overhead.main(["--trials", "0", "--out", str(tmp_path)]) == 2
