"""Continual pre-training and fine-tuning benchmark: can a law fitted on a few continued
runs pick the best of the others?

``python -m optuna_optlaws.benchmarks.transfer`` reads the real tiny-LM curves of
``studies/continual/curves.csv`` and ``studies/finetune/curves.csv`` (written by
``examples/tiny_lm/continual.py`` and ``finetune.py``). In each setting the candidates
are the runs that resume from the parent run (``resume_from``); runs trained from random
weights (``scratch_*``) are neither fitted nor ranked. Grouping: every 3-run subset of the
candidates (``--group-size``) is a training set and the other candidates are held out; when
there are more subsets than ``--groups``, that many distinct subsets are drawn with a
seeded generator. The headline scores are repeated with larger training sets
(``--more-sizes``, default 5 and 8 runs): how much a few more fitted runs buy.
For each group every method predicts the held-out runs' final losses (the loss at each
run's last row of the curves file, nats) and is scored on:

* Top-2 / Top-1 hit: the truly best held-out run is among the method's two lowest (its
  lowest) predictions; predictions that tie are ordered at random, so a tie counts the
  expected hit (issue target: Top-2 >= 94%, the seed paper's figure);
* Spearman of predicted vs observed final losses over the held-out runs (mean over groups);
* mean absolute error of the predicted final loss (nats) over all held-out predictions.

Seed noise. One run's final loss varies by about 0.01-0.02 nats between seeds
(``studies/tiny_lm/noise.md``), comparable to the gaps between the best candidates, so
part of the target is out of any law's reach. The report gives the *noise ceiling*: the
Top-2 hit rate of an oracle that ranks by each run's expected final loss (taken to be
the observed one) when each observed final carries independent Gaussian seed noise of
``NOISE_SIGMAS`` (Monte Carlo, seeded), and how many groups have their best and
second-best held-out runs within those gaps. Where the setting's ``runs.json`` holds each
candidate's held-out curve under other training seeds (``other_seeds``, written by
``finetune.py``), every method is also scored against the *mean over seeds* of the last
loss: the best schedule by its expected final loss rather than by one seed's draw, fitted
on the curves file (one seed per run, as a user would have them) and, again, on the
training runs' curves averaged over the seeds.

Methods: ``optlaw+parent``, the Opt-Law fitted on the parent's curve and the 3 training
runs, each continued run starting from the parent's mode state; ``optlaw+lineage``, the
same but the parent's losses are not fitted, only its schedule (the state the continued
runs start from; the parent's losses are on another corpus). Both give continued runs
the law's data-shift term (an excess at the resume that decays in the LR area since the
resume, :mod:`optuna_optlaws.laws._optlaw_lineage`; with the parent's losses fitted, also
a constant offset of the new corpus's floor); ``optlaw+prior``, ``optlaw+parent`` with a
transfer prior (:class:`~optuna_optlaws.laws.optlaw.OptLaw`'s ``prior=``): the Opt-Law
fitted on ``--prior-curves`` (default the tiny LM's pretraining sweep on another corpus,
the runs at the parent's model size and horizon) holds every parameter but the loss
floors near its value, with standard deviation ``--prior-sd`` (``--other-prior-sds`` are
scored too, at the headline group size); ``multipower`` and
``momentum``, which have no parent state, fitted on the 3 training runs' own curves, each
counted from its own step 0; ``nearest-peak``, a trivial baseline that predicts the mean
final loss of the training runs with the nearest peak LR (log scale).
Only predicted means are ranked, so the Opt-Law is fitted without its leave-one-curve-out
interval refits (``loco=False``: the same fitted parameters, less time).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from optuna_optlaws._errors import InputError
from optuna_optlaws._progress import Progress
from optuna_optlaws._repeats import repeat_noise
from optuna_optlaws.benchmarks.law_accuracy import _machine_info, _spearman
from optuna_optlaws.curves import Curve, read_curves_csv
from optuna_optlaws.laws import Law, make_law
from optuna_optlaws.laws.optlaw import PRIOR_SD, OptLaw

FloatArray = NDArray[np.float64]

SETTINGS = {
    "continual": "studies/continual",
    "finetune": "studies/finetune",
}
"""Setting name -> folder holding its ``curves.csv`` (and where its results are written)."""

METHODS = ("optlaw+parent", "optlaw+prior", "optlaw+lineage", "multipower", "momentum", "nearest-peak")
PRIOR_CURVES = "studies/curves/tiny_lm_curves.csv"
"""Default source of ``optlaw+prior``'s transfer prior: the tiny LM's pretraining sweep on
another corpus (``examples/tiny_lm/generate_curves.py``)."""
TOP2_TARGET = 0.94
"""Top-2 hit rate of the seed paper (issue 4)."""
NOISE_SIGMAS = (0.01, 0.02)
"""Seed noise of a tiny-LM run's final loss (nats, ``studies/tiny_lm/noise.md``) for the noise ceiling."""
_CEILING_DRAWS = 4000


