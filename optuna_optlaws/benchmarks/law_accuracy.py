"""How well each law predicts held-out loss curves: the accuracy benchmark.

Every law (``optlaw``, ``multipower``, ``momentum``) is fitted on the same curves and
scored on the same held-out curves:

* MPL (vendored ``mpl_luo2025.csv``), each model size: fit on ``cosine_24000``,
  ``constant_24000``, ``wsdcon_9``; predict the six other schedules.
* Cross-size: fit on all nine schedules at 25M and 100M, predict all nine at 400M.
* ``tissue_course_100m`` (read from ``../shared/data``, never vendored; skipped when
  absent): fit on cosine, predict WSD and 8-1-1, on block means of the noisy per-step loss.
* Timing: fit on the 27 MPL curves; ``predict_final`` of 1,000 random candidate
  schedules of 100,000 steps each.

Scores: mean per-step relative error (%), worst and mean final-step absolute error
(nats), Spearman rank correlation of predicted vs observed final losses, and the share of
held-out observed points inside the central 90% interval (coverage).

Run it as ``optlaws bench laws`` or ``python -m optuna_optlaws.benchmarks.law_accuracy``.
It writes ``README.md``, ``results.json`` and PNG figures to its output folder
(``studies/law_accuracy`` by default). It is not part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from optuna_optlaws._errors import InputError
from optuna_optlaws._progress import Progress
from optuna_optlaws.curves import Curve, read_curves_csv
from optuna_optlaws.laws import LAW_MODULES, Law, law_class
from optuna_optlaws.schedules import Schedule

LAWS = tuple(LAW_MODULES)
"""The laws compared, in table order."""

SIZES = {"25M": 25e6, "100M": 100e6, "400M": 400e6}
"""MPL model sizes (parameters) by run-id prefix."""

MPL_TRAIN = ("cosine_24000", "constant_24000", "wsdcon_9")
"""Schedules the MPL split fits on (Luo et al. 2025's own split)."""

MPL_SCHEDULES = (
    "cosine_24000",
    "constant_24000",
    "wsdcon_9",
    "cosine_72000",
    "constant_72000",
    "wsd_20000_24000",
    "wsdld_20000_24000",
    "wsdcon_3",
    "wsdcon_18",
)
"""All nine MPL schedules (the first three are the training split)."""

TISSUE_FILE = Path("tissue_course_100m") / "gpt_loss_lrs.csv"
TISSUE_BLOCK = 100
"""Steps averaged into one tissue observation (the per-step loss is noisy)."""
TISSUE_KNOT_EVERY = 50
"""The tissue lr column (one value per step) is kept as knots every this many steps (plus
both sides of every jump); the deviation this causes is reported."""
TISSUE_MIN_STEP = 1000
"""Tissue observations start here (skips the first, fast-falling 1,000 steps)."""

TARGETS: dict[str, float] = {
    "final_err": 0.005,
    "rel_err_pct": 0.05,
    "spearman": 1.0,
    "cross_size_err": 0.02,
    "fit_s": 10.0,
    "candidates_s": 1.0,
}
"""The optlaw targets of the issue (nats, %, seconds)."""
COVERAGE_TARGET = (0.80, 0.98)
"""The accepted range of the 90% interval's coverage."""


@dataclass
class Evaluation:
    """One law on one split: status, fit time, per-run scores, and curves to plot."""

    law: str
    status: str = "ok"
    fit_seconds: float = math.nan
    runs: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)
    plots: dict[str, tuple[NDArray[np.float64], ...]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "law": self.law,
            "status": self.status,
            "fit_seconds": _num(self.fit_seconds),
            "summary": {k: _num(v) for k, v in self.summary.items()},
            "runs": self.runs,
        }


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


# ---------------------------------------------------------------------- data
def mpl_curves() -> dict[str, Curve]:
    """The vendored MPL curves by run id (``400M_cosine_24000`` ...)."""
    path = Path(str(resources.files("optuna_optlaws") / "data" / "mpl_luo2025.csv"))
    return {c.run_id: c for c in read_curves_csv(path)}


