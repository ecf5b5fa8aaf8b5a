"""Benchmark of the divergence tools on real data; writes studies/divergence/{README.md,results.json}.

    python -m optuna_optlaws.benchmarks.divergence [--data ../shared/data] [--out studies/divergence] [--no-moe]

1. **Criterion** on the Step Law dense runs (``steplaw/dense_lr_bs_loss.csv``; label:
   ``smooth loss`` > 5 or NaN): leave one (N, D) cell out, fit :class:`DivergenceCriterion`
   on the other cells, predict the held-out cell; pooled F1 of the ``diverged`` class, and
   where each (N, D, batch size) group's predicted boundary falls against its true one, in
   steps of the group's LR grid (:func:`boundary_offsets`). For
   context, two in-sample references: a lookup table that predicts the majority outcome of
   each (cell, peak LR) -- a ceiling for any rule that is monotone in LR and blind to batch
   size -- and a separate logistic boundary for each cell in (ln lr, ln B, ln^2 B), fitted
   and scored on that cell (what a per-cell 2D boundary reaches without having to predict
   a new cell), and the ceiling of any rule that calls a run diverged when its peak LR is at
   or above a threshold chosen freely for each (N, D, batch size) group (:func:`threshold_ceiling`).
   The label is the data's own definition (``steplaw`` row of the data README:
   smooth loss > 5 marks the diverged or unstable runs); NaN counts as diverged too.
2. **Choice of (peak LR, batch size)**: leave one cell out, fit :class:`LandscapeLaw` on the
   other cells' non-diverged runs (target: ``smooth loss``), pick the held-out cell's run
   configuration with the lowest predicted loss among those the criterion calls stable;
   gap = true smooth loss there / the cell's best - 1. Also the run configuration nearest
   (in ln LR, ln batch) to the law's continuous optimum. Baselines: the Step Law paper's
   fitted power laws (median of its 1,000 bootstrap fits in
   ``1004_fitted_lr_bs_scaling_model_parameters.csv``; fitted on all cells, so *not* held
   out), the same power-law form refitted here on the other cells' best runs (held out),
   and the cell's median peak LR with its median batch size. The MoE runs
   (``moe_lr_bs_loss.csv``, N = active parameters) as a secondary table.
3. **Online detection**: false alarms of :func:`detect_divergence` on the vendored MPL
   curves and on the per-step 100M curves of ``tissue_course_100m``; lead time on synthetic
   divergences grafted onto those real curves (the steps between detection and the first
   point where the loss is NaN or >= 2x its minimum so far); cost per call.
"""

from __future__ import annotations

import argparse
import csv
import importlib.resources
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from optuna_optlaws._progress import Progress
from optuna_optlaws.divergence._criterion import level_counts

DIVERGED_ABOVE = 5.0
"""A run whose smooth loss is above this (nats), or NaN, counts as diverged."""
SEQ_LEN = 2048
"""Tokens per sequence of the Step Law runs (their batch sizes are in sequences)."""
GAP_TARGET = 0.005
"""A chosen (peak LR, batch size) counts as good when its loss is within this share of the cell's best."""
F1_TARGET = 0.95
"""Issue 4's target for the held-out F1 of the divergence criterion (the seed paper reports 0.92)."""


# --------------------------------------------------------------------------- data


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def load_steplaw(path: Path, *, size_column: str = "N") -> dict[str, NDArray[Any]]:
    """Columns lr, bs, N, D, loss (smooth loss, nats), diverged, cell of a Step Law table."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    out = {
        "lr": np.array([_float(r["lr"]) for r in rows]),
        "bs": np.array([_float(r["bs"]) for r in rows]),
        "N": np.array([_float(r[size_column]) for r in rows]),
        "D": np.array([_float(r["D"]) for r in rows]),
        "loss": np.array([_float(r["smooth loss"]) for r in rows]),
    }
    out["diverged"] = ~(out["loss"] <= DIVERGED_ABOVE)
    keys, cell = np.unique(np.column_stack([out["N"], out["D"]]), axis=0, return_inverse=True)
    out["cell"] = cell.ravel()
    out["cell_keys"] = keys
    return out


def _table(data: dict[str, NDArray[Any]], mask: NDArray[np.bool_]):  # type: ignore[no-untyped-def]
    from optuna_optlaws.divergence._table import RunTable

    idx = np.flatnonzero(mask)
    return RunTable(run_ids=[str(i) for i in idx], peak_lr=data["lr"][idx], batch_size=data["bs"][idx],
                    model_size=data["N"][idx], tokens=data["D"][idx], diverged=data["diverged"][idx])


# --------------------------------------------------------------------------- 1. criterion

CRITERION_NOTES = (
    "How the form was chosen: about 30 forms of ln eta_crit were scored by this same leave-one-cell-out",
    "F1 (so the figure above carries some selection optimism), each fitted as a logistic regression on",
    "runs: linear logistics in ln lr, ln N, ln B, ln D with squares and pairwise products (0.81-0.84), a",
    "peak in B whose place moves with D or N, minima of a small-batch and a large-batch power law",
    "(0.78-0.83), and terms in the run length S = D/B: its square and cube (0.82-0.84), hinges and a",
    "smooth step (0.86-0.91). The step is what the grid shows: at a given (N, D), runs with fewer than",
    "~30k optimizer steps diverge one LR grid point (x1.41) lower than longer runs of the same cell.",
    "How it is fitted: the final form (the smooth step) was then fitted three ways, all scored by this",
    "F1, which adds to that optimism: the logistic regression on runs (0.899), interval censoring of each",
    "(N, D, B) group's critical LR with a normal scatter (0.900), and the same with a part of the scatter",
    "shared by the groups of an (N, D) cell (0.911, the criterion above; within-cell scatter ~0.11 in ln LR",
    "against a grid step of 0.35, which is what keeps groups one step off). The label is the data's own",
    "(smooth loss > 5; the Step Law row of the data README), which this script uses unchanged; 4",
    "stable-labelled runs sit between 4 and 5 nats.",
)
"""Fixed text of the report: how the criterion's form and fitting method were chosen, and the label check."""


