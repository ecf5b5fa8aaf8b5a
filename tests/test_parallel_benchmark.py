"""The parallel-workers benchmark runs end to end on small studies (its figures are the
benchmark's business, not the tests')."""

from __future__ import annotations

import json
from pathlib import Path


def test_parallel_benchmark_writes_its_report(tmp_path: Path) -> None:
    from optuna_optlaws.benchmarks import parallel

    args = ["--seeds", "1", "--trials", "8", "--batch", "2", "--law", "momentum", "--out", str(tmp_path)]
    assert parallel.main(args) == 0
    record = json.loads((tmp_path / "results.json").read_text())
    assert set(record["summary"]) == set(parallel.ARMS)
    for arm in parallel.ARMS:
        [run] = record["runs"][arm]
        assert len(run["finals"]) == 8 and len(run["sources"]) == 8
        # one worker asks alone; two workers ask in pairs
        sizes = [len(b) for b in run["descriptors"]]
        assert sizes == ([1] * 8 if arm == "sequential" else [2] * 4)
        # the study's best is at least the space's best noise-free loss, up to the noise
        assert min(run["finals"]) > record["space_best"] - 5 * parallel.NOISE
    assert "| batch-believe |" in (tmp_path / "README.md").read_text()
    assert parallel.main(["--batch", "1", "--out", str(tmp_path)]) == 2