def _block_means(curve: Curve, block: int, min_step: int) -> Curve:
    """The curve with its loss averaged over consecutive blocks of ``block`` steps, each
    mean placed at its block's last step (so the final point is the final step)."""
    keep = (curve.steps >= min_step) & curve.finite
    steps, losses = curve.steps[keep], curve.losses[keep]
    n = steps.size // block
    start = steps.size - n * block  # drop the remainder at the start, keep the end exact
    steps_b = steps[start:].reshape(n, block)[:, -1]
    losses_b = losses[start:].reshape(n, block).mean(axis=1)
    return replace(curve, steps=steps_b, losses=losses_b)


def _thin_knots(schedule: Schedule, every: int) -> tuple[Schedule, float]:
    """A knot schedule logged at every step, kept at every ``every``-th step, at every
    kink or jump (a change of slope above 1e-4 of the peak LR per step), and at its last
    step; and the largest LR deviation that causes over all steps (relative to the peak)."""
    steps = np.asarray(schedule.params["steps"], dtype=np.float64)
    lrs = np.asarray(schedule.params["lrs"], dtype=np.float64)
    kink = np.flatnonzero(np.abs(np.diff(lrs, n=2)) > 1e-4 * schedule.peak_lr) + 1
    keep = np.zeros(steps.size, dtype=bool)
    keep[::every] = True
    keep[-1] = True
    keep[kink] = True
    thin = Schedule.from_knots(steps[keep], lrs[keep])
    grid = np.arange(schedule.total_steps, dtype=np.float64)
    dev = float(np.max(np.abs(thin.lr_at(grid) - schedule.lr_at(grid))) / max(schedule.peak_lr, 1e-300))
    return thin, dev


def tissue_curves(shared_data: Path) -> tuple[dict[str, Curve], float] | None:
    """The three tissue_course_100m runs, block-averaged, with thinned knots, by short
    name (``cosine``, ``wsd``, ``8-1-1``; run ids ``tissue_<name>``), and the largest LR
    deviation (relative to peak) the thinning causes; None when the file is absent."""
    path = shared_data / TISSUE_FILE
    if not path.exists():
        return None
    out: dict[str, Curve] = {}
    worst = 0.0
    for c in read_curves_csv(path):
        name = "8-1-1" if "811" in c.run_id else ("wsd" if "wsd" in c.run_id else "cosine")
        thin, dev = _thin_knots(c.schedule, TISSUE_KNOT_EVERY)
        worst = max(worst, dev)
        out[name] = replace(_block_means(c, TISSUE_BLOCK, TISSUE_MIN_STEP), run_id=f"tissue_{name}", schedule=thin)
    return out, worst


