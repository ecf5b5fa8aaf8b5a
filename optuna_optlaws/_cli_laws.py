"""The ``optlaws fit``, ``optlaws predict`` and ``optlaws rank`` subcommands.

* ``fit CURVES.csv [--law NAME] [--runs ID,...] [--seed N] [--prior LAW.json [--prior-sd SD]]
  --out LAW.json``: fit a law on the rows of CURVES.csv that have a loss and write the law
  file (``--prior``: an Opt-Law fitted elsewhere that the fit is drawn towards);
* ``predict LAW.json SCHEDULES.csv --out PRED.csv``: one row per row of SCHEDULES.csv,
  ``run_id,step,pred_loss,pred_lo,pred_hi`` (losses in nats, central 90% interval);
* ``rank LAW.json SCHEDULES.csv``: one line per run, lowest predicted final loss first,
  ``rank run_id pred_final pred_lo pred_hi``.

Predictions use each run's schedule (its ``lr`` values) and sizes only; any ``loss``
values in SCHEDULES.csv are ignored. A continued run (``resume_from``/``resume_step``)
must resume from a run in SCHEDULES.csv or one the law was fitted on, at one of its
steps; the Opt-Law starts it from its parent's state (the lineage saved in the law file),
the baselines, which have no parent state, from its own step 0. Bad input raises :class:`InputError`, which the
``optlaws`` entry point prints as one line before exiting with code 2.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from optuna_optlaws._csvio import open_input_csv
from optuna_optlaws._errors import InputError
from optuna_optlaws._progress import Progress
from optuna_optlaws.curves import Curve, read_curves_csv
from optuna_optlaws.laws import DEFAULT_LAW, LAW_MODULES, Law, Prediction, load_law, make_law
from optuna_optlaws.laws._optlaw_fit import transient_end
from optuna_optlaws.laws._optlaw_lineage import check_resume_step
from optuna_optlaws.laws.optlaw import PRIOR_SD, OptLaw


def register(subparsers: Any) -> None:
    """Add ``fit``, ``predict`` and ``rank`` to the ``optlaws`` parser."""
    fit = subparsers.add_parser(
        "fit",
        help="fit a loss-vs-schedule law on observed curves",
        description="Fit a law on the rows of CURVES.csv that have a loss; write the law file (JSON).",
    )
    fit.add_argument("curves", metavar="CURVES.csv", help="curves file (long format: run_id,step,lr,loss,...)")
    fit.add_argument(
        "--law",
        default=DEFAULT_LAW,
        choices=list(LAW_MODULES),
        help=f"which law to fit (default: {DEFAULT_LAW})",
    )
    fit.add_argument("--runs", metavar="ID,ID,...", default=None, help="fit only these runs (comma-separated ids)")
    fit.add_argument("--seed", type=int, default=0, help="seed of the fit's random starts (default: 0)")
    fit.add_argument(
        "--prior", metavar="LAW.json", default=None,
        help="an optlaw law file fitted elsewhere (the same model and optimiser on another corpus: a "
             "pretraining sweep before fine-tuning or continued pre-training); the fit is drawn towards its "
             "parameters except the loss floor, so a few runs inherit how the model responds to the LR",
    )
    fit.add_argument(
        "--prior-sd", type=float, default=None, metavar="SD",
        help=f"how far the fit may move from --prior's parameters: standard deviation in the parameters' "
             f"internal coordinates (0.2: about 20%% on a positive one; default: {PRIOR_SD})",
    )
    fit.add_argument("--out", metavar="LAW.json", required=True, help="where to write the law file")
    fit.set_defaults(handler=_run_fit)

    pred = subparsers.add_parser(
        "predict",
        help="predict the loss of schedules at every listed step",
        description="Write run_id,step,pred_loss,pred_lo,pred_hi for every row of SCHEDULES.csv "
        "(central 90%% predictive interval, nats).",
    )
    pred.add_argument("law", metavar="LAW.json", help="law file written by 'optlaws fit'")
    pred.add_argument("schedules", metavar="SCHEDULES.csv", help="curves file whose lr rows state the schedules")
    pred.add_argument("--out", metavar="PRED.csv", required=True, help="where to write the predictions ('-': stdout)")
    pred.set_defaults(handler=_run_predict)

    rank = subparsers.add_parser(
        "rank",
        help="rank schedules by predicted final loss",
        description="Print 'rank run_id pred_final pred_lo pred_hi', one line per run, best first.",
    )
    rank.add_argument("law", metavar="LAW.json", help="law file written by 'optlaws fit'")
    rank.add_argument("schedules", metavar="SCHEDULES.csv", help="curves file whose lr rows state the schedules")
    rank.set_defaults(handler=_run_rank)


# ---------------------------------------------------------------------- fit
def _parse_runs(text: str | None) -> list[str] | None:
    if text is None:
        return None
    runs = [r.strip() for r in text.split(",") if r.strip()]
    if not runs:
        raise InputError(f"--runs {text!r}: no run ids given")
    return runs


def _law_to_fit(args: argparse.Namespace) -> Law:
    """The unfitted law ``optlaws fit`` fits: ``--law``, with ``--prior`` and ``--prior-sd``."""
    if args.prior is None:
        if args.prior_sd is not None:
            raise InputError("--prior-sd needs --prior LAW.json (the law whose parameters it holds the fit near)")
        return make_law(args.law)
    if args.law != "optlaw":
        raise InputError(f"--prior works with --law optlaw only, not {args.law}")
    prior = load_law(args.prior)
    try:
        return OptLaw(prior=prior, prior_sd=PRIOR_SD if args.prior_sd is None else args.prior_sd)
    except InputError as exc:
        raise InputError(f"--prior {args.prior}: {exc}") from None


def _run_fit(args: argparse.Namespace) -> int:
    curves = read_curves_csv(args.curves, runs=_parse_runs(args.runs))
    ids = {c.run_id for c in curves}
    for c in curves:
        if c.resume_from is not None and c.resume_from not in ids:
            raise InputError(
                f"{args.curves}: run {c.run_id!r} resumes from {c.resume_from!r}, which is not among the "
                "runs being fitted (add it to the file or to --runs)"
            )
    observed = [c for c in curves if np.any(c.finite)]
    if not observed:
        raise InputError(f"{args.curves}: no run has a finite 'loss' value, so there is nothing to fit")
    skipped = [c.run_id for c in curves if not np.any(c.finite)]
    law = _law_to_fit(args)
    start = time.perf_counter()
    try:
        law.fit(observed, seed=args.seed)  # the fitting harness shows progress on a terminal
    except InputError as exc:
        raise InputError(f"{args.curves}: {exc}") from None
    seconds = time.perf_counter() - start
    _write_law(law, args.out)
    info = law.fit_info
    fit_loss = info.get("loss", info.get("cost"))
    loss_text = f"{float(fit_loss):.6g}" if isinstance(fit_loss, (int, float)) else "n/a"
    if isinstance(info.get("rmse_log_loss"), (int, float)):
        loss_text += f" (rmse of log-loss {float(info['rmse_log_loss']):.3g})"
    points = sum(int(np.sum(c.finite)) for c in observed)
    print(f"law: {law.name}")
    print(f"runs: {len(observed)} ({points} points): {', '.join(c.run_id for c in observed)}")
    if skipped:
        print(f"skipped (no loss rows): {', '.join(skipped)}")
    print(f"fit loss: {loss_text}")
    if args.prior is not None:
        print(f"prior: {args.prior} (sd {law.fit_info['prior']['sd']:g}; the loss floor left free)")
    bounded = bound_note(info.get("at_bounds"))
    if bounded:
        print(bounded)
    print(f"seconds: {seconds:.2f}")
    print(f"wrote: {args.out}")
    return 0


def bound_note(at_bounds: Any) -> str:
    """One line on the fitted parameters that sit on a bound (a fit's ``at_bounds``),
    empty when none does. An amplitude on its zero floor only switches its term off; on
    any other bound the fit would have gone past it: harmless at a natural limit (an
    offset at ~0, a cut-off at ~infinity), a warning for an amplitude at its cap (the
    law's form is stretched on these runs)."""
    if not isinstance(at_bounds, dict) or not at_bounds:
        return ""
    bounded, off = [], []
    for name, where in at_bounds.items():
        side, bound = (where.get("side"), where.get("bound")) if isinstance(where, dict) else (None, None)
        if side == "lower" and bound == 0:
            off.append(str(name))
        else:
            bounded.append(f"{name} ({side} bound {bound:g})" if isinstance(bound, (int, float)) else str(name))
    parts = []
    if bounded:
        parts.append("on a bound of their range (the fit would have gone past it): " + ", ".join(bounded))
    if off:
        parts.append("terms switched off (amplitude 0): " + ", ".join(off))
    return "; ".join(parts)


def _write_law(law: Law, out: str) -> None:
    try:
        law.save(out)
    except OSError as exc:
        raise InputError(f"{out}: cannot write law file ({exc.strerror})") from None


# ---------------------------------------------------------------------- predict / rank
def _group_by_sizes(curves: Sequence[Curve]) -> dict[tuple[float | None, float | None], list[int]]:
    groups: dict[tuple[float | None, float | None], list[int]] = {}
    for i, c in enumerate(curves):
        groups.setdefault((c.model_size, c.tokens_per_step), []).append(i)
    return groups


def _check_law_sizes(law: Law, curves: Sequence[Curve], where: str) -> None:
    for c in curves:
        law.check_sizes(c.model_size, where=f"{where} run {c.run_id!r}")


def _row_keys(path: str) -> list[tuple[str, int]]:
    """``(run_id, step)`` of every data row of a curves file, in file order.

    Called only after :func:`read_curves_csv` has validated the file."""
    keys: list[tuple[str, int]] = []
    with open_input_csv(path, "curves file") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        cols = {c.strip(): i for i, c in enumerate(header)}
        for record in reader:
            if not record or all(not c.strip() for c in record):
                continue
            keys.append((record[cols["run_id"]].strip(), int(float(record[cols["step"]]))))
    return keys


def _prepare_continued(law: Law, curves: Sequence[Curve], where: str) -> None:
    """Check every continued run's parent and resume step (parent in the file, else among
    the law's fitted runs or lineage) and register the file's parents with a law that
    continues runs from their parent's state (``add_lineage``)."""
    in_file = {c.run_id: c for c in curves}
    lineage = getattr(law, "lineage", {})
    known = {str(r["run_id"]): int(r["total_steps"]) for r in law.fitted_on if r.get("total_steps") is not None}
    offsets = getattr(law, "lineage_offsets", {})
    known.update({rid: s.total_steps - offsets.get(rid, 0) for rid, s in lineage.items()})
    parents = set()
    for c in curves:
        if c.resume_from is None:
            continue
        parents.add(c.resume_from)
        if c.resume_from in in_file:
            continue  # read_curves_csv checked the resume step
        if c.resume_from not in known:
            raise InputError(
                f"{where}: run {c.run_id!r} resumes from {c.resume_from!r}, which is neither in this file nor "
                f"among the runs the law was fitted on"
            )
        check_resume_step(c.run_id, c.resume_from, int(c.resume_step or 0), known[c.resume_from], where)
    add_lineage = getattr(law, "add_lineage", None)
    if add_lineage is not None and parents & in_file.keys():
        add_lineage([in_file[p] for p in parents if p in in_file])


def _predict_run(law: Law, curve: Curve, steps: NDArray[np.int64]) -> Prediction:
    """Loss of ``curve``'s schedule at ``steps``; a continued run through
    :meth:`Law.predict_curve` (the Opt-Law starts it from its parent's state)."""
    if curve.resume_from is None:
        return law.predict(
            curve.schedule, steps, model_size=curve.model_size, tokens_per_step=curve.tokens_per_step
        )
    return law.predict_curve(replace(curve, steps=steps, losses=np.full(steps.size, math.nan)))


def _finite_or_nan(x: float) -> str:
    return repr(float(x)) if math.isfinite(x) else "nan"


def _run_predict(args: argparse.Namespace) -> int:
    law = load_law(args.law)
    curves = read_curves_csv(args.schedules)
    _check_law_sizes(law, curves, args.schedules)
    _prepare_continued(law, curves, args.schedules)
    keys = _row_keys(args.schedules)
    steps_of: dict[str, list[int]] = {}
    for run_id, step in keys:
        steps_of.setdefault(run_id, []).append(step)
    table: dict[tuple[str, int], tuple[float, float, float]] = {}
    progress = Progress("optlaws predict", len(curves))
    for c in curves:
        steps = np.unique(np.asarray(steps_of[c.run_id], dtype=np.int64))
        p = _predict_run(law, c, steps)
        for s, m, lo, hi in zip(steps.tolist(), *(np.asarray(a, dtype=np.float64) for a in p), strict=True):
            table[(c.run_id, int(s))] = (float(m), float(lo), float(hi))
        progress.advance(1)
    progress.close()
    rows = [[run_id, step, *(_finite_or_nan(v) for v in table[(run_id, step)])] for run_id, step in keys]
    _write_rows(args.out, ["run_id", "step", "pred_loss", "pred_lo", "pred_hi"], rows)
    note = _transient_note(law, curves, steps_of)
    if note:
        warnings.warn(f"{args.schedules}: {note}", stacklevel=1)
    return 0


def _transient_note(law: Law, curves: Sequence[Curve], steps_of: dict[str, list[int]]) -> str | None:
    """A note when rows ask the Opt-Law about a run's initial transient (its warmup and
    first 10% of steps), which the law is not fitted on (its points there are left out):
    the predictions of those rows are extrapolations of the law's form."""
    if not isinstance(law, OptLaw):
        return None
    early = {  # a continued run's own step 0 lies past its parent's transient
        c.run_id: sum(step < transient_end(c.schedule) for step in steps_of[c.run_id])
        for c in curves if c.resume_from is None
    }
    runs = [run_id for run_id, n in early.items() if n]
    n_rows = sum(early.values())
    if not n_rows:
        return None
    named = ", ".join(repr(r) for r in runs[:3]) + (f" and {len(runs) - 3} more" if len(runs) > 3 else "")
    return (
        f"{n_rows} rows (run{'s' if len(runs) > 1 else ''} {named}) lie in a run's initial transient (its warmup "
        "and first 10% of steps), "
        "which the Opt-Law is not fitted on: their predictions are extrapolations, often far off"
    )


def _write_rows(out: str, header: list[str], rows: list[list[Any]]) -> None:
    if out == "-":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return
    path = Path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
    except OSError as exc:
        raise InputError(f"{out}: cannot write predictions ({exc.strerror})") from None


def predict_final_losses(law: Law, curves: Sequence[Curve], where: str = "") -> Prediction:
    """Predicted loss (nats) at the last step of each curve's schedule, in input order,
    vectorised over the curves that share a model size and tokens per step; a continued
    run (``resume_from``) one by one from its parent's state."""
    _check_law_sizes(law, curves, where or "schedules")
    _prepare_continued(law, curves, where or "schedules")
    mean = np.full(len(curves), math.nan)
    lo = np.full(len(curves), math.nan)
    hi = np.full(len(curves), math.nan)
    for i, c in enumerate(curves):
        if c.resume_from is not None:
            p = _predict_run(law, c, np.array([c.schedule.total_steps - 1], dtype=np.int64))
            mean[i], lo[i], hi[i] = p.mean[0], p.lo[0], p.hi[0]
    for (model_size, tokens), all_idx in _group_by_sizes(curves).items():
        idx = [i for i in all_idx if curves[i].resume_from is None]
        if not idx:
            continue
        p = law.predict_final([curves[i].schedule for i in idx], model_size=model_size, tokens_per_step=tokens)
        mean[idx], lo[idx], hi[idx] = p.mean, p.lo, p.hi
    return Prediction(mean, lo, hi)


def _rank_order(values: NDArray[np.float64]) -> NDArray[np.int64]:
    """Indices sorting ``values`` ascending, NaN last, ties in input order."""
    key = np.where(np.isfinite(values), values, np.inf)
    return np.argsort(key, kind="stable").astype(np.int64)


def _run_rank(args: argparse.Namespace) -> int:
    law = load_law(args.law)
    curves = read_curves_csv(args.schedules)
    pred = predict_final_losses(law, curves, args.schedules)
    order = _rank_order(pred.mean)
    width = max(len(c.run_id) for c in curves)
    for rank, i in enumerate(order.tolist(), start=1):
        print(
            f"{rank} {curves[i].run_id:<{width}} {pred.mean[i]:.6f} {pred.lo[i]:.6f} {pred.hi[i]:.6f}"
        )
    return 0
