"""Progress lines on stderr for long work (fits, benchmarks), only when stderr is a terminal."""

from __future__ import annotations

import sys
import time


class Progress:
    """Prints ``label: i/n (elapsed s)`` on one refreshed stderr line when stderr is a TTY."""

    def __init__(self, label: str, total: int, *, enabled: bool | None = None) -> None:
        self.label = label
        self.total = max(int(total), 1)
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.start = time.perf_counter()
        self.done = 0

    def advance(self, n: int = 1, note: str = "") -> None:
        """Count ``n`` more units done and refresh the line."""
        self.done += n
        if self.enabled:
            el = time.perf_counter() - self.start
            sys.stderr.write(f"\r{self.label}: {self.done}/{self.total} ({el:.1f} s) {note}\x1b[K")
            sys.stderr.flush()

    def close(self) -> None:
        """End the progress line."""
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