def candidate_schedules(n: int, total_steps: int, seed: int = 0) -> list[Schedule]:
    """``n`` random schedules of ``total_steps`` steps from every family (the sampler's
    kind of candidates): log-uniform peak LR in [1e-4, 1e-3], warmup up to 5%, final LR
    up to 10% of peak."""
    rng = np.random.default_rng(seed)
    out: list[Schedule] = []
    shapes = ("linear", "exp", "1-sqrt", "cosine")
    for i in range(n):
        peak = float(10 ** rng.uniform(-4, -3))
        warm = int(rng.integers(0, total_steps // 20))
        final = float(peak * rng.uniform(0.001, 0.1))
        kind = i % 5
        if kind == 0:
            out.append(Schedule.cosine(peak, total_steps, warm, final))
        elif kind == 1:
            out.append(Schedule.linear(peak, total_steps, warm, final))
        elif kind == 2:
            frac = float(rng.uniform(0.05, 0.5))
            out.append(Schedule.wsd(peak, total_steps, warm, final, frac, shapes[int(rng.integers(4))]))
        elif kind == 3:
            out.append(Schedule.step(peak, total_steps, warm))
        else:
            out.append(Schedule.constant(peak, total_steps, warm))
    return out


# ---------------------------------------------------------------------- scoring
def _spearman(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    from scipy.stats import spearmanr

    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b)[0])


def evaluate(law_name: str, train: Sequence[Curve], test: Sequence[Curve], *, seed: int = 0) -> Evaluation:
    """Fit ``law_name`` on ``train`` and score its predictions of ``test``."""
    ev = Evaluation(law_name)
    try:
        klass = law_class(law_name)
    except ImportError as exc:
        ev.status = f"unavailable ({exc})"
        return ev
    sizes = {c.model_size for c in train}
    if not klass.uses_model_size and any(c.model_size not in sizes for c in test):
        ev.status = "cannot extrapolate N"
        return ev
    law: Law = klass()
    start = time.perf_counter()
    try:
        law.fit(list(train), seed=seed)
    except InputError as exc:
        ev.status = f"fit refused: {exc}"
        return ev
    ev.fit_seconds = time.perf_counter() - start
    rel_all: list[NDArray[np.float64]] = []
    inside_all: list[NDArray[np.bool_]] = []
    finals_obs, finals_pred = [], []
    for c in test:
        try:
            p = law.predict_curve(c)
        except InputError as exc:
            ev.status = f"cannot predict {c.run_id}: {exc}"
            return ev
        obs = c.losses
        ok = np.isfinite(obs) & np.isfinite(p.mean)
        rel_all.append(np.abs(p.mean[ok] - obs[ok]) / obs[ok])
        inside_all.append((obs[ok] >= p.lo[ok]) & (obs[ok] <= p.hi[ok]))
        last = int(np.flatnonzero(np.isfinite(obs))[-1])
        finals_obs.append(float(obs[last]))
        finals_pred.append(float(p.mean[last]))
        ev.runs.append(
            {
                "run_id": c.run_id,
                "final_step": int(c.steps[last]),
                "observed_final": float(obs[last]),
                "pred_final": _num(float(p.mean[last])),
                "pred_lo": _num(float(p.lo[last])),
                "pred_hi": _num(float(p.hi[last])),
                "final_error": _num(float(p.mean[last] - obs[last])),
                "rel_err_pct": _num(float(100 * np.mean(rel_all[-1]))) if rel_all[-1].size else None,
                "coverage": _num(float(np.mean(inside_all[-1]))) if inside_all[-1].size else None,
            }
        )
        ev.plots[c.run_id] = (c.steps.astype(np.float64), obs, p.mean, p.lo, p.hi)
    rel = np.concatenate(rel_all) if rel_all else np.zeros(0)
    inside = np.concatenate(inside_all) if inside_all else np.zeros(0, dtype=bool)
    err = np.abs(np.asarray(finals_pred) - np.asarray(finals_obs))
    ev.summary = {
        "rel_err_pct": float(100 * rel.mean()) if rel.size else math.nan,
        "worst_final_err": float(np.max(err)) if err.size else math.nan,
        "mean_final_err": float(np.mean(err)) if err.size else math.nan,
        "spearman": _spearman(np.asarray(finals_pred), np.asarray(finals_obs)),
        "coverage": float(inside.mean()) if inside.size else math.nan,
        "points": float(rel.size),
    }
    return ev


def time_candidates(law_name: str, curves: Sequence[Curve], n: int, total_steps: int) -> dict[str, Any]:
    """Fit ``law_name`` on ``curves`` (timed), then time ``predict_final`` of ``n`` fresh
    candidate schedules of ``total_steps`` steps at the largest model size.

    A law without a model-size term is fitted on the curves of the largest size only
    (``fit_curves`` says how many)."""
    out: dict[str, Any] = {"law": law_name, "candidates": n, "candidate_steps": total_steps}
    try:
        klass = law_class(law_name)
    except ImportError as exc:
        out["status"] = f"unavailable ({exc})"
        return out
    size = max(c.model_size or 0.0 for c in curves) or None
    if not klass.uses_model_size:
        curves = [c for c in curves if c.model_size == size]
    out["fit_curves"] = len(curves)
    law = klass()
    start = time.perf_counter()
    try:
        law.fit(list(curves), seed=0)
    except InputError as exc:
        out["status"] = f"fit refused: {exc}"
        return out
    out["fit_seconds"] = time.perf_counter() - start
    tokens = next((c.tokens_per_step for c in curves if c.model_size == size), None)
    law.predict_final(candidate_schedules(4, total_steps, seed=1), model_size=size, tokens_per_step=tokens)
    cands = candidate_schedules(n, total_steps, seed=2)
    start = time.perf_counter()
    pred = law.predict_final(cands, model_size=size, tokens_per_step=tokens)
    out["predict_seconds"] = time.perf_counter() - start
    out["finite_predictions"] = int(np.sum(np.isfinite(pred.mean)))
    out["status"] = "ok"
    return out


# ---------------------------------------------------------------------- the benchmark
def run(
    out_dir: str | Path = "studies/law_accuracy",
    *,
    laws: Sequence[str] = LAWS,
    sizes: Sequence[str] = tuple(SIZES),
    shared_data: str | Path = "../shared/data",
    candidates: int = 1000,
    candidate_steps: int = 100_000,
    cross_size: bool = True,
    timing: bool = True,
    plots: bool = True,
    command: str = "",
) -> dict[str, Any]:
    """Run the benchmark, write README.md, results.json and figures to ``out_dir``, and
    return the results dict."""
    for name in laws:
        if name not in LAW_MODULES:
            raise InputError(f"--laws: unknown law {name!r}; known laws: {', '.join(LAW_MODULES)}")
    for s in sizes:
        if s not in SIZES:
            raise InputError(f"--sizes: unknown MPL size {s!r}; known: {', '.join(SIZES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    mpl = mpl_curves()
    tissue_read = tissue_curves(Path(shared_data))
    tissue = None if tissue_read is None else tissue_read[0]
    steps_total = len(sizes) * len(laws) + (len(laws) if cross_size else 0) + (len(laws) if timing else 0)
    steps_total += len(laws) if tissue is not None else 0
    progress = Progress("optlaws bench laws", steps_total)
    results: dict[str, Any] = {"mpl": {}, "cross_size": {}, "tissue": {}, "timing": {}}
    figures: dict[str, dict[str, Evaluation]] = {}

    for size in sizes:
        train = [mpl[f"{size}_{s}"] for s in MPL_TRAIN]
        test = [mpl[f"{size}_{s}"] for s in MPL_SCHEDULES if s not in MPL_TRAIN]
        figures[f"mpl_{size}"] = {}
        for name in laws:
            ev = evaluate(name, train, test)
            figures[f"mpl_{size}"][name] = ev
            results["mpl"].setdefault(size, {})[name] = ev.to_json()
            progress.advance(1, note=f"MPL {size} {name}")

    if cross_size:
        train = [mpl[f"{s}_{k}"] for s in ("25M", "100M") for k in MPL_SCHEDULES]
        test = [mpl[f"400M_{k}"] for k in MPL_SCHEDULES]
        figures["cross_size_400M"] = {}
        for name in laws:
            ev = evaluate(name, train, test)
            figures["cross_size_400M"][name] = ev
            results["cross_size"][name] = ev.to_json()
            progress.advance(1, note=f"cross-size {name}")

    if tissue is not None:
        figures["tissue_100m"] = {}
        for name in laws:
            ev = evaluate(name, [tissue["cosine"]], [tissue["wsd"], tissue["8-1-1"]])
            figures["tissue_100m"][name] = ev
            results["tissue"][name] = ev.to_json()
            progress.advance(1, note=f"tissue {name}")
        results["tissue_lr_deviation"] = tissue_read[1] if tissue_read else None
    else:
        results["tissue"] = {"skipped": f"{Path(shared_data) / TISSUE_FILE} not found"}

    if timing:
        all27 = [mpl[f"{s}_{k}"] for s in SIZES for k in MPL_SCHEDULES]
        for name in laws:
            results["timing"][name] = time_candidates(name, all27, candidates, candidate_steps)
            progress.advance(1, note=f"timing {name}")
    progress.close()

    results["meta"] = _machine_info(command, time.perf_counter() - began, shared_data)
    results["targets"] = targets_table(results)
    pngs = _plot_all(figures, out) if plots else []
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "README.md").write_text(render_readme(results, pngs))
    return results


# ---------------------------------------------------------------------- targets
def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def targets_table(results: dict[str, Any]) -> list[dict[str, str]]:
    """The issue's targets for ``optlaw``: target, measured value, MET / NOT MET."""
    rows: list[dict[str, str]] = []

    def add(target: str, measured: str, met: bool | None) -> None:
        status = "n/a" if met is None else ("MET" if met else "NOT MET")
        rows.append({"target": target, "measured": measured, "status": status})

    mpl = {size: r.get("optlaw") for size, r in results["mpl"].items()}
    ok = {s: r for s, r in mpl.items() if r and r["status"] == "ok"}
    if ok:
        errs = {s: r["summary"]["worst_final_err"] for s, r in ok.items()}
        rels = {s: r["summary"]["rel_err_pct"] for s, r in ok.items()}
        rhos = {s: r["summary"]["spearman"] for s, r in ok.items()}
        covs = {s: r["summary"]["coverage"] for s, r in ok.items()}
        every = len(ok) == len(mpl)

        def per(d: dict[str, Any], digits: int = 4, scale: float = 1.0) -> str:
            return ", ".join(f"{s}: {_fmt(None if v is None else v * scale, digits)}" for s, v in d.items())

        add("held-out final error <= 0.005 nats at every size (worst per size)", per(errs),
            every and all(v is not None and v <= TARGETS["final_err"] for v in errs.values()))
        add("mean per-step rel. error <= 0.05%", per(rels, 3),
            every and all(v is not None and v <= TARGETS["rel_err_pct"] for v in rels.values()))
        add("Spearman rank correlation of held-out finals = 1.0", per(rhos, 3),
            every and all(v is not None and v >= TARGETS["spearman"] - 1e-12 for v in rhos.values()))
        lo, hi = COVERAGE_TARGET
        add("90%-interval coverage in [80%, 98%]", per(covs, 1, 100.0) + " (%)",
            every and all(v is not None and lo <= v <= hi for v in covs.values()))
    else:
        add("MPL held-out targets", "optlaw not evaluated", None)
    cs = results["cross_size"].get("optlaw")
    cs_target = "cross-size (25M+100M -> 400M) worst final error <= 0.02 nats"
    if cs and cs["status"] == "ok":
        v = cs["summary"]["worst_final_err"]
        add(cs_target, _fmt(v), v is not None and v <= TARGETS["cross_size_err"])
    else:
        add(cs_target, cs["status"] if cs else "not run", None if not cs else False)
    tm = results["timing"].get("optlaw")
    if tm and tm.get("status") == "ok":
        fit_s = tm["fit_seconds"]
        add(f"fit on {tm['fit_curves']} MPL curves < 10 s", f"{fit_s:.2f} s", fit_s < TARGETS["fit_s"])
        add(f"predict_final of {tm['candidates']:,} x {tm['candidate_steps']:,}-step candidates < 1 s",
            f"{tm['predict_seconds']:.3f} s", tm["predict_seconds"] < TARGETS["candidates_s"])
    else:
        add("timing targets", tm.get("status", "not run") if tm else "not run", None)
    return rows


# ---------------------------------------------------------------------- report
def _machine_info(command: str, seconds: float, shared_data: str | Path) -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "optuna_optlaws"],
            capture_output=True, text=True, check=False, timeout=10,
        ).stdout.strip()
        if commit and dirty:
            commit += " (with uncommitted changes under optuna_optlaws/)"
    except (OSError, subprocess.SubprocessError):
        commit = ""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import scipy

    return {
        "command": command,
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": commit,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "benchmark_seconds": round(seconds, 1),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "shared_data": str(shared_data),
    }