# ---------------------------------------------------------------------- grouping
@dataclass(frozen=True)
class Setting:
    """One setting's curves: the parent run, its continued runs (candidates), and the
    runs trained from scratch (excluded)."""

    name: str
    path: Path
    parent: Curve
    candidates: list[Curve]
    excluded: list[str]
    seed_losses: dict[str, FloatArray] | None = None
    """Candidate run_id -> its held-out losses (nats) at its curve's steps under each
    training seed, one row per seed (the curves file's own first), when ``runs.json`` beside
    the curves file holds another seed's curve (``other_seeds``) for every candidate."""

    prior: Law | None = None
    """The transfer prior of ``optlaw+prior`` (:func:`prior_law`), when that method runs."""
    prior_runs: tuple[str, ...] = ()
    """The runs it was fitted on."""

    def seed_finals(self) -> dict[str, list[float]] | None:
        """Candidate run_id -> its last finite held-out loss under each seed (nats)."""
        if self.seed_losses is None:
            return None
        return {rid: [_last_finite(row) for row in rows] for rid, rows in self.seed_losses.items()}

    def seed_mean(self) -> FloatArray | None:
        """Each candidate's last loss averaged over seeds (nats), in candidate order."""
        finals = self.seed_finals()
        if finals is None:
            return None
        return np.array([float(np.mean(finals[c.run_id])) for c in self.candidates])

    def seed_noise(self) -> float | None:
        """The seed standard deviation of the last loss (nats), pooled over candidates
        (:func:`~optuna_optlaws._repeats.repeat_noise`: with as many seeds per candidate,
        the root mean square of each candidate's)."""
        finals = self.seed_finals()
        if finals is None:
            return None
        noise = repeat_noise((f"{rid}@{i}", rid, v) for rid, values in finals.items() for i, v in enumerate(values))
        return noise.sd if noise.df else None

    def seed_count(self) -> int:
        """Seeds per candidate in :attr:`seed_losses` (the fewest; 0 without them)."""
        return min((rows.shape[0] for rows in self.seed_losses.values()), default=0) if self.seed_losses else 0

    def seed_mean_noise(self) -> float | None:
        """Standard deviation (nats) left in a mean over :meth:`seed_count` seeds."""
        noise = self.seed_noise()
        return None if noise is None else noise / math.sqrt(self.seed_count())

    def seed_mean_curves(self) -> dict[str, Curve] | None:
        """Candidate run_id -> its curve with the held-out losses averaged over the seeds."""
        if self.seed_losses is None:
            return None
        return {c.run_id: replace(c, losses=self.seed_losses[c.run_id].mean(axis=0)) for c in self.candidates}


def _last_finite(losses: FloatArray) -> float:
    """The last finite value of ``losses`` (a run's final loss, as :attr:`Curve.final_loss`)."""
    fin = losses[np.isfinite(losses)]
    return float(fin[-1]) if fin.size else math.nan


def load_setting(name: str, path: str | Path) -> Setting:
    """Read ``path`` (a curves file) and split it into parent, candidates and excluded
    runs; InputError unless every continued run resumes from the same parent."""
    curves = read_curves_csv(path)
    by_id = {c.run_id: c for c in curves}
    parents = {c.resume_from for c in curves if c.resume_from is not None}
    if len(parents) != 1:
        raise InputError(f"{path}: needs continued runs that all resume from one parent, found {sorted(parents)}")
    parent_id = parents.pop()
    assert parent_id is not None
    if parent_id not in by_id:
        raise InputError(f"{path}: the continued runs resume from {parent_id!r}, which is not in the file")
    cands = [c for c in curves if c.resume_from == parent_id and np.any(c.finite)]
    excluded = [c.run_id for c in curves if c.run_id != parent_id and c.resume_from is None]
    records = read_runs_json(Path(path).with_name("runs.json"))
    return Setting(name, Path(path), by_id[parent_id], cands, excluded, seed_losses(records, cands))


def prior_law(path: str | Path, parent: Curve) -> tuple[OptLaw, list[str]]:
    """The Opt-Law fitted on the runs of ``path`` trained from scratch at the parent's model
    size, tokens per step and horizon (the sweep a user would have run at that size before
    continuing or fine-tuning), and their ids; InputError when there are none."""
    runs = [
        c for c in read_curves_csv(path)
        if c.resume_from is None and np.any(c.finite) and c.model_size == parent.model_size
        and c.tokens_per_step == parent.tokens_per_step and c.schedule.total_steps == parent.schedule.total_steps
    ]
    if not runs:
        raise InputError(f"{path}: no run from scratch with the parent's model size, tokens per step and "
                         f"{parent.schedule.total_steps} steps, to fit the transfer prior on")
    return OptLaw(loco=False).fit(runs), [c.run_id for c in runs]


def read_runs_json(path: Path) -> dict[str, Any]:
    """The run records of ``path`` (``{}`` when there is no such file); InputError when it
    is not readable JSON."""
    if not path.is_file():
        return {}
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not readable JSON ({exc})") from None
    return records if isinstance(records, dict) else {}


