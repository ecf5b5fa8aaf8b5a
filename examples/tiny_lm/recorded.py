"""Reading the recorded live tiny-LM studies (``FOLDER/tiny_lm.db``), for the scripts that
audit, trace, replay and time them. No torch: ``trace_pruner.py`` runs without it."""

from __future__ import annotations

import argparse
from pathlib import Path

import optuna


def recorded_study(text: str) -> tuple[Path, str]:
    """``FOLDER:ARM`` (the study ``tiny_lm-ARM`` in ``FOLDER/tiny_lm.db``) as ``(FOLDER, ARM)``:
    the argparse type of the scripts that read recorded live studies."""
    folder, sep, arm = text.rpartition(":")
    if not (sep and folder and arm):
        raise argparse.ArgumentTypeError(f"{text!r}: expected FOLDER:ARM")
    if not (Path(folder) / "tiny_lm.db").is_file():
        raise argparse.ArgumentTypeError(f"{Path(folder) / 'tiny_lm.db'}: no such file")
    return Path(folder), arm


def load_recorded(db: Path, name: str, script: str) -> optuna.Study:
    """The study ``name`` of the SQLite file ``db``; one line naming what is missing
    (``SystemExit``, prefixed with ``script``) when the file or the study is not there,
    instead of Optuna creating an empty file or raising KeyError."""
    if not Path(db).is_file():
        raise SystemExit(f"{script}: {db}: no such file")
    storage = f"sqlite:///{db}"
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = ", ".join(optuna.get_all_study_names(storage=storage)) or "none"
        raise SystemExit(f"{script}: {db} has no study {name!r} (it has: {names})") from None