def _summary_rows(evals: dict[str, Any]) -> list[str]:
    lines = []
    for name, r in evals.items():
        if r["status"] != "ok":
            lines.append(f"| {name} | {r['status']} | | | | | | |")
            continue
        s = r["summary"]
        cov = s["coverage"]
        lines.append(
            f"| {name} | {_fmt(s['rel_err_pct'], 3)} | {_fmt(s['worst_final_err'])} | {_fmt(s['mean_final_err'])} "
            f"| {_fmt(s['spearman'], 3)} | {_fmt(None if cov is None else 100 * cov, 1)} | {int(s['points'])} "
            f"| {_fmt(r['fit_seconds'], 2)} |"
        )
    return lines


SUMMARY_HEAD = [
    "| law | mean per-step rel. err (%) | worst final err (nats) | mean final err (nats) | Spearman (finals) "
    "| 90% coverage (%) | points | fit (s) |",
    "|---|---|---|---|---|---|---|---|",
]


def _per_run_table(evals: dict[str, Any]) -> list[str]:
    ok = [n for n, r in evals.items() if r["status"] == "ok"]
    if not ok:
        return []
    runs = [r["run_id"] for r in evals[ok[0]]["runs"]]
    head = "| run | observed final | " + " | ".join(f"{n} pred (err)" for n in ok) + " |"
    lines = [head, "|---|---|" + "---|" * len(ok)]
    for i, run_id in enumerate(runs):
        cells = []
        for n in ok:
            rr = evals[n]["runs"][i]
            err = rr["final_error"]
            cells.append(f"{_fmt(rr['pred_final'])} ({'n/a' if err is None else f'{err:+.4f}'})")
        lines.append(f"| {run_id} | {evals[ok[0]]['runs'][i]['observed_final']:.4f} | " + " | ".join(cells) + " |")
    return lines