def seed_losses(records: dict[str, Any], cands: Sequence[Curve]) -> dict[str, FloatArray] | None:
    """``run_id -> (seeds, points)`` held-out losses of each candidate: its own curve's, then
    those of ``records[run_id]["other_seeds"]`` (``{seed: losses at the curve's steps}``);
    ``None`` when any candidate has no other seed or one of another length."""
    out: dict[str, FloatArray] = {}
    for c in cands:
        rec = records.get(c.run_id)
        other = rec.get("other_seeds") if isinstance(rec, dict) else None
        rows = list(other.values()) if isinstance(other, dict) else []
        if not rows or any(not isinstance(x, list) or len(x) != c.losses.size for x in rows):
            return None
        out[c.run_id] = np.vstack([c.losses, np.asarray(rows, dtype=np.float64)])
    return out


def training_groups(n: int, size: int, limit: int, seed: int = 0) -> list[tuple[int, ...]]:
    """Training subsets (indices into ``n`` candidates) of ``size`` runs: all of them when
    there are at most ``limit``, else ``limit`` distinct ones drawn with ``seed``."""
    every = list(itertools.combinations(range(n), size))
    if len(every) <= limit:
        return every
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(every), size=limit, replace=False)
    return [every[i] for i in sorted(pick.tolist())]


# ---------------------------------------------------------------------- methods
def _own_start(c: Curve) -> Curve:
    """The run counted from its own step 0, without a parent (for laws with no parent state)."""
    return replace(c, resume_from=None, resume_step=None)


def _at_last(c: Curve) -> Curve:
    """The run with only its last observed point (the final loss to predict)."""
    return replace(c, steps=c.steps[-1:], losses=c.losses[-1:])


def predict_finals(method: str, parent: Curve, train: Sequence[Curve], test: Sequence[Curve],
                   prior: Law | None = None, prior_sd: float = PRIOR_SD) -> FloatArray:
    """Predicted final loss (nats) of every run of ``test`` by ``method`` fitted on
    ``train`` (and the parent, for the Opt-Law; ``optlaw+prior`` with the transfer prior
    ``prior`` at standard deviation ``prior_sd``)."""
    if method == "nearest-peak":
        peaks = np.log([c.schedule.peak_lr for c in train])
        finals = np.array([c.final_loss for c in train])
        out = []
        for c in test:
            d = np.abs(peaks - math.log(c.schedule.peak_lr))
            out.append(float(finals[d <= d.min() + 1e-9].mean()))
        return np.asarray(out)
    law: Law
    if method.startswith("optlaw"):
        if method == "optlaw+prior" and prior is None:
            raise InputError("optlaw+prior needs a transfer prior law")
        law = OptLaw(loco=False, prior=prior if method == "optlaw+prior" else None, prior_sd=prior_sd)
        root = parent
        if method == "optlaw+lineage":
            root = replace(parent, steps=np.zeros(0, dtype=np.int64), losses=np.zeros(0))
        law.fit([root, *train])
        return np.array([law.predict_curve(_at_last(c)).mean[-1] for c in test])
    law = make_law(method)
    law.fit([_own_start(c) for c in train])
    return np.array([law.predict_curve(_at_last(_own_start(c))).mean[-1] for c in test])


def top_k_hit(pred: FloatArray, true: FloatArray, k: int) -> float:
    """Expected indicator that the truly best run is among the ``k`` lowest predictions,
    ties in ``pred`` ordered at random (a non-finite prediction ranks last)."""
    p = np.where(np.isfinite(pred), pred, np.inf)
    best = int(np.argmin(true))
    others = np.delete(p, best)
    below = int(np.sum(others < p[best]))
    tied = int(np.sum(others == p[best]))
    return float(np.clip((k - below) / (tied + 1), 0.0, 1.0))


def top_k_regret(pred: FloatArray, true: FloatArray, k: int) -> float:
    """Final loss (nats) of the best run among the ``k`` lowest predictions minus the best
    final loss: what training only the method's top ``k`` would have lost (0 on a hit;
    ties in ``pred`` broken by order, a non-finite prediction ranks last)."""
    p = np.where(np.isfinite(pred), pred, np.inf)
    picked = np.argsort(p, kind="stable")[:k]
    return float(np.min(true[picked]) - np.min(true))


def noise_ceiling(true: FloatArray, sigma: float, k: int, rng: np.random.Generator,
                  draws: int = _CEILING_DRAWS) -> float:
    """Top-k hit rate of an oracle that ranks by the expected final losses ``true`` when
    the observed finals are ``true`` plus independent Gaussian noise of ``sigma`` (nats):
    how often the observed best is among the ``k`` runs expected to be best."""
    true = np.asarray(true, dtype=np.float64)
    picked = np.argsort(true, kind="stable")[:k]
    observed = true[None, :] + sigma * rng.standard_normal((draws, true.size))
    return float(np.mean(np.isin(np.argmin(observed, axis=1), picked)))


