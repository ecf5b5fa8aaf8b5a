"""Opening the files users hand us: CSV files (curves files, run tables) and JSON files
(law and criterion files)."""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import TextIO

from optuna_optlaws._errors import InputError


def open_input_csv(path: str | Path, what: str) -> TextIO:
    """Open ``path`` for reading as CSV text (UTF-8, a leading byte-order mark dropped).

    ``what`` names the file's role in the one-line :class:`InputError` raised when it
    cannot be opened, e.g. ``"curves file"``."""
    path = Path(path)
    try:
        _check_text(path, what)
        return path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"{path}: cannot open {what} ({exc.strerror or exc})") from None


def read_input_text(path: str | Path, what: str) -> str:
    """The text of ``path`` (UTF-8, a leading byte-order mark dropped); a one-line
    :class:`InputError` naming ``what`` (e.g. ``"law file"``) when it cannot be read or
    is not UTF-8 text (a SQLite database, a binary file)."""
    path = Path(path)
    try:
        _check_text(path, what)
        return path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None


SQLITE_MAGIC = b"SQLite format 3\x00"
"""The first bytes of every SQLite database file."""


def _check_text(path: Path, what: str) -> None:
    """:class:`InputError` unless ``path`` is UTF-8 text: a SQLite database (an Optuna
    storage handed where a CSV file belongs) is named as such, other bytes by line."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with path.open("rb") as handle:
        head = handle.read(len(SQLITE_MAGIC))
        if head == SQLITE_MAGIC:
            raise InputError(
                f"{path}: a SQLite database, not a {what} (an Optuna storage? "
                "the commands that read a study take it with --study NAME)"
            )
        chunk = head
        while True:
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                line += exc.object[: exc.start].count(b"\n")
                raise InputError(
                    f"{path} line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}), not a {what}"
                ) from None
            if not chunk:
                return
            line += chunk.count(b"\n")
            chunk = handle.read(1 << 20)