def threshold_ceiling(group: NDArray[np.int64], lr: NDArray[np.float64],
                      diverged: NDArray[np.bool_]) -> tuple[NDArray[np.bool_], int, int]:
    """In-sample ceiling of any rule "diverged when peak LR >= t_g", one threshold t_g per group.

    ``group``: a group label per run (the benchmark uses one per (N, D, batch size)); ``lr``: the
    peak LR of each run (any positive unit; only its order within a group matters); ``diverged``:
    the labels. Returns the calls of the thresholds that maximise the pooled F1 of the diverged
    class, the number of non-monotone runs (diverged, with a stable run of the same group at a
    strictly higher LR) and the number of groups holding one.

    Runs of a group at the same LR always get the same call, so repeated (group, LR) pairs with
    mixed labels cost an error whatever the threshold (they are not counted as non-monotone).
    The pooled F1 = 2 TP / (TP + FP + P), with P the diverged runs, is maximised exactly by
    Dinkelbach's iteration on that ratio, which splits over groups: at the best F1 so far,
    2 TP* / (TP* + FP* + P), each group takes the threshold maximising (FP* + P) TP_g - TP* FP_g
    (integers, so no rounding), until the F1 stops rising. The first step, with weights (1, 1),
    is the per-group least FP + FN. Ties go to the higher threshold (fewer runs called diverged).
    """
    n_pos = int(np.sum(diverged))
    groups = []  # per group: run indices, LR level of each run, TP and FP when levels j.. are called
    n_nonmonotone_runs = n_nonmonotone_groups = 0
    for g in np.unique(group):
        idx = np.flatnonzero(group == g)
        _, rank, pos, neg = level_counts(lr[idx], diverged[idx])
        tp = np.append(np.cumsum(pos[::-1])[::-1], 0)  # j = 0..m: runs at levels[j:] called diverged
        fp = np.append(np.cumsum(neg[::-1])[::-1], 0)
        bad = int(np.sum(pos[fp[1:] > 0]))  # diverged at level k with a stable run above k
        n_nonmonotone_runs += bad
        n_nonmonotone_groups += bad > 0
        groups.append((idx, rank, tp, fp))
    w_tp, w_fp = 1, 1
    best: tuple[int, int, list[int]] | None = None
    while True:
        # the highest threshold among the ties: the last maximiser over j = 0..m
        picks = [tp.size - 1 - int(np.argmax((w_tp * tp - w_fp * fp)[::-1])) for _, _, tp, fp in groups]
        tp_sum = sum(int(tp[j]) for (_, _, tp, _), j in zip(groups, picks, strict=True))
        fp_sum = sum(int(fp[j]) for (_, _, _, fp), j in zip(groups, picks, strict=True))
        if best is not None and tp_sum * (best[0] + best[1] + n_pos) <= best[0] * (tp_sum + fp_sum + n_pos):
            break  # F1 did not rise: the best so far is the maximum
        best = (tp_sum, fp_sum, picks)
        w_tp, w_fp = fp_sum + n_pos, tp_sum
    assert best is not None  # the first pass always sets it
    decision = np.zeros(diverged.size, dtype=bool)
    for (idx, rank, _, _), j in zip(groups, best[2], strict=True):
        decision[idx] = rank >= j
    return decision, n_nonmonotone_runs, n_nonmonotone_groups