@dataclass
class Score:
    """Scores of one method over the groups of one setting."""

    top2: list[float] = field(default_factory=list)
    top1: list[float] = field(default_factory=list)
    regret2: list[float] = field(default_factory=list)
    spearman: list[float] = field(default_factory=list)
    abs_err: list[float] = field(default_factory=list)
    seconds: float = 0.0
    failed: list[str] = field(default_factory=list)

    def add(self, pred: FloatArray, true: FloatArray) -> None:
        """Score one group's predictions ``pred`` against the held-out finals ``true`` (nats)."""
        self.top2.append(top_k_hit(pred, true, 2))
        self.top1.append(top_k_hit(pred, true, 1))
        self.regret2.append(top_k_regret(pred, true, 2))
        self.spearman.append(_spearman(pred, true))
        self.abs_err.extend(np.abs(pred - true).tolist())

    def summary(self) -> dict[str, Any]:
        """Means over groups (hit rates, Spearman) and over held-out predictions (error)."""
        def mean(x: list[float]) -> float | None:
            vals = [v for v in x if math.isfinite(v)]
            return float(np.mean(vals)) if vals else None

        return {
            "groups": len(self.top2),
            "top2_hit_rate": mean(self.top2),
            "top1_hit_rate": mean(self.top1),
            "top2_regret_mean_nats": mean(self.regret2),
            "top2_regret_max_nats": max(self.regret2) if self.regret2 else None,
            "spearman_mean": mean(self.spearman),
            "mean_abs_error_nats": mean(self.abs_err),
            "seconds": round(self.seconds, 1),
            "failed_groups": self.failed,
        }


def run_setting(setting: Setting, methods: Sequence[str], groups: Sequence[tuple[int, ...]],
                progress: Progress, prior_sd: float = PRIOR_SD) -> dict[str, Any]:
    """Score every method on every training group of ``setting`` (``optlaw+prior`` with its
    transfer prior at ``prior_sd``)."""
    cands = setting.candidates
    true_all = np.array([c.final_loss for c in cands])
    mean_all = setting.seed_mean()
    scores = {m: Score() for m in methods}
    vs_mean = {m: Score() for m in methods}
    fit_mean = {m: Score() for m in methods}
    mean_curves = setting.seed_mean_curves()
    rows = []
    rng = np.random.default_rng(0)
    ceiling: dict[int, dict[str, list[float]]] = {k: {f"{sg:g}": [] for sg in NOISE_SIGMAS} for k in (2, 1)}
    gaps = []
    mean_noise = setting.seed_mean_noise()
    rng_mean = np.random.default_rng(1)  # its own stream: the single-seed ceilings stay as they were
    ceiling_mean: list[float] = []
    for g in groups:
        train = [cands[i] for i in g]
        held = [i for i in range(len(cands)) if i not in g]
        test = [cands[i] for i in held]
        true = true_all[held]
        row: dict[str, Any] = {"train": [c.run_id for c in train], "best": test[int(np.argmin(true))].run_id}
        for sg in NOISE_SIGMAS:
            for k in (2, 1):
                ceiling[k][f"{sg:g}"].append(noise_ceiling(true, sg, k, rng))
        ordered = np.sort(true)
        gaps.append(float(ordered[1] - ordered[0]))
        if mean_all is not None and mean_noise is not None:
            ceiling_mean.append(noise_ceiling(mean_all[held], mean_noise, 2, rng_mean))
        for m in methods:
            began = time.perf_counter()
            try:
                pred = predict_finals(m, setting.parent, train, test, setting.prior, prior_sd)
            except (InputError, FloatingPointError, np.linalg.LinAlgError) as exc:
                scores[m].failed.append(f"{'+'.join(row['train'])}: {exc}")
                scores[m].seconds += time.perf_counter() - began
                continue
            s = scores[m]
            s.seconds += time.perf_counter() - began
            s.add(pred, true)
            if mean_all is not None:
                vs_mean[m].add(pred, mean_all[held])
            if mean_curves is not None and mean_all is not None:
                began = time.perf_counter()
                try:
                    pred_avg = predict_finals(m, setting.parent, [mean_curves[c.run_id] for c in train], test,
                                              setting.prior, prior_sd)
                except (InputError, FloatingPointError, np.linalg.LinAlgError) as exc:
                    fit_mean[m].failed.append(f"{'+'.join(row['train'])}: {exc}")
                else:
                    fit_mean[m].add(pred_avg, mean_all[held])
                    row[f"{m}@seed-mean"] = {c.run_id: float(v) for c, v in zip(test, pred_avg, strict=True)}
                fit_mean[m].seconds += time.perf_counter() - began
            row[m] = {
                "top2": s.top2[-1],
                "picked": [test[i].run_id for i in np.argsort(pred, kind="stable")[:2]],
                "pred": {c.run_id: float(v) for c, v in zip(test, pred, strict=True)},
            }
        rows.append(row)
        progress.advance(1, setting.name)
    return {
        "curves": str(setting.path / "curves.csv") if setting.path.is_dir() else str(setting.path),
        "parent": setting.parent.run_id,
        "candidates": {c.run_id: c.final_loss for c in cands},
        "excluded": setting.excluded,
        "groups": len(groups),
        "group_size": len(groups[0]) if groups else 0,
        "methods": {m: scores[m].summary() for m in methods},
        **({} if mean_all is None else {
            "seed_mean_truth": {
                "finals": {c.run_id: float(v) for c, v in zip(cands, mean_all, strict=True)},
                "seeds": setting.seed_count(),
                "seed_sd_rms_nats": setting.seed_noise(),
                "noise_ceiling_top2": float(np.mean(ceiling_mean)) if ceiling_mean else None,
                "methods": {m: vs_mean[m].summary() for m in methods},
                **({} if mean_curves is None else {
                    "fitted_on_seed_mean_curves": {m: fit_mean[m].summary() for m in methods}}),
            }}),
        **{f"noise_ceiling_top{k}": {sg: float(np.mean(v)) for sg, v in ceiling[k].items()} for k in (2, 1)},
        "best_second_gaps": gaps,
        "per_group": rows,
    }


