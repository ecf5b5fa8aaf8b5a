"""The README's Python snippets run as written (with fewer trials and steps)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)


def test_the_study_snippet_runs_a_study_with_the_sampler_and_pruner(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    code = _snippets()[0]
    for old, new in (("n_trials=30", "n_trials=4"), ("total_steps=2000", "total_steps=200")):
        assert old in code, old
        code = code.replace(old, new)
    script = tmp_path / "snippet.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a tiny model: torch's threads only contend on a shared machine
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path / 'lr.db'}")
    states = [t.state for t in study.trials]
    assert len(states) == 4 and all(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
                                    for s in states)
    assert all(t.intermediate_values for t in study.trials)


def test_the_fine_tuning_snippet_declares_the_parent(tmp_path: Path) -> None:
    """Run with the repository's fine-tuning curves as ``pretrain.csv`` and its pretraining
    law as ``pretrain_law.json``; run twice (the second call is a no-op)."""
    code = _snippets()[1]
    shutil.copy(ROOT / "studies" / "finetune" / "curves.csv", tmp_path / "pretrain.csv")
    shutil.copy(ROOT / "studies" / "curves" / "tiny_lm_600_law.json", tmp_path / "pretrain_law.json")
    script = tmp_path / "snippet.py"
    script.write_text(code, encoding="utf-8")
    for _ in range(2):
        done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    from optuna_optlaws.parent_run import PARENT_KEY

    study = optuna.load_study(study_name="ft", storage=f"sqlite:///{tmp_path / 'ft.db'}")
    assert study._storage.get_study_system_attrs(study._study_id)[PARENT_KEY]["run_id"] == "pre"
