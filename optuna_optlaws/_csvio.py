"""Opening the CSV files users hand us (curves files, run tables)."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from optuna_optlaws._errors import InputError


def open_input_csv(path: str | Path, what: str) -> TextIO:
    """Open ``path`` for reading as CSV text (UTF-8, a leading byte-order mark dropped).

    ``what`` names the file's role in the one-line :class:`InputError` raised when it
    cannot be opened, e.g. ``"curves file"``."""
    path = Path(path)
    try:
        return path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"{path}: cannot open {what} ({exc.strerror or exc})") from None
