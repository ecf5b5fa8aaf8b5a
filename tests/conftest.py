"""Shared, generic test fixtures (no ../shared data: tests run on a fresh clone)."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def mpl_csv() -> Path:
    """Path of the vendored MPL curves file (27 runs, long curves format)."""
    return Path(str(resources.files("optuna_optlaws") / "data" / "mpl_luo2025.csv"))


@pytest.fixture
def write_text(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write ``text`` to ``tmp_path / name`` and return the path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return _write
