"""Shared, generic test fixtures (no ../shared data: tests run on a fresh clone)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
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


class LoggedRecords(logging.Handler):
    """WARNING records of the package's loggers (see the ``logged`` fixture)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, part: str) -> list[str]:
        """The messages that contain ``part``."""
        return [r.getMessage() for r in self.records if part in r.getMessage()]


@pytest.fixture
def logged() -> Iterator[LoggedRecords]:
    """WARNING records of the package's loggers, caught on the ``optuna_optlaws`` logger
    itself (so neither the root logger's configuration nor pytest's capture matters)."""
    handler = LoggedRecords()
    logger = logging.getLogger("optuna_optlaws")
    level = logger.level
    logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