def render_readme(results: dict[str, Any], pngs: Sequence[str]) -> str:
    """The markdown report of a results dict (as written to README.md)."""
    m = results["meta"]
    lines = [
        "# Law accuracy benchmark",
        "",
        "Written by `optuna_optlaws/benchmarks/law_accuracy.py`; do not edit by hand.",
        "",
        f"- command: `{m['command']}`",
        f"- date: {m['date_utc']}, git commit {m['git_commit'] or 'unknown'}",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['platform']}",
        f"- python {m['python']}, numpy {m['numpy']}, scipy {m['scipy']}; whole benchmark {m['benchmark_seconds']} s;",
        f"  1-minute load average at the end {m['load_average_1min_at_end']} (timings are wall-clock seconds",
        "  under that load)",
        "",
        "Final error = predicted - observed loss at the run's last observed step (nats). Relative error is",
        "|pred - obs| / obs over every held-out observed point. Coverage is the share of held-out observed",
        "points inside the law's central 90% interval. Spearman compares predicted and observed final losses",
        "of the held-out runs.",
        "",
        "## Targets (optlaw)",
        "",
        "| target | measured | status |",
        "|---|---|---|",
    ]
    lines += [f"| {t['target']} | {t['measured']} | {t['status']} |" for t in results["targets"]]
    if results["mpl"]:
        lines += ["", "## MPL (Luo et al. 2025), held-out schedules", "",
                  f"Fit on {', '.join(MPL_TRAIN)} at each size; predict the six other schedules.", ""]
        for size, evals in results["mpl"].items():
            lines += [f"### {size}", "", *SUMMARY_HEAD, *_summary_rows(evals), "", *_per_run_table(evals), ""]
            if f"mpl_{size}.png" in pngs:
                lines += [f"![observed vs predicted, {size}](mpl_{size}.png)", ""]
    if results["cross_size"]:
        lines += ["## Cross-size: fit 25M + 100M (all nine schedules), predict 400M (all nine)", "",
                  "Laws without a model-size term cannot predict an unseen N and are reported as such.", "",
                  *SUMMARY_HEAD, *_summary_rows(results["cross_size"]), "", *_per_run_table(results["cross_size"]), ""]
        if "cross_size_400M.png" in pngs:
            lines += ["![cross-size, 400M](cross_size_400M.png)", ""]
    lines += ["## tissue_course_100m: fit cosine, predict WSD and 8-1-1", ""]
    if "skipped" in results["tissue"]:
        lines += [f"Skipped: {results['tissue']['skipped']}.", ""]
    else:
        lines += [
            f"Per-step training loss is noisy: each observation is the mean loss of {TISSUE_BLOCK} consecutive steps",
            f"(placed at the block's last step), from step {TISSUE_MIN_STEP}; the lr column has no warmup. Errors and",
            "coverage are measured against these block means. The per-step lr column is kept as knots every",
            f"{TISSUE_KNOT_EVERY} steps plus every kink and jump (largest LR deviation from the logged column:",
            f"{100 * (results.get('tissue_lr_deviation') or 0.0):.4f}% of peak). Spearman over two runs is +-1.",
            "",
            *SUMMARY_HEAD,
            *_summary_rows(results["tissue"]),
            "",
            *_per_run_table(results["tissue"]),
            "",
        ]
        if "tissue_100m.png" in pngs:
            lines += ["![tissue 100M](tissue_100m.png)", ""]
    if results["timing"]:
        lines += ["## Timing", "",
                  f"On this machine ({m['cores']} cores, shared). Fit: all 27 MPL curves (3 sizes x 9 schedules)",
                  "at once; a law without a model-size term on the nine 400M curves only. Candidates:",
                  "`predict_final` of fresh random schedules (cosine, linear, WSD, step, constant) at 400M.",
                  "", "| law | curves fitted | fit (s) | candidates | steps each | predict_final (s) | finite |",
                  "|---|---|---|---|---|---|---|"]
        for name, t in results["timing"].items():
            if t.get("status") != "ok":
                lines.append(f"| {name} | {t.get('status')} | | | | | |")
                continue
            lines.append(f"| {name} | {t['fit_curves']} | {t['fit_seconds']:.2f} | {t['candidates']:,} "
                         f"| {t['candidate_steps']:,} | {t['predict_seconds']:.3f} | {t['finite_predictions']} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _plot_all(figures: dict[str, dict[str, Evaluation]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"optlaw": "tab:red", "multipower": "tab:blue", "momentum": "tab:green"}
    written = []
    for name, evals in figures.items():
        ok = {n: e for n, e in evals.items() if e.status == "ok"}
        if not ok:
            continue
        run_ids = list(next(iter(ok.values())).plots)
        ncol = 3 if len(run_ids) > 2 else len(run_ids)
        nrow = math.ceil(len(run_ids) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(5 * ncol, 3.6 * nrow), squeeze=False)
        for ax, run_id in zip(axes.ravel(), run_ids, strict=False):
            steps, obs = next(iter(ok.values())).plots[run_id][:2]
            ax.plot(steps, obs, color="black", lw=1.2, label="observed")
            for law_name, ev in ok.items():
                _, _, mean, lo, hi = ev.plots[run_id]
                col = colors.get(law_name)
                ax.plot(steps, mean, color=col, lw=1.0, label=law_name)
                ax.fill_between(steps, lo, hi, color=col, alpha=0.15, lw=0)
            tail = obs[np.isfinite(obs)]
            top = float(np.quantile(tail, 0.6)) if tail.size else 1.0
            means = np.concatenate([tail, *(ev.plots[run_id][2] for ev in ok.values())])
            bottom = float(np.min(means[np.isfinite(means)])) if means.size else 0.0
            ax.set_ylim(bottom - 0.05 * (top - bottom) - 0.01, top)
            ax.set_title(run_id, fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel("loss (nats)")
        for ax in axes.ravel()[len(run_ids):]:
            ax.axis("off")
        axes.ravel()[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=80)
        plt.close(fig)
        written.append(f"{name}.png")
    return written


# ---------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared by ``optlaws bench laws`` and ``python -m``)."""
    parser.add_argument("--out", default="studies/law_accuracy", help="output folder (default: studies/law_accuracy)")
    parser.add_argument("--laws", default=",".join(LAWS), help=f"comma-separated laws (default: {','.join(LAWS)})")
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated MPL sizes (default: 25M,100M,400M)")
    parser.add_argument("--shared-data", default="../shared/data", help="folder holding tissue_course_100m/")
    parser.add_argument("--candidates", type=int, default=1000, help="candidate schedules timed (default: 1000)")
    parser.add_argument("--candidate-steps", type=int, default=100_000, help="steps per candidate (default: 100000)")
    parser.add_argument("--no-cross-size", action="store_true", help="skip the 25M+100M -> 400M split")
    parser.add_argument("--no-timing", action="store_true", help="skip the timing section")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG figures")


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def command_line(prefix: str, args: argparse.Namespace) -> str:
    """The command that reruns the benchmark with these options (all of them spelt out)."""
    parts = [prefix, "--out", str(args.out), "--laws", args.laws, "--sizes", args.sizes,
             "--shared-data", str(args.shared_data), "--candidates", str(args.candidates),
             "--candidate-steps", str(args.candidate_steps)]
    flags = ("no-cross-size", "no-timing", "no-plots")
    parts += [f"--{flag}" for flag in flags if getattr(args, flag.replace("-", "_"))]
    return " ".join(parts)


def main_from_args(args: argparse.Namespace, prefix: str) -> int:
    """Run the benchmark from parsed options (``prefix``: how it was invoked, e.g.
    ``optlaws bench laws``) and print the targets table."""
    command = command_line(prefix, args)
    if args.candidates < 1 or args.candidate_steps < 2:
        raise InputError("--candidates must be >= 1 and --candidate-steps >= 2")
    results = run(
        args.out,
        laws=_split(args.laws),
        sizes=_split(args.sizes),
        shared_data=args.shared_data,
        candidates=args.candidates,
        candidate_steps=args.candidate_steps,
        cross_size=not args.no_cross_size,
        timing=not args.no_timing,
        plots=not args.no_plots,
        command=command,
    )
    for t in results["targets"]:
        print(f"{t['status']:>8}  {t['target']}: {t['measured']}")
    print(f"wrote {Path(args.out) / 'README.md'} and results.json ({results['meta']['benchmark_seconds']} s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m optuna_optlaws.benchmarks.law_accuracy``."""
    parser = argparse.ArgumentParser(prog="python -m optuna_optlaws.benchmarks.law_accuracy", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return main_from_args(args, "python -m optuna_optlaws.benchmarks.law_accuracy")
    except InputError as exc:
        print(f"law_accuracy: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