# ---------------------------------------------------------------------- report
def _fmt(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _mean_table(methods: dict[str, dict[str, Any]]) -> list[str]:
    """A table scored against the mean over seeds: one row per method's summary."""
    return [
        f"| method | Top-2 hit rate (target >= {TOP2_TARGET:.0%}) | Top-1 hit rate | Spearman (mean) "
        "| Top-2 regret mean / worst (nats) | mean abs error of final loss (nats) |",
        "|---|---|---|---|---|---|",
        *(f"| {m} | {_score_cells(sm)} |" for m, sm in methods.items()),
    ]


def _score_cells(s: dict[str, Any]) -> str:
    """A method's summary (:meth:`Score.summary`) as the table cells from Top-2 hit rate
    (with whether it meets the target) to mean absolute error."""
    top2 = s["top2_hit_rate"]
    met = "" if top2 is None else (" (met)" if top2 >= TOP2_TARGET else " (not met)")
    return (
        f"{_fmt(top2)}{met} | {_fmt(s['top1_hit_rate'])} | {_fmt(s['spearman_mean'])} "
        f"| {_fmt(s.get('top2_regret_mean_nats'), 4)} / {_fmt(s.get('top2_regret_max_nats'), 4)} "
        f"| {_fmt(s['mean_abs_error_nats'], 4)}"
    )


def _size_table(by_size: dict[str, dict[str, dict[str, Any]]], n: int, skipped: Sequence[int] = ()) -> list[str]:
    """The table "With more fitted runs": each method's headline scores per training-group
    size (:func:`size_summary`); empty with a single size. ``skipped``: sizes left out
    because they hold out fewer than :data:`MIN_HELD_OUT` runs."""
    note = (f" Not scored: k = {', '.join(map(str, skipped))}, which would hold out fewer than "
            f"{MIN_HELD_OUT} runs (a Top-2 of two is always a hit)." if skipped else "")
    if len(by_size) < 2:
        return ["", "## With more fitted runs", "", note.strip()] if note else []
    lines = [
        "",
        "## With more fitted runs",
        "",
        "The same scoring with training groups of other sizes (same seed and number of groups; each "
        f"group fits on k of the {n} candidates and ranks the other {n} - k). Top-2 against the curves "
        "file's finals / against the mean over seeds (fitted on one seed) / the same fitted on the "
        "seed-mean curves; regret: mean Top-2 regret against the mean over seeds (nats). Fewer held-out "
        "runs make a hit easier by chance alone: a random ranking hits with probability 2 / (n - k)." + note,
        "",
        "| method | runs fitted (k) | groups | Top-2 | Top-2 vs seed mean | Top-2 vs seed mean, fitted on it "
        "| Top-2 regret vs seed mean (nats) | Top-2 of a random ranking |",
        "|---|---|---|---|---|---|---|---|",
    ]
    methods = next(iter(by_size.values()))
    for m in methods:
        for k in sorted(by_size, key=int):
            r = by_size[k].get(m)
            if r is None:
                continue
            lines.append(
                f"| {m} | {k} | {r['groups']} | {_fmt(r['top2'])} | {_fmt(r.get('top2_vs_seed_mean'))} "
                f"| {_fmt(r.get('top2_fitted_on_seed_mean'))} | {_fmt(r.get('regret2_vs_seed_mean'), 4)} "
                f"| {2 / (n - int(k)):.3f} |"
            )
    return lines


def _prior_lines(res: dict[str, Any]) -> list[str]:
    """The report's line on ``optlaw+prior``'s transfer prior (none without it)."""
    prior = res.get("prior")
    if not prior:
        return []
    return [
        f"- `optlaw+prior`: `optlaw+parent` with a transfer prior: the Opt-Law fitted on the runs "
        f"{', '.join(prior['runs'])} of `{prior['curves']}` (trained from scratch at the parent's model size and "
        "horizon: the same model and optimiser on another corpus, as a pretraining sweep would be) draws every "
        "parameter but the loss floor and the continued runs' floor offset towards its value, with standard "
        f"deviation {prior['sd']:g} in the parameters' internal coordinates (about {prior['sd']:.0%} on a "
        "positive parameter); the fit has the prior's terms and reference LR"
    ]


def _prior_sd_table(prior: dict[str, Any] | None, k: int) -> list[str]:
    """The table "The transfer prior's sd" (none with a single sd)."""
    if not prior or len(prior["by_sd"]) < 2:
        return []
    lines = [
        "",
        "## The transfer prior's sd",
        "",
        f"`optlaw+prior` with other prior standard deviations (the same {k}-run groups). A smaller sd holds the "
        "fit closer to the prior law; the headline uses the package's default, `OptLaw`'s `prior_sd`.",
        "",
        "| prior sd | Top-2 | Top-2 vs seed mean | Top-2 vs seed mean, fitted on it | Top-2 regret vs seed mean "
        "(nats) | mean abs error of final loss (nats) |",
        "|---|---|---|---|---|---|",
    ]
    for sd, r in sorted(prior["by_sd"].items(), key=lambda kv: float(kv[0])):
        lines.append(
            f"| {sd} | {_fmt(r['top2'])} | {_fmt(r.get('top2_vs_seed_mean'))} "
            f"| {_fmt(r.get('top2_fitted_on_seed_mean'))} "
            f"| {_fmt(r.get('regret2_vs_seed_mean'), 4)} | {_fmt(r['mean_abs_error_nats'], 4)} |"
        )
    return lines


def render(name: str, res: dict[str, Any], meta: dict[str, Any], all_subsets: int) -> str:
    """The Markdown report of one setting."""
    n = len(res["candidates"])
    grouping = (f"all {res['groups']} subsets" if res["groups"] == all_subsets
                else f"{res['groups']} of the {all_subsets} subsets, drawn with seed {meta['seed']}")
    lines = [
        f"# {name}: ranking held-out continued runs with a law fitted on a few (generated)",
        "",
        "Written by `optuna_optlaws/benchmarks/transfer.py`; do not edit by hand.",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date_utc']}, git commit {meta['git_commit'] or 'unknown'}",
        f"- machine: {meta['cpu']}, {meta['cores']} cores, {meta['platform']}; "
        f"benchmark {meta['benchmark_seconds']} s in all (1-minute load average at the end "
        f"{meta['load_average_1min_at_end']})",
        f"- curves: `{res['curves']}`; parent `{res['parent']}`; {n} candidates (the runs that resume from it); "
        f"excluded (trained from scratch, neither fitted nor ranked): {', '.join(res['excluded']) or 'none'}",
        f"- grouping: each group fits on {res['group_size']} candidates and ranks the other "
        f"{n - res['group_size']} by predicted final loss; {grouping}",
        "- truth: each run's loss at its last row of the curves file (nats); Top-k hit: the truly best "
        "held-out run is among the k lowest predictions (ties ordered at random: expected hit); Top-2 regret: "
        "the best final loss among the method's two lowest predictions minus the best held-out final loss",
        "- `optlaw+parent`: Opt-Law fitted on the parent's curve and the training runs, continued runs "
        "start from the parent's state; `optlaw+lineage`: the same without fitting the parent's losses "
        "(its schedule only); both with the data-shift term of continued runs (an excess at the resume "
        "decaying in the LR area since the resume); `multipower`, `momentum`: no parent state, fitted on "
        "the training runs' own curves from their own step 0; `nearest-peak`: mean final loss of the "
        "training runs with the nearest peak LR",
        *_prior_lines(res),
        "",
        f"| method | groups | Top-2 hit rate (target >= {TOP2_TARGET:.0%}) | Top-1 hit rate | Spearman (mean) "
        "| Top-2 regret mean / worst (nats) | mean abs error of final loss (nats) | seconds | failed groups |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m, s in res["methods"].items():
        lines.append(f"| {m} | {s['groups']} | {_score_cells(s)} | {s['seconds']} | {len(s['failed_groups'])} |")
    gaps = np.asarray(res.get("best_second_gaps", []))
    if gaps.size and res.get("noise_ceiling_top2"):
        ceil, ceil1 = res["noise_ceiling_top2"], res.get("noise_ceiling_top1", {})
        lines += [
            "",
            "Seed noise (`studies/tiny_lm/noise.md`: 0.01-0.02 nats on one run's final loss) limits any ranking: "
            "an oracle that ranks by each run's expected final loss (taken to be the observed one), scored "
            "against finals that carry independent seed noise of sigma, reaches "
            + ", ".join(f"Top-2 {v:.3f} (Top-1 {_fmt(ceil1.get(sg))}) at sigma = {sg} nats" for sg, v in ceil.items())
            + ". The best and second-best held-out runs are within "
            + ", ".join(f"{sg} nats in {int(np.sum(gaps <= float(sg)))}" for sg in ceil)
            + f" of the {gaps.size} groups (median gap {float(np.median(gaps)):.4f} nats).",
        ]
    by_mean = res.get("seed_mean_truth")
    if by_mean:
        lines += [
            "",
            f"## Against the mean over {by_mean['seeds']} training seeds",
            "",
            f"Each candidate was also trained with {by_mean['seeds'] - 1} more seeds (batch order; "
            "`runs.json`, `other_seeds`). Truth here: its last held-out loss averaged over the seeds, "
            "the schedule's expected final loss up to the noise left in a mean "
            f"(seed sd {_fmt(by_mean['seed_sd_rms_nats'], 4)} nats, root mean square over candidates). "
            "The laws are fitted on the curves file as above (one seed per run). "
            f"Noise ceiling at the noise left in the mean: Top-2 {_fmt(by_mean.get('noise_ceiling_top2'))}.",
            "",
            *_mean_table(by_mean["methods"]),
        ]
        fitted = by_mean.get("fitted_on_seed_mean_curves")
        if fitted:
            lines += [
                "",
                "The same truth, with every method fitted on its training runs' curves averaged over the seeds "
                "(the laws see each schedule's expected curve, not one seed's draw; the held-out runs are "
                "still predicted from their schedules alone):",
                "",
                *_mean_table(fitted),
            ]
    lines += _size_table(res.get("by_group_size", {}), n, res.get("by_group_size_skipped", ()))
    lines += _prior_sd_table(res.get("prior"), res["group_size"])
    methods = list(res["methods"])
    lines += ["", "Candidates, their observed final loss, and each method's mean absolute error on them "
              "over the groups that held them out (nats):", "",
              "| run_id | final loss | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for rid, loss in sorted(res["candidates"].items(), key=lambda kv: kv[1]):
        errs = []
        for m in methods:
            got = [g[m]["pred"][rid] for g in res["per_group"] if m in g and rid in g[m]["pred"]]
            errs.append(_fmt(float(np.mean(np.abs(np.asarray(got) - loss))) if got else None, 4))
        lines.append(f"| {rid} | {loss:.4f} | " + " | ".join(errs) + " |")
    lines.append("")
    return "\n".join(lines)


MIN_HELD_OUT = 3
"""Held-out runs a larger training group (``--more-sizes``) must leave: with two, every
method's Top-2 is a hit."""


def size_summary(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The headline scores of one :func:`run_setting` result, per method: Top-2 hit rate and
    mean Top-2 regret (nats) against the curves file's finals and, where the setting has
    other seeds, against the mean over seeds (fitted on one seed, and on the seed-mean
    curves)."""
    by_mean = res.get("seed_mean_truth") or {}
    fitted = by_mean.get("fitted_on_seed_mean_curves") or {}
    out: dict[str, dict[str, Any]] = {}
    for m, s in res["methods"].items():
        row = {"groups": s["groups"], "top2": s["top2_hit_rate"], "regret2": s["top2_regret_mean_nats"]}
        if m in by_mean.get("methods", {}):
            row["top2_vs_seed_mean"] = by_mean["methods"][m]["top2_hit_rate"]
            row["regret2_vs_seed_mean"] = by_mean["methods"][m]["top2_regret_mean_nats"]
        if m in fitted:
            row["top2_fitted_on_seed_mean"] = fitted[m]["top2_hit_rate"]
        out[m] = row
    return out


def run(settings: Sequence[str], methods: Sequence[str], *, max_groups: int, group_size: int, seed: int,
        command: str, more_sizes: Sequence[int] = (), prior_curves: str | Path = PRIOR_CURVES,
        prior_sd: float = PRIOR_SD, other_prior_sds: Sequence[float] = ()) -> dict[str, dict[str, Any]]:
    """Run the benchmark and write ``law_results.md``/``.json`` into each setting's folder.

    ``more_sizes``: further training-group sizes scored the same way (same seed, same
    number of groups); only their headline scores (:func:`size_summary`) are reported, in
    the table "With more fitted runs". ``optlaw+prior`` fits its transfer prior on
    ``prior_curves`` (:func:`prior_law`) and holds the fit to it with ``prior_sd``;
    ``other_prior_sds`` are scored too, at ``group_size`` only (the table "The transfer
    prior's sd")."""
    began = time.perf_counter()
    for m in methods:
        if m not in METHODS:
            raise InputError(f"--methods: unknown method {m!r}; known: {', '.join(METHODS)}")
    loaded = []
    for name in settings:
        if name not in SETTINGS:
            raise InputError(f"--settings: unknown setting {name!r}; known: {', '.join(SETTINGS)}")
        st = load_setting(name, Path(SETTINGS[name]) / "curves.csv")
        if "optlaw+prior" in methods:
            law, ids = prior_law(prior_curves, st.parent)
            st = replace(st, prior=law, prior_runs=tuple(ids))
        loaded.append(st)
    sizes = [group_size, *(k for k in dict.fromkeys(more_sizes) if k != group_size)]
    plans = []
    too_big: dict[str, list[int]] = {}
    for st in loaded:
        n = len(st.candidates)
        for k in sizes:
            if k == group_size and not 1 <= k < n - 1:
                raise InputError(f"--group-size {k}: {st.name} has {n} candidates")
            if k != group_size and not 1 <= k <= n - MIN_HELD_OUT:
                if k < 1:
                    raise InputError(f"--more-sizes {k}: must be >= 1")
                too_big.setdefault(st.name, []).append(k)  # Top-2 of 2 held-out runs is always a hit
                continue
            plans.append((st, k, training_groups(n, k, max_groups, seed)))
    sweep = [sd for sd in dict.fromkeys(other_prior_sds) if sd != prior_sd] if "optlaw+prior" in methods else []
    progress = Progress("transfer", sum(len(g) for _, _, g in plans) + len(sweep) * sum(
        len(g) for _, k, g in plans if k == group_size))
    results: dict[str, dict[str, Any]] = {}
    for st, k, groups in plans:
        res = run_setting(st, methods, groups, progress, prior_sd)
        if k == group_size:
            results[st.name] = res
            if st.prior is not None:
                res["prior"] = {"curves": str(prior_curves), "runs": list(st.prior_runs), "sd": prior_sd,
                                "by_sd": {f"{prior_sd:g}": _prior_row(res)}}
                for sd in sweep:
                    res["prior"]["by_sd"][f"{sd:g}"] = _prior_row(
                        run_setting(st, ["optlaw+prior"], groups, progress, sd))
        results[st.name].setdefault("by_group_size", {})[str(k)] = size_summary(res)
    for name, ks in too_big.items():
        results[name]["by_group_size_skipped"] = ks
    progress.close()
    meta = _machine_info(command, time.perf_counter() - began, "")
    meta["seed"] = seed
    meta.pop("shared_data", None)
    for st in loaded:
        res = {**results[st.name], "meta": meta}
        out = Path(SETTINGS[st.name])
        (out / "law_results.json").write_text(json.dumps(res, indent=1) + "\n")
        all_subsets = math.comb(len(st.candidates), group_size)
        (out / "law_results.md").write_text(render(st.name, res, meta, all_subsets))
    return results


def _prior_row(res: dict[str, Any]) -> dict[str, Any]:
    """``optlaw+prior``'s headline scores in one :func:`run_setting` result, with its mean
    absolute error (nats)."""
    return {**size_summary(res)["optlaw+prior"],
            "mean_abs_error_nats": res["methods"]["optlaw+prior"]["mean_abs_error_nats"]}


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m optuna_optlaws.benchmarks.transfer``."""
    prog = "python -m optuna_optlaws.benchmarks.transfer"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated settings (default: all)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods (default: all)")
    parser.add_argument("--groups", type=int, default=24, help="most training groups per setting (default: 24)")
    parser.add_argument("--group-size", type=int, default=3, help="training runs per group (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawn groups (default: 0)")
    parser.add_argument("--prior-curves", default=PRIOR_CURVES,
                        help=f"curves file whose runs from scratch at the parent's size and horizon give "
                             f"optlaw+prior's transfer prior (default: {PRIOR_CURVES})")
    parser.add_argument("--prior-sd", type=float, default=PRIOR_SD,
                        help=f"optlaw+prior's prior standard deviation (default: {PRIOR_SD})")
    parser.add_argument("--other-prior-sds", default="0.1,0.5",
                        help="further prior standard deviations scored at --group-size, comma-separated "
                             "(default: 0.1,0.5; empty: none)")
    parser.add_argument("--more-sizes", default="5,8",
                        help="further training-group sizes, comma-separated, scored for the table "
                             "'With more fitted runs' (default: 5,8; empty: none)")
    args = parser.parse_args(argv)
    command = (f"{prog} --settings {args.settings} --methods {args.methods} --groups {args.groups} "
               f"--group-size {args.group_size} --more-sizes '{args.more_sizes}' --seed {args.seed} "
               f"--prior-curves {args.prior_curves} --prior-sd {args.prior_sd:g} "
               f"--other-prior-sds '{args.other_prior_sds}'")
    try:
        if args.groups < 1:
            raise InputError(f"--groups {args.groups}: must be >= 1")
        try:
            more = [int(x) for x in _split(args.more_sizes)]
        except ValueError:
            raise InputError(f"--more-sizes {args.more_sizes!r}: expected integers separated by commas") from None
        try:
            sds = [float(x) for x in _split(args.other_prior_sds)]
        except ValueError:
            raise InputError(
                f"--other-prior-sds {args.other_prior_sds!r}: expected numbers separated by commas"
            ) from None
        for sd in [args.prior_sd, *sds]:
            if not (math.isfinite(sd) and sd > 0):
                raise InputError(f"prior sd {sd:g}: must be a positive number")
        results = run(_split(args.settings), _split(args.methods), max_groups=args.groups,
                      group_size=args.group_size, seed=args.seed, command=command, more_sizes=more,
                      prior_curves=args.prior_curves, prior_sd=args.prior_sd, other_prior_sds=sds)
    except InputError as exc:
        print(f"transfer: error: {exc}", file=sys.stderr)
        return 2
    for name, res in results.items():
        for m, s in res["methods"].items():
            print(f"{name:>9} {m:>15}: groups {s['groups']}, top2 {_fmt(s['top2_hit_rate'])}, "
                  f"top1 {_fmt(s['top1_hit_rate'])}, spearman {_fmt(s['spearman_mean'])}, "
                  f"mae {_fmt(s['mean_abs_error_nats'], 4)} nats, {s['seconds']} s")
        print(f"wrote {SETTINGS[name]}/law_results.md and law_results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