def _logistic_boundary(log_lr: NDArray[np.float64], feats: NDArray[np.float64], diverged: NDArray[np.bool_],
                       *, ridge: float) -> tuple[float, NDArray[np.float64]]:
    """The boundary ``ln lr = ln eta_c + feats @ coefficients`` of a logistic regression on 0/1
    outcomes (both present), ridge penalty on standardised weights, Newton's method.

    ``log_lr``: ln(peak LR); ``feats``: the columns the boundary is linear in. Returns
    ``(ln eta_c, coefficients)``. For the in-sample reference "a separate logistic boundary per
    cell" of :func:`bench_criterion` only; the criterion itself is fitted by interval censoring
    (:mod:`optuna_optlaws.divergence._criterion`).
    """
    y = diverged.astype(np.float64)
    x = np.column_stack([log_lr, feats])
    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    sd[sd < 1e-12] = 1.0
    z = np.column_stack([np.ones(y.size), (x - mu) / sd])
    penalty = np.r_[0.0, np.full(x.shape[1], ridge)]

    def objective(w: NDArray[np.float64]) -> float:
        t = z @ w
        return float(np.sum(np.logaddexp(0.0, t) - y * t) + np.sum(penalty * w * w))

    # Newton's method (IRLS) with step halving: the objective is convex, a handful of steps
    w = np.zeros(z.shape[1])
    value = objective(w)
    for _ in range(100):
        p = 0.5 * (1.0 + np.tanh(0.5 * (z @ w)))
        grad = z.T @ (p - y) + 2.0 * penalty * w
        hess = (z * (p * (1.0 - p))[:, None]).T @ z + np.diag(2.0 * penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6:
            trial = objective(w - scale * step)
            if trial <= value:
                break
            scale *= 0.5
        w = w - scale * step
        done = value - trial < 1e-10 * max(1.0, abs(value))
        value = min(value, trial)
        if done:
            break
    # back to raw features: logit = b + c_lr ln(eta) + sum c_k f_k
    c = w[1:] / sd
    b = w[0] - float(np.sum(c * mu))
    if c[0] <= 0:
        raise ValueError("a higher peak LR does not make divergence more likely: no stability edge")
    s = 1.0 / c[0]
    return float(-b * s), -c[1:] * s


def boundary_offsets(group: NDArray[np.int64], lr: NDArray[np.float64], diverged: NDArray[np.bool_],
                     decision: NDArray[np.bool_]) -> dict[str, int]:
    """Where a rule's boundary falls in each group, in steps of the group's own LR grid.

    ``group``: a group label per run (the benchmark's: one per (N, D, batch size)); ``lr``: peak
    LR; ``diverged``: the labels; ``decision``: the rule's calls, which must be monotone in LR
    within a group (a threshold in LR, as the criterion's are). A group's boundary is the index
    of its lowest LR called (or labelled) diverged among its distinct LRs, the number of them
    when none is. Returns the number of groups placed exactly (every run right), one step low
    (too early: false alarms), one step high (too late: misses), further off, and, among the
    misses, those called stable at every LR of their grid while some run diverged.
    """
    out = {"groups": 0, "exact": 0, "one_step_low": 0, "one_step_high": 0, "further": 0,
           "missed_above_grid": 0}
    for g in np.unique(group):
        idx = np.flatnonzero(group == g)
        levels, rank, _, _ = level_counts(lr[idx], diverged[idx])
        true_j = int(rank[diverged[idx]].min()) if diverged[idx].any() else levels.size
        call_j = int(rank[decision[idx]].min()) if decision[idx].any() else levels.size
        if not np.array_equal(decision[idx], rank >= call_j):
            raise ValueError(f"group {g}: the calls are not a threshold in LR")
        off = call_j - true_j
        out["groups"] += 1
        out["exact" if off == 0 else "one_step_low" if off == -1 else "one_step_high" if off == 1 else "further"] += 1
        out["missed_above_grid"] += int(off > 0 and call_j == levels.size)
    return out


def _precision_recall(truth: NDArray[np.bool_], decision: NDArray[np.bool_]) -> tuple[float, float]:
    """Precision and recall of the diverged class (0 when nothing is called or nothing diverged)."""
    tp = float(np.sum(decision & truth))
    return tp / max(int(np.sum(decision)), 1), tp / max(int(np.sum(truth)), 1)


def bench_criterion(data: dict[str, NDArray[Any]]) -> dict[str, Any]:
    """Leave-one-cell-out F1 of the divergence criterion, and three in-sample references: the
    (cell, LR) majority, a separate logistic boundary per cell in (ln lr, ln B, ln^2 B), and the
    ceiling of a free LR threshold per (cell, batch size) (:func:`threshold_ceiling`)."""
    from optuna_optlaws.divergence.criterion import DivergenceCriterion, f1_score

    y = data["diverged"]
    decision = np.zeros(y.size, dtype=bool)
    per_cell = []
    for c in range(len(data["cell_keys"])):
        test = data["cell"] == c
        crit = DivergenceCriterion().fit(_table(data, ~test))
        decision[test] = crit.predict(_table(data, test))
        per_cell.append({"N": float(data["cell_keys"][c][0]), "D": float(data["cell_keys"][c][1]),
                         "n_runs": int(test.sum()), "n_diverged": int(y[test].sum()),
                         "tp": int(np.sum(decision[test] & y[test])), "fp": int(np.sum(decision[test] & ~y[test])),
                         "fn": int(np.sum(~decision[test] & y[test]))})
    majority = np.zeros(y.size, dtype=bool)
    for c in range(len(data["cell_keys"])):
        for lr in np.unique(data["lr"][data["cell"] == c]):
            m = (data["cell"] == c) & (data["lr"] == lr)
            majority[m] = 2 * y[m].sum() > m.sum()
    per_cell_2d = np.zeros(y.size, dtype=bool)
    for c in range(len(data["cell_keys"])):
        m = data["cell"] == c
        if y[m].any() and not y[m].all():
            log_b = np.log(data["bs"][m])
            lnc, coef = _logistic_boundary(np.log(data["lr"][m]), np.column_stack([log_b, log_b**2]), y[m],
                                           ridge=1e-4)
            per_cell_2d[m] = np.log(data["lr"][m]) >= lnc + np.column_stack([log_b, log_b**2]) @ coef
    _, cell_bs = np.unique(np.column_stack([data["cell"], data["bs"]]), axis=0, return_inverse=True)
    ceiling, n_nonmonotone, n_nonmonotone_groups = threshold_ceiling(cell_bs.ravel(), data["lr"], y)
    for c, row in enumerate(per_cell):
        m = data["cell"] == c
        row["ceiling_fp"], row["ceiling_fn"] = int(np.sum(ceiling[m] & ~y[m])), int(np.sum(~ceiling[m] & y[m]))
    full = DivergenceCriterion().fit(_table(data, np.ones(y.size, dtype=bool)))
    loo_precision, loo_recall = _precision_recall(y, decision)
    ceiling_precision, ceiling_recall = _precision_recall(y, ceiling)
    return {
        "n_runs": int(y.size), "n_diverged": int(y.sum()),
        "loo_f1": f1_score(y, decision),
        "loo_precision": loo_precision,
        "loo_recall": loo_recall,
        "loo_accuracy": float(np.mean(decision == y)),
        "ceiling_cell_lr_majority_f1_in_sample": f1_score(y, majority),
        "per_cell_boundary_f1_in_sample": f1_score(y, per_cell_2d),
        "ceiling_cell_bs_threshold_in_sample": {
            "f1": f1_score(y, ceiling), "precision": ceiling_precision, "recall": ceiling_recall,
            "n_groups": int(cell_bs.max()) + 1, "n_nonmonotone_runs": n_nonmonotone,
            "n_nonmonotone_groups": n_nonmonotone_groups},
        "held_out_boundaries": boundary_offsets(cell_bs.ravel(), data["lr"], y, decision),
        "target_f1": F1_TARGET, "target_met": bool(f1_score(y, decision) >= F1_TARGET),
        "fit_on_all": {"params": full.params, "formula": full.formula(), "train_f1": full.diagnostics["train_f1"]},
        "per_cell": per_cell,
    }


# --------------------------------------------------------------------------- 2. landscape


def _nearest(data: dict[str, NDArray[Any]], idx: NDArray[np.int64], lr: float, bs: float) -> int:
    d2 = (np.log(data["lr"][idx] / lr)) ** 2 + (np.log(data["bs"][idx] / bs)) ** 2
    return int(idx[int(np.argmin(d2))])


def _steplaw_published(shared: Path) -> tuple[float, float, float, float, float] | None:
    path = shared / "steplaw" / "1004_fitted_lr_bs_scaling_model_parameters.csv"
    if not path.exists():
        return None
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    cols = ("lr_intercept", "lr_coefN", "lr_coefD", "bs_intercept", "bs_coefD")
    med = [float(np.median([_float(r[c]) for r in rows])) for c in cols]
    return med[0], med[1], med[2], med[3], med[4]


WINDOWS: tuple[float, ...] = (0.01, 0.02, 0.03, 0.05, 0.1)
"""Candidate fit windows of :class:`LandscapeLaw` (relative excess over a cell's best run kept)."""
SENSITIVITY_WINDOWS: tuple[float | None, ...] = (*WINDOWS, None)
"""Fixed windows whose held-out gaps are reported too (None: every non-diverged run)."""
INNER_FOLDS = 4


def _law_choice(data: dict[str, Any], train_cells: NDArray[np.int64], c: int,
                window: float | None) -> tuple[int, int, tuple[float, float]]:
    """Fit the law (and the criterion) on ``train_cells``; the run of cell ``c`` it picks, the run
    nearest its optimum, and that optimum. Criterion fits are cached in ``data`` by training
    cells (they do not depend on the window), which changes no result, only the run time."""
    from optuna_optlaws.divergence.criterion import DivergenceCriterion
    from optuna_optlaws.divergence.landscape import LandscapeLaw

    y, div, cell = data["loss"], data["diverged"], data["cell"]
    in_train = np.isin(cell, train_cells)
    train = in_train & ~div
    n, d = (float(v) for v in data["cell_keys"][c])
    idx = np.flatnonzero(cell == c)
    law = LandscapeLaw(window=window).fit(data["lr"][train], data["bs"][train], data["N"][train],
                                          data["D"][train], y[train])
    excess = law.excess(data["lr"][idx], data["bs"][idx], n, d)
    if div[in_train].any() and (~div[in_train]).any():
        cache = data.setdefault("_criterion_cache", {})  # the criterion does not depend on the window
        key = tuple(sorted(int(k) for k in train_cells))
        if key not in cache:
            cache[key] = DivergenceCriterion().fit(_table(data, in_train))
        stable = ~cache[key].predict(_table(data, cell == c))
        excess = np.where(stable, excess, np.inf) if stable.any() else excess
    opt = law.optimum(n, d)
    return int(idx[int(np.argmin(excess))]), _nearest(data, idx, *opt), opt


def _gap(data: dict[str, NDArray[Any]], c: int, i: int) -> float:
    y, div, cell = data["loss"], data["diverged"], data["cell"]
    return math.inf if div[i] else float(y[i] / np.min(y[(cell == c) & ~div]) - 1.0)


def _select_window(data: dict[str, NDArray[Any]], train_cells: NDArray[np.int64]) -> float:
    """The window with the lowest mean gap in a grouped k-fold over ``train_cells`` only."""
    folds = [train_cells[k::INNER_FOLDS] for k in range(INNER_FOLDS)]
    scores = []
    for window in WINDOWS:
        gaps = []
        for fold in folds:
            rest = np.setdiff1d(train_cells, fold)
            for c in fold:
                gaps.append(_gap(data, int(c), _law_choice(data, rest, int(c), window)[0]))
        scores.append(float(np.mean(np.minimum(gaps, 1.0))))
    return WINDOWS[int(np.argmin(scores))]


def _summary(gaps: list[float]) -> dict[str, float]:
    g = np.asarray(gaps)
    return {"worst_gap": float(g.max()), "mean_gap": float(g.mean()) if np.all(np.isfinite(g)) else math.inf,
            "share_within_0.5pct": float(np.mean(g <= GAP_TARGET)), "n_cells": int(g.size)}


def bench_landscape(data: dict[str, NDArray[Any]], shared: Path | None, label: str) -> dict[str, Any]:
    """Leave-one-cell-out choice of (peak LR, batch size) by the landscape law and by baselines.

    The law's fit window is chosen for each held-out cell by a grouped k-fold over the other
    cells (nested, so the held-out cell never informs it); the gaps at every fixed window are
    reported as well.
    """
    from optuna_optlaws.divergence.landscape import LandscapeLaw

    published = _steplaw_published(shared) if shared is not None else None
    y, div, cell = data["loss"], data["diverged"], data["cell"]
    n_cells = len(data["cell_keys"])
    methods: dict[str, list[float]] = defaultdict(list)
    fixed: dict[str, list[float]] = defaultdict(list)
    rows = []
    prog = Progress(f"landscape ({label})", n_cells)
    for c in range(n_cells):
        n, d = (float(v) for v in data["cell_keys"][c])
        idx = np.flatnonzero(cell == c)
        train_cells = np.array([k for k in range(n_cells) if k != c], dtype=np.int64)
        window = _select_window(data, train_cells)
        pick, near, (lr_opt, bs_opt) = _law_choice(data, train_cells, c, window)
        chosen = {"law_argmin": pick, "law_nearest_optimum": near}
        for w in SENSITIVITY_WINDOWS:
            fixed[f"law_argmin_window_{w}"].append(_gap(data, c, _law_choice(data, train_cells, c, w)[0]))
        # the Step Law power-law form, refitted on the other cells' best runs (held out)
        bests = [int(np.flatnonzero((cell == k) & ~div)[np.argmin(y[(cell == k) & ~div])]) for k in train_cells]
        xn, xd = np.log(data["N"][bests]), np.log(data["D"][bests])
        a_lr = np.linalg.lstsq(np.column_stack([np.ones(len(bests)), xn, xd]), np.log(data["lr"][bests]), rcond=None)[0]
        a_bs = np.linalg.lstsq(np.column_stack([np.ones(len(bests)), xd]), np.log(data["bs"][bests]), rcond=None)[0]
        chosen["steplaw_form_refit"] = _nearest(data, idx, float(np.exp(a_lr @ [1, np.log(n), np.log(d)])),
                                                float(np.exp(a_bs @ [1, np.log(d)])))
        if published is not None and label == "dense":
            i0, cn, cd, b0, bd = published
            lr_sl = math.exp(i0 + cn * math.log(n) + cd * math.log(d))
            bs_sl = math.exp(b0 + bd * math.log(d)) / SEQ_LEN  # their batch size is in tokens
            chosen["steplaw_published_not_held_out"] = _nearest(data, idx, lr_sl, bs_sl)
        lrs, bss = np.unique(data["lr"][idx]), np.unique(data["bs"][idx])
        chosen["median_lr_median_bs"] = _nearest(data, idx, float(np.median(lrs)), float(np.median(bss)))
        row: dict[str, Any] = {"N": n, "D": d, "best_loss": float(np.min(y[(cell == c) & ~div])), "window": window,
                               "law_optimum": {"peak_lr": lr_opt, "batch_size": bs_opt}}
        for name, i in chosen.items():
            gap = _gap(data, c, i)
            methods[name].append(gap)
            row[name] = {"peak_lr": float(data["lr"][i]), "batch_size": float(data["bs"][i]),
                         "loss": float(y[i]) if np.isfinite(y[i]) else None, "gap": gap if math.isfinite(gap) else None}
        rows.append(row)
        prog.advance(note=f"N={n:.3g} D={d:.3g}")
    prog.close()
    full = LandscapeLaw().fit(data["lr"][~div], data["bs"][~div], data["N"][~div], data["D"][~div], y[~div])
    return {"summary": {name: _summary(g) for name, g in methods.items()},
            "fixed_window": {name: _summary(g) for name, g in fixed.items()},
            "per_cell": rows, "fit_on_all": {"window": full.window, "params": full.params, "formula": full.formula()}}


# --------------------------------------------------------------------------- 3. online detection


def _healthy_curves(shared: Path | None) -> dict[str, tuple[NDArray[np.int64], NDArray[np.float64]]]:
    from optuna_optlaws.curves import read_curves_csv

    out: dict[str, tuple[NDArray[np.int64], NDArray[np.float64]]] = {}
    mpl = read_curves_csv(str(importlib.resources.files("optuna_optlaws") / "data" / "mpl_luo2025.csv"))
    for c in (mpl.values() if isinstance(mpl, dict) else mpl):
        m = np.isfinite(c.losses)
        out[f"mpl/{c.run_id}"] = (c.steps[m], c.losses[m])
    tissue = shared / "tissue_course_100m" / "gpt_loss_lrs.csv" if shared is not None else None
    if tissue is not None and tissue.exists():
        per: dict[str, list[tuple[int, float]]] = defaultdict(list)
        with tissue.open(newline="") as handle:
            for r in csv.DictReader(handle):
                per[r["schedule"]].append((int(r["step"]), float(r["loss"])))
        for name, pts in per.items():
            arr = np.array(sorted(pts))
            out[f"tissue/{name}"] = (arr[:, 0].astype(np.int64), arr[:, 1])
    return out


def _graft(steps: NDArray[np.int64], y: NDArray[np.float64], onset: int, kind: str,
           rate: float) -> NDArray[np.float64]:
    """The curve with a divergence starting at index ``onset``: ``rate`` is per report."""
    t = np.clip(np.arange(y.size) - onset, 0, None).astype(np.float64)
    if kind == "exponential":  # loss blows up geometrically, then NaN once it passes 20 nats
        z = y * np.exp(rate * t)
        z[z > 20] = np.nan
        return z
    if kind == "linear":  # slow, steady climb
        return y * (1.0 + rate * t)
    if kind == "jump_then_nan":  # a step up by 40%, NaN some reports later
        z = np.where(t > 0, 1.4 * y, y)
        k = onset + max(round(1.0 / rate), 1)
        z[k:] = np.nan
        return z
    raise ValueError(kind)


def bench_detection(shared: Path | None) -> dict[str, Any]:
    """False alarms on real healthy curves, lead time on grafted divergences, cost per call."""
    from optuna_optlaws.divergence.online import detect_divergence

    curves = _healthy_curves(shared)
    alarms = {name: (sig.reason if (sig := detect_divergence(s, y)) else None) for name, (s, y) in curves.items()}
    cases = [("exponential", 0.02), ("exponential", 0.1), ("linear", 0.002), ("linear", 0.01), ("jump_then_nan", 0.05)]
    lead: dict[str, list[float]] = defaultdict(list)
    lead_reports: dict[str, list[float]] = defaultdict(list)
    delay: dict[str, list[float]] = defaultdict(list)
    missed: dict[str, int] = defaultdict(int)
    early: dict[str, int] = defaultdict(int)
    for _name, (s, y) in curves.items():
        every = max(1, s.size // 400)  # report at most ~400 times per curve, like a logging interval
        s2, y2 = s[::every], y[::every]
        for frac in (0.3, 0.5, 0.8):
            onset = int(frac * s2.size)
            for kind, rate in cases:
                key = f"{kind}@{rate:g}/report"
                z = _graft(s2, y2, onset, kind, rate)
                sig = detect_divergence(s2, z)
                running_min = np.fmin.accumulate(np.where(np.isfinite(z), z, np.inf))
                blown = ~np.isfinite(z) | (z >= 2.0 * running_min)
                blown[: onset + 1] = False
                if sig is None:
                    missed[key] += 1
                    continue
                i_det = int(np.searchsorted(s2, sig.step))
                if i_det <= onset:
                    early[key] += 1
                    continue
                delay[key].append(float(i_det - onset))
                if blown.any():
                    i_blow = int(np.argmax(blown))
                    lead[key].append(float(s2[i_blow] - s2[i_det]))
                    lead_reports[key].append(float(i_blow - i_det))
    s500, y500 = next(iter(v for v in curves.values() if v[0].size >= 500))
    s500, y500 = s500[:500], y500[:500]
    reps = 2000
    t0 = time.perf_counter()
    for _ in range(reps):
        detect_divergence(s500, y500)
    cost_ms = 1e3 * (time.perf_counter() - t0) / reps

    def stats(v: list[float]) -> dict[str, float] | None:
        return {"min": float(np.min(v)), "median": float(np.median(v)), "n": len(v)} if v else None

    return {
        "healthy_curves": len(curves), "false_alarms": {k: v for k, v in alarms.items() if v},
        "n_false_alarms": sum(1 for v in alarms.values() if v),
        "divergence_cases": {k: {"lead_steps": stats(lead[k]), "lead_reports": stats(lead_reports[k]),
                                 "delay_reports_after_onset": stats(delay[k]), "missed": missed[k],
                                 "alarm_before_onset": early[k]}
                             for k in sorted({f"{k}@{r:g}/report" for k, r in cases})},
        "ms_per_call_500_points": cost_ms,
    }


# --------------------------------------------------------------------------- report


def _fmt_pct(x: float) -> str:
    return "diverged" if not math.isfinite(x) else f"{100 * x:.3f}%"


def write_report(results: dict[str, Any], out: Path) -> None:
    """results.json and README.md under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    crit, land = results["criterion"], results["landscape_dense"]
    ceil = crit["ceiling_cell_bs_threshold_in_sample"]
    lines = [
        "# Divergence criterion, (peak LR, batch size) choice and online detection",
        "",
        f"Written by `{results['command']}` on {results['date']} ({results['seconds']:.0f} s). "
        "Do not edit by hand.",
        "",
        "## 1. Divergence criterion, Step Law dense runs, leave one (N, D) cell out",
        "",
        f"{crit['n_runs']} runs, {crit['n_diverged']} diverged (smooth loss > {DIVERGED_ABOVE:g} or NaN).",
        "",
        "| measure | value |", "|---|---|",
        f"| F1 (held-out cells, pooled) | {crit['loo_f1']:.3f} |",
        f"| precision / recall | {crit['loo_precision']:.3f} / {crit['loo_recall']:.3f} |",
        f"| accuracy | {crit['loo_accuracy']:.4f} |",
        "| reference: majority outcome of each (cell, peak LR), in-sample | "
        f"{crit['ceiling_cell_lr_majority_f1_in_sample']:.3f} |",
        "| reference: a separate logistic boundary per cell in (ln lr, ln B, ln^2 B), in-sample | "
        f"{crit['per_cell_boundary_f1_in_sample']:.3f} |",
        "| ceiling: any per-(cell, batch size) threshold in peak LR, in-sample | "
        f"{ceil['f1']:.3f} (P {ceil['precision']:.3f} / R {ceil['recall']:.3f}) |",
        "",
        "Runs whose label contradicts monotonicity in peak LR (diverged, with a stable run of the same (N, D, B) "
        f"group at a higher peak LR): {ceil['n_nonmonotone_runs']}, in {ceil['n_nonmonotone_groups']} of the "
        f"{ceil['n_groups']} groups.",
        "",
        "Held-out boundaries of the {groups} (N, D, B) groups, in steps of the group's LR grid (x1.41): "
        "{exact} exact, {one_step_low} one step low (false alarms), {one_step_high} one step high (misses; "
        "{missed_above_grid} of them called stable at every LR of their grid), {further} further off."
        .format(**crit["held_out_boundaries"]),
        "",
        f"Target F1 >= {crit['target_f1']:g} (issue 4; the seed paper reports 0.92): "
        f"**{'met' if crit['target_met'] else 'not met'}** ({crit['loo_f1']:.3f}).",
        "",
        f"Fitted on all runs: `{crit['fit_on_all']['formula']}`",
        "",
        *CRITERION_NOTES,
        "",
        "Per held-out cell:", "", "| N | D | runs | diverged | TP | FP | FN |", "|---|---|---|---|---|---|---|",
        *(f"| {r['N']:.3g} | {r['D']:.3g} | {r['n_runs']} | {r['n_diverged']} | {r['tp']} | {r['fp']} | {r['fn']} |"
          for r in crit["per_cell"]),
        "",
        "## 2. Choosing (peak LR, batch size) for a held-out (N, D) cell",
        "",
        "Gap = smooth loss of the chosen run configuration / the cell's best - 1. `law_argmin`: the cell's",
        "run configuration with the lowest predicted loss among those the criterion calls stable, the law's",
        "fit window chosen by a grouped 4-fold over the training cells only; `law_argmin_window_W`: the same",
        "at a fixed window W (sensitivity, not a held-out choice); `law_nearest_optimum`: the run nearest the",
        "law's continuous optimum. Baselines: the Step Law power-law form refitted on the training cells'",
        "best runs; the Step Law paper's own fit (median of its bootstrap fits; fitted on *all* cells, so",
        "not held out); the cell's median peak LR and median batch size.",
        "",
    ]
    for key, title in (("landscape_dense", "dense"), ("landscape_moe", "MoE (N = active parameters)")):
        if key not in results:
            continue
        lines += [f"### {title}", "", "| method | worst gap | mean gap | cells within 0.5% |", "|---|---|---|---|"]
        for table in ("summary", "fixed_window"):
            for name, s in results[key][table].items():
                lines.append(f"| {name} | {_fmt_pct(s['worst_gap'])} | {_fmt_pct(s['mean_gap'])} | "
                             f"{s['share_within_0.5pct'] * s['n_cells']:.0f}/{s['n_cells']} |")
        lines.append("")
    lines += ["Per cell (dense), law_argmin:", "", "| N | D | best | window | chosen lr | chosen bs | gap |",
              "|---|---|---|---|---|---|---|"]
    for r in land["per_cell"]:
        c = r["law_argmin"]
        lines.append(f"| {r['N']:.3g} | {r['D']:.3g} | {r['best_loss']:.4f} | {r['window']} | {c['peak_lr']:.3g} | "
                     f"{c['batch_size']:.0f} | {_fmt_pct(c['gap'] if c['gap'] is not None else math.inf)} |")
    lines += ["", f"Landscape law fitted on all dense runs: `{land['fit_on_all']['formula']}`", ""]
    det = results["detection"]
    lines += ["## 3. Online detection", "",
              f"False alarms on {det['healthy_curves']} real healthy curves (vendored MPL, and per-step tissue 100M "
              f"when ../shared is present): {det['n_false_alarms']}.", "",
              f"Cost: {det['ms_per_call_500_points']:.3f} ms per call on a 500-point prefix.", "",
              "Synthetic divergences grafted onto those curves (subsampled to <= ~400 reports, onset at 30/50/80%). "
              "Lead = steps (reports) from detection to the first NaN or loss >= 2x its running minimum.", "",
              "| case | lead steps min / median | lead reports min / median | delay after onset (reports, median) "
              "| missed | alarm before onset |", "|---|---|---|---|---|---|"]
    for k, v in det["divergence_cases"].items():
        ls, lr_, dl = v["lead_steps"], v["lead_reports"], v["delay_reports_after_onset"]
        lines.append(f"| {k} | {ls['min']:.0f} / {ls['median']:.0f} |" if ls else f"| {k} | never blows up |")
        lines[-1] += (f" {lr_['min']:.0f} / {lr_['median']:.0f} |" if lr_ else " - |")
        lines[-1] += (f" {dl['median']:.0f} |" if dl else " - |") + f" {v['missed']} | {v['alarm_before_onset']} |"
    (out / "README.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--data", default="../shared/data", help="folder holding steplaw/ (default: ../shared/data)")
    parser.add_argument("--out", default="studies/divergence", help="where README.md and results.json go")
    parser.add_argument("--no-moe", action="store_true", help="skip the MoE table")
    args = parser.parse_args(argv)
    shared = Path(args.data)
    dense_path = shared / "steplaw" / "dense_lr_bs_loss.csv"
    if not dense_path.exists():
        print(f"benchmarks.divergence: error: {dense_path} not found (pass --data)", file=sys.stderr)
        return 2
    start = time.time()
    argv_text = " ".join(sys.argv[1:]) if argv is None else " ".join(argv)
    results: dict[str, Any] = {"command": f"python -m optuna_optlaws.benchmarks.divergence {argv_text}".strip(),
                               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    dense = load_steplaw(dense_path)
    print("criterion ...", file=sys.stderr)
    results["criterion"] = bench_criterion(dense)
    print(f"  F1 (leave one cell out) = {results['criterion']['loo_f1']:.3f}", file=sys.stderr)
    results["landscape_dense"] = bench_landscape(dense, shared, "dense")
    for name, s in results["landscape_dense"]["summary"].items():
        print(f"  dense {name}: worst {_fmt_pct(s['worst_gap'])} mean {_fmt_pct(s['mean_gap'])} "
              f"within 0.5%: {s['share_within_0.5pct']:.2f}", file=sys.stderr)
    moe_path = shared / "steplaw" / "moe_lr_bs_loss.csv"
    if not args.no_moe and moe_path.exists():
        moe = load_steplaw(moe_path, size_column="Na")
        results["landscape_moe"] = bench_landscape(moe, None, "moe")
        for name, s in results["landscape_moe"]["summary"].items():
            print(f"  moe {name}: worst {_fmt_pct(s['worst_gap'])} mean {_fmt_pct(s['mean_gap'])}", file=sys.stderr)
    results["detection"] = bench_detection(shared)
    print(f"  detection: {results['detection']['n_false_alarms']} false alarms on "
          f"{results['detection']['healthy_curves']} curves", file=sys.stderr)
    results["seconds"] = time.time() - start
    write_report(results, Path(args.out))
    print((Path(args.out) / "README.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
