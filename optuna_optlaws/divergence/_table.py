"""The run table of ``optlaws divergence`` (interface.md section 3): one row per run.

Columns ``run_id, peak_lr, batch_size, model_size, tokens`` are required, ``warmup_steps``
is optional, ``diverged`` (0/1) is required for fitting only. Extra columns are ignored.
Every problem is an :class:`InputError` naming the file, line and column.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from optuna_optlaws._csvio import open_input_csv
from optuna_optlaws._errors import InputError

REQUIRED = ("run_id", "peak_lr", "batch_size", "model_size", "tokens")
"""Columns every run table must have."""
POSITIVE = ("peak_lr", "batch_size", "model_size", "tokens")
"""Numeric columns that must be > 0 (they enter logarithms)."""


@dataclass(frozen=True)
class RunTable:
    """Runs to judge: peak LR, batch size (sequences), N (parameters), D (tokens), warmup (steps).

    ``warmup_steps`` is None when the table has no such column; ``diverged`` is None when the
    table has no ``diverged`` column (a table to predict on).
    """

    run_ids: list[str]
    peak_lr: NDArray[np.float64]
    batch_size: NDArray[np.float64]
    model_size: NDArray[np.float64]
    tokens: NDArray[np.float64]
    warmup_steps: NDArray[np.float64] | None = None
    diverged: NDArray[np.bool_] | None = None

    def __len__(self) -> int:
        return len(self.run_ids)


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{where}: not a number: {text!r}") from None
    if not math.isfinite(value):
        raise InputError(f"{where}: not a finite number: {text!r}")
    return value


def read_run_table(path: str | Path, *, need_diverged: bool = False) -> RunTable:
    """Read a run table CSV; ``need_diverged`` makes the ``diverged`` column required (fitting)."""
    path = Path(path)
    with open_input_csv(path, "run table") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if not header:
            raise InputError(f"{path}: empty file, expected a header with {', '.join(REQUIRED)}")
        reader.fieldnames = header
        need = [*REQUIRED, "diverged"] if need_diverged else list(REQUIRED)
        missing = [c for c in need if c not in header]
        if missing:
            raise InputError(f"{path}: missing column {', '.join(missing)} (header: {','.join(header)})")
        has_warmup = "warmup_steps" in header
        has_diverged = "diverged" in header
        ids: list[str] = []
        seen: dict[str, int] = {}
        cols: dict[str, list[float]] = {c: [] for c in (*POSITIVE, "warmup_steps", "diverged")}
        for i, row in enumerate(reader):
            line = i + 2
            run_id = (row.get("run_id") or "").strip()
            if not run_id:
                raise InputError(f"{path}, line {line}, column run_id: empty")
            if run_id in seen:
                raise InputError(f"{path}, line {line}, column run_id: {run_id!r} repeats line {seen[run_id]}")
            seen[run_id] = line
            ids.append(run_id)
            for c in POSITIVE:
                v = _number((row.get(c) or "").strip(), f"{path}, line {line}, column {c}")
                if v <= 0:
                    raise InputError(f"{path}, line {line}, column {c}: must be > 0, got {v:g}")
                cols[c].append(v)
            if has_warmup:
                w = _number((row.get("warmup_steps") or "").strip(), f"{path}, line {line}, column warmup_steps")
                if w < 0:
                    raise InputError(f"{path}, line {line}, column warmup_steps: must be >= 0, got {w:g}")
                cols["warmup_steps"].append(w)
            if has_diverged:
                text = (row.get("diverged") or "").strip()
                if text in ("0", "1", "0.0", "1.0"):
                    cols["diverged"].append(float(text))
                elif need_diverged or text:
                    raise InputError(f"{path}, line {line}, column diverged: must be 0 or 1, got {text!r}")
                else:
                    cols["diverged"].append(math.nan)
        if not ids:
            raise InputError(f"{path}: no runs (only a header)")
    diverged = None
    if has_diverged and not np.any(np.isnan(cols["diverged"])):
        diverged = np.asarray(cols["diverged"]) > 0.5
    return RunTable(
        run_ids=ids,
        peak_lr=np.asarray(cols["peak_lr"]),
        batch_size=np.asarray(cols["batch_size"]),
        model_size=np.asarray(cols["model_size"]),
        tokens=np.asarray(cols["tokens"]),
        warmup_steps=np.asarray(cols["warmup_steps"]) if has_warmup else None,
        diverged=diverged,
    )
