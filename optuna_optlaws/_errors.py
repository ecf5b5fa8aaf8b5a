"""The one error type that user-facing input problems raise.

Every message is a single line that says *what* is wrong and *where* (file, row, column,
run, parameter), so the command line can print it as is and exit with code 2.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from a user: a malformed file, an impossible schedule, a law asked to
    do what it cannot (for example extrapolate to a model size without a size term)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
