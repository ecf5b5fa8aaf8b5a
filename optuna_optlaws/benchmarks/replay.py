"""Replay logged training runs as trials of a real Optuna study, to benchmark pruners.

Each run of a curves file becomes one trial: its schedule is attached with
:func:`optuna_optlaws.set_schedule`, its logged losses are reported in step order with
``trial.report(loss, step)`` and ``trial.should_prune()`` is asked after each report. A
pruned trial has trained the optimizer steps up to that report; an unpruned one completes
with the run's final loss. Runs are grouped so that one study only holds comparable runs
(same horizon and model size by default), and every group is replayed in many trial
orders, because what a pruner prunes depends on what it has seen first.

Logged steps differ slightly between runs (the MPL release logs cosine runs at
2160 + 128 k and the others at 2176 + 128 k), and Optuna's pruners compare trials at
*equal* steps; so each group reports on one common grid of steps (every ``report_every``
steps from the first step all its runs have logged), each run's loss linearly
interpolated between its own logged points. Where the runs share their logged steps the
grid is exactly those steps and nothing is interpolated.

Per pruner the benchmark measures: the share of optimizer steps trained (against no
pruning), how often the best run of a group (lowest final loss) survived to completion,
the regret (nats) of the best completed run against the group's best, and wall time.
"""

from __future__ import annotations

import itertools
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from optuna_optlaws._errors import InputError
from optuna_optlaws._progress import Progress
from optuna_optlaws.curves import Curve
from optuna_optlaws.parent_run import ParentRun

if TYPE_CHECKING:
    import optuna

PRUNERS = ("optlaws", "median", "hyperband", "wilcoxon", "patient", "none")
"""Pruner names the replay knows, in the order results are listed."""

OPTLAWS_NATS = ("tolerance", "margin", "final_noise")
"""Arguments of :class:`~optuna_optlaws.OptLawsPruner` in nats a replay may set, as in
``optlaws:tolerance=0.01`` (``final_noise`` also takes ``auto``)."""

OPTLAWS_GATES = ("min_reports", "min_fraction")
"""The evidence gates of :class:`~optuna_optlaws.OptLawsPruner` a replay may set:
``min_reports`` (an int >= 1) and ``min_fraction`` (of the schedule, in [0, 1])."""

OPTLAWS_TRANSFER = ("transfer_prior", "transfer_prior_sd")
"""The transfer prior of :class:`~optuna_optlaws.OptLawsPruner`: ``transfer_prior`` a law
file (written by ``optlaws fit``), ``transfer_prior_sd`` a number > 0."""

OPTLAWS_OPTIONS = OPTLAWS_NATS + OPTLAWS_GATES + OPTLAWS_TRANSFER
"""Every argument of :class:`~optuna_optlaws.OptLawsPruner` a replay may set."""

_OPTION_RANGES: dict[str, tuple[Callable[[float], bool], Callable[[float], Any], str]] = {
    "min_reports": (lambda x: x >= 1 and x == int(x), int, "must be an int >= 1"),
    "min_fraction": (lambda x: 0.0 <= x <= 1.0, float, "must lie in [0, 1]"),
    "transfer_prior_sd": (lambda x: x > 0, float, "must be a number > 0"),
}
"""Per option: whether a value is in range, its type, and what the error says; every other
option is a number of nats >= 0."""

_NATS_RANGE: tuple[Callable[[float], bool], Callable[[float], Any], str] = (
    lambda x: x >= 0, float, "must be a number of nats >= 0"
)


def parse_pruner(spec: str) -> tuple[str, dict[str, Any]]:
    """A pruner spec ``name`` or ``optlaws:key=value[,key=value]`` as (name, arguments).

    Raises :class:`InputError` naming the spec when the name or an argument is unknown or a
    value is out of its range (nats >= 0; ``min_reports`` an int >= 1; ``min_fraction``
    in [0, 1]; ``transfer_prior`` an existing file, ``transfer_prior_sd`` > 0)."""
    name, _, rest = spec.partition(":")
    if name not in PRUNERS:
        raise InputError(f"replay: unknown pruner {spec!r}; known: {', '.join(PRUNERS)}")
    if not rest:
        return name, {}
    if name != "optlaws":
        raise InputError(f"replay: pruner {spec!r}: only optlaws takes arguments ({', '.join(OPTLAWS_OPTIONS)})")
    kwargs: dict[str, Any] = {}
    for item in rest.split(","):
        key, eq, value = item.partition("=")
        if key not in OPTLAWS_OPTIONS or not eq:
            raise InputError(f"replay: pruner {spec!r}: {item!r} is not key=value with key in {OPTLAWS_OPTIONS}")
        if key == "final_noise" and value == "auto":
            kwargs[key] = value
            continue
        if key == "transfer_prior":
            if not Path(value).is_file():
                raise InputError(f"replay: pruner {spec!r}: transfer_prior={value!r} is not a law file")
            kwargs[key] = value
            continue
        in_range, kind, what = _OPTION_RANGES.get(key, _NATS_RANGE)
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and in_range(number)):
            raise InputError(f"replay: pruner {spec!r}: {key}={value!r} {what}")
        kwargs[key] = kind(number)
    return name, kwargs


GROUP_KEYS = ("horizon", "model_size")
"""What runs of one group share: ``horizon`` (total steps, within 10%) and/or ``model_size``."""

WARMUP_SHARE = 0.2
"""Share of a group's horizon (steps) before which Optuna's pruners may not prune
(``n_warmup_steps`` of MedianPruner, ``n_startup_steps`` of WilcoxonPruner)."""

MEDIAN_STARTUP_TRIALS = 2
"""``n_startup_trials`` of MedianPruner: completed trials needed before it prunes (groups
hold only 2 to 5 runs, so Optuna's default of 5 would never prune)."""

PATIENCE_REPORTS = 5
"""``patience`` of PatientPruner (in reports) around the same MedianPruner."""

HYPERBAND_MIN_SHARE = 1 / 9
"""HyperbandPruner's ``min_resource`` as a share of the horizon (rungs at T/9, T/3 with
reduction factor 3; ``max_resource`` = the horizon in steps)."""

_HORIZON_TOLERANCE = 1.1


@dataclass(frozen=True)
class ReplayGroup:
    """Runs compared in one study: a label, the runs, and the common report grid (steps)."""

    label: str
    curves: tuple[Curve, ...]
    report_steps: NDArray[np.int64]
    parent: ParentRun | None = None
    """The run every run of the group continues (set on each study), if any."""

    @property
    def horizon(self) -> int:
        """The longest schedule of the group (steps)."""
        return max(c.schedule.total_steps for c in self.curves)

    @property
    def best_index(self) -> int:
        """Index of the run with the lowest finite final loss."""
        finals = [c.final_loss if math.isfinite(c.final_loss) else math.inf for c in self.curves]
        return int(np.argmin(finals))

    def reports(self, index: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """The (step, loss) reports of run ``index`` on the group's grid.

        Losses are interpolated between the run's finite logged points; from its first
        non-finite point on (a diverged run) the reports are NaN."""
        curve = self.curves[index]
        steps = self.report_steps[self.report_steps <= curve.last_step]
        bad = ~curve.finite
        first_bad = int(curve.steps[np.argmax(bad)]) if bad.any() else None
        ok = curve.finite
        values = np.interp(steps, curve.steps[ok], curve.losses[ok]) if ok.any() else np.full(steps.size, np.nan)
        if first_bad is not None:
            values = np.where(steps >= first_bad, np.nan, values)
        return steps, values


def _size_label(n: float | None) -> str:
    if n is None:
        return "N=?"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"N={n / scale:.3g}{unit}"
    return f"N={n:g}"


def _report_grid(curves: Sequence[Curve], report_every: int | None) -> NDArray[np.int64]:
    observed = [c.steps[c.finite] for c in curves]
    if any(o.size == 0 for o in observed):
        raise InputError("replay: every run needs at least one finite logged loss")
    start = max(int(o[0]) for o in observed)
    end = max(int(c.steps[-1]) for c in curves)
    if report_every is None:
        gaps = np.concatenate([np.diff(c.steps) for c in curves if c.steps.size > 1] or [np.array([1])])
        report_every = max(int(np.median(gaps)), 1)
    # where all runs share their logged steps the grid is exactly those steps
    shared = set(curves[0].steps.tolist())
    for c in curves[1:]:
        shared &= set(c.steps.tolist())
    union = set().union(*(c.steps.tolist() for c in curves))
    if shared == union:
        return np.array(sorted(union), dtype=np.int64)
    return np.arange(start, end + 1, report_every, dtype=np.int64)


def split_parent(
    curves: Sequence[Curve], *, from_scratch: bool = False
) -> tuple[list[Curve], ParentRun | None, list[str]]:
    """The runs to replay, the run they continue, and the runs left out, for a curves file
    with continued runs (``resume_from``): those runs are replayed as trials of studies
    whose parent run (:func:`~optuna_optlaws.set_parent_run`) is the one they continue; the
    parent and every other run trained from scratch are left out. A file without continued
    runs is replayed whole. ``from_scratch``: the continued runs are replayed as runs from
    scratch, without a parent (to measure what the parent buys).

    InputError unless every continued run resumes from the same run of the file at the
    same step."""
    cont = [c for c in curves if c.resume_from is not None]
    if not cont:
        return list(curves), None, []
    starts = {(c.resume_from, c.resume_step) for c in cont}
    if len(starts) > 1:
        shown = ", ".join(f"{p} at step {k}" for p, k in sorted(starts, key=str))
        raise InputError(f"replay: the continued runs must all resume from one run at one step, found {shown}")
    ((parent_id, resume_step),) = starts
    by_id = {c.run_id: c for c in curves}
    if parent_id not in by_id:
        raise InputError(f"replay: the continued runs resume from {parent_id!r}, which is not in the curves file")
    left_out = [c.run_id for c in curves if c.resume_from is None]
    if from_scratch:
        return [replace(c, resume_from=None, resume_step=None) for c in cont], None, left_out
    return cont, ParentRun(by_id[str(parent_id)], int(resume_step or 0)), left_out


def group_curves(
    curves: Sequence[Curve],
    by: Sequence[str] = GROUP_KEYS,
    *,
    report_every: int | None = None,
    min_runs: int = 2,
    parent: ParentRun | None = None,
) -> list[ReplayGroup]:
    """Split runs into groups of comparable runs (same horizon and/or model size).

    Horizons within 10% of each other count as one (the MPL runs end between 23,905 and
    23,937 steps). Groups with fewer than ``min_runs`` runs are left out: nothing can be
    pruned in a study of one trial. ``parent``: the run every one of ``curves`` continues."""
    for k in by:
        if k not in GROUP_KEYS:
            raise InputError(f"replay: unknown --group-by key {k!r}; use {', '.join(GROUP_KEYS)} or none")
    buckets: dict[tuple[Any, ...], list[Curve]] = {}
    horizon_of: dict[str, int] = {}
    if "horizon" in by:
        ordered = sorted(curves, key=lambda c: c.schedule.total_steps)
        bucket = 0
        anchor = None
        for c in ordered:
            if anchor is not None and c.schedule.total_steps > anchor * _HORIZON_TOLERANCE:
                bucket += 1
                anchor = None
            if anchor is None:
                anchor = c.schedule.total_steps
            horizon_of[c.run_id] = bucket
    for c in curves:
        key = tuple(
            horizon_of[c.run_id] if k == "horizon" else (c.model_size or 0.0) for k in by
        )
        buckets.setdefault(key, []).append(c)
    groups = []
    for key in sorted(buckets, key=lambda k: tuple(float(x) for x in k)):
        members = buckets[key]
        if len(members) < min_runs:
            continue
        parts = []
        if "model_size" in by:
            parts.append(_size_label(members[0].model_size))
        if "horizon" in by:
            parts.append(f"T~{max(c.schedule.total_steps for c in members) / 1000:.1f}k")
        label = " ".join(parts) or "all runs"
        groups.append(ReplayGroup(label, tuple(members), _report_grid(members, report_every), parent))
    if not groups:
        grouped = ", ".join(by) or "none"
        raise InputError(f"replay: no group has {min_runs} or more runs to compare (grouped by {grouped})")
    return groups


def make_pruner(spec: str, group: ReplayGroup) -> optuna.pruners.BasePruner:
    """A fresh pruner for one study of ``group`` (``spec``: see :func:`parse_pruner`);
    Optuna's own pruners, step units in steps."""
    import optuna

    name, kwargs = parse_pruner(spec)

    warmup = int(WARMUP_SHARE * group.horizon)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=warmup)
    if name == "patient":
        inner = optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=warmup)
        return optuna.pruners.PatientPruner(inner, patience=PATIENCE_REPORTS)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(int(group.horizon * HYPERBAND_MIN_SHARE), 1),
            max_resource=group.horizon,
            reduction_factor=3,
        )
    if name == "wilcoxon":
        startup = int(np.sum(group.report_steps < warmup))
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=max(startup, 2))
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "optlaws":
        try:
            from optuna_optlaws.pruner import OptLawsPruner
        except ModuleNotFoundError as exc:
            raise InputError(f"replay: the optlaws pruner is not available ({exc})") from None
        return OptLawsPruner(**kwargs)
    raise AssertionError(name)  # parse_pruner knows only PRUNERS


def pruner_settings(spec: str) -> str:
    """One line saying how a pruner is configured in the replay (for the results table)."""
    name, kwargs = parse_pruner(spec)
    if kwargs:
        shown = (f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in kwargs.items())
        return "OptLawsPruner(" + ", ".join(shown) + ") (other arguments default)"
    w = f"{WARMUP_SHARE:g} T"
    return {
        "median": f"MedianPruner(n_startup_trials={MEDIAN_STARTUP_TRIALS}, n_warmup_steps={w})",
        "patient": f"PatientPruner(MedianPruner(n_startup_trials={MEDIAN_STARTUP_TRIALS}, n_warmup_steps={w}), "
        f"patience={PATIENCE_REPORTS})",
        "hyperband": "HyperbandPruner(min_resource=T/9, max_resource=T, reduction_factor=3)",
        "wilcoxon": f"WilcoxonPruner(p_threshold=0.1, n_startup_steps=reports before {w})",
        "none": "NopPruner()",
        "optlaws": "OptLawsPruner() (default arguments)",
    }.get(name, name)


def _attach_schedule() -> Callable[[optuna.Trial, Curve], None]:
    """``set_schedule`` of optuna_optlaws (with the run's sizes when it accepts them)."""
    try:
        from optuna_optlaws.trial_schedule import set_schedule
    except ModuleNotFoundError:
        # only the optlaws pruner reads the schedule, and it needs this module anyway
        return lambda trial, curve: None
    import inspect

    accepted = set(inspect.signature(set_schedule).parameters)

    def attach(trial: optuna.Trial, curve: Curve) -> None:
        extra = {
            k: getattr(curve, k)
            for k in ("model_size", "tokens_per_step")
            if k in accepted and getattr(curve, k) is not None
        }
        set_schedule(trial, curve.schedule, **extra)

    return attach


@dataclass
class OrderOutcome:
    """One replay of a group in one trial order: per run (group index), steps trained,
    whether it completed, and the step it was pruned at (None when not pruned)."""

    order: list[int]
    steps_trained: list[int] = field(default_factory=list)
    completed: list[bool] = field(default_factory=list)
    pruned_at: list[int | None] = field(default_factory=list)


def replay_order(
    group: ReplayGroup,
    order: Sequence[int],
    pruner: optuna.pruners.BasePruner,
    *,
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    seed: int = 0,
    run_param: str | None = None,
    workers: int = 1,
) -> OrderOutcome:
    """Replay the runs of ``group`` in ``order`` as trials of one new study with ``pruner``.

    ``workers``: how many runs train at once (parallel workers sharing the study). Time is
    counted in optimizer steps, the same for every run: each worker takes the next run of
    ``order`` when its trial ends (pruned at step ``s``: ``s`` steps after it began;
    complete: its whole schedule after), and the reports of the running trials arrive in
    the order of their times (ties: the worker that began first). With one worker, each
    run is reported to its end before the next begins.

    ``run_param``: also record each trial's run id as a categorical parameter of that
    name (so the dashboard's trial table names the runs). Results are indexed by the runs'
    positions in the group, not in the order."""
    import optuna

    if not (isinstance(workers, int) and workers >= 1):
        raise InputError(f"replay: workers={workers!r} must be an int >= 1")
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction="minimize",
        sampler=optuna.samplers.RandomSampler(seed=seed),
        pruner=pruner,
    )
    if group.parent is not None:
        from optuna_optlaws.parent_run import set_parent_run

        set_parent_run(study, group.parent.curve, resume_step=group.parent.resume_step)
    attach = _attach_schedule()
    n = len(group.curves)
    trained = [0] * n
    completed = [False] * n
    pruned_at: list[int | None] = [None] * n
    run_ids = [c.run_id for c in group.curves]
    queue = iter(order)

    def begin(now: int) -> _Running | None:
        index = next(queue, None)
        if index is None:
            return None
        if run_param is not None:
            study.enqueue_trial({run_param: group.curves[index].run_id})
        trial = study.ask()
        if run_param is not None:
            trial.suggest_categorical(run_param, run_ids)
        attach(trial, group.curves[index])
        steps, values = group.reports(index)
        return _Running(index, trial, steps.tolist(), values.tolist(), now)

    slots: list[_Running | None] = []
    for _ in range(workers):
        slots.append(begin(0))
    while True:
        live = [(r.start + r.steps[r.pos], k) for k, r in enumerate(slots) if r is not None and r.pos < len(r.steps)]
        if not live:
            break
        _, k = min(live)
        run = slots[k]
        assert run is not None
        step, value = run.steps[run.pos], run.values[run.pos]
        run.trial.report(value, step)
        run.pos += 1
        if run.trial.should_prune():
            study.tell(run.trial, state=optuna.trial.TrialState.PRUNED)
            trained[run.index] = step
            pruned_at[run.index] = step
            slots[k] = begin(run.start + step)
        elif run.pos == len(run.steps):
            curve = group.curves[run.index]
            final = curve.final_loss
            if math.isfinite(final):
                study.tell(run.trial, final)
                completed[run.index] = True
            else:
                study.tell(run.trial, state=optuna.trial.TrialState.FAIL)
            trained[run.index] = curve.schedule.total_steps
            slots[k] = begin(run.start + curve.schedule.total_steps)
    return OrderOutcome(list(order), trained, completed, pruned_at)


@dataclass
class _Running:
    """A run being replayed by a worker: its group index, trial, reports (steps, values),
    how many it has reported, and when (optimizer steps since the replay began) it began."""

    index: int
    trial: optuna.Trial
    steps: list[int]
    values: list[float]
    start: int
    pos: int = 0


def trial_orders(n_runs: int, n_orders: int, seed: int) -> list[list[int]]:
    """Distinct random trial orders: all ``n_runs!`` of them when that is at most
    ``n_orders``, else ``n_orders`` distinct random permutations."""
    if math.factorial(n_runs) <= n_orders:
        return [list(p) for p in itertools.permutations(range(n_runs))]
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, ...]] = set()
    orders: list[list[int]] = []
    while len(orders) < n_orders:
        p = tuple(int(i) for i in rng.permutation(n_runs))
        if p not in seen:
            seen.add(p)
            orders.append(list(p))
    return orders


def oracle_gates() -> dict[str, Any]:
    """The optlaws pruner's default gates, under which :func:`oracle_steps` is computed."""
    import inspect

    from optuna_optlaws.pruner import OptLawsPruner

    params = inspect.signature(OptLawsPruner).parameters
    return {k: params[k].default for k in ("n_min_trials", "min_reports", "min_fraction")}


def oracle_steps(
    group: ReplayGroup, orders: Sequence[Sequence[int]], *, n_min_trials: int, min_reports: int, min_fraction: float
) -> tuple[int, int]:
    """Steps an oracle pruner trains over ``orders`` (and the steps of no pruning): it
    knows every final loss but keeps the optlaws pruner's gates. The first ``n_min_trials``
    runs and every run that beats all earlier ones complete; every other run is pruned at
    its first report with enough evidence (``min_reports`` reports past the law's initial
    transient and ``min_fraction`` of its schedule, :func:`~optuna_optlaws._pruner._frontier.has_evidence`).
    The floor for any pruner with those gates."""
    from optuna_optlaws._pruner._frontier import first_evidence_step

    finals = [c.final_loss if math.isfinite(c.final_loss) else math.inf for c in group.curves]
    trained = full = 0
    for order in orders:
        best, n_done = math.inf, 0
        for i in order:
            total = group.curves[i].schedule.total_steps
            full += total
            if n_done < n_min_trials or finals[i] < best:
                trained += total
                n_done += 1
                best = min(best, finals[i])
                continue
            first = first_evidence_step(group.reports(i)[0], group.curves[i].schedule, min_reports, min_fraction)
            trained += total if first is None else first  # the first report past the gates, or the whole run
    return trained, full


def _summarise(group: ReplayGroup, outcomes: Sequence[OrderOutcome]) -> dict[str, Any]:
    finals = np.array([c.final_loss for c in group.curves])
    best = group.best_index
    full = sum(c.schedule.total_steps for c in group.curves)
    regrets = []
    for o in outcomes:
        kept = [finals[i] for i in range(len(finals)) if o.completed[i] and math.isfinite(finals[i])]
        regrets.append(min(kept) - finals[best] if kept else math.inf)
    return {
        "group": group.label,
        "runs": [c.run_id for c in group.curves],
        "best_run": group.curves[best].run_id,
        "orders": len(outcomes),
        "steps_trained": int(sum(sum(o.steps_trained) for o in outcomes)),
        "steps_full": int(full * len(outcomes)),
        "best_survived": int(sum(o.completed[best] for o in outcomes)),
        "regrets": [float(r) for r in regrets],
        "pruned_share_by_run": {
            c.run_id: float(np.mean([o.pruned_at[i] is not None for o in outcomes])) for i, c in enumerate(group.curves)
        },
    }


def _combine(per_group: Sequence[dict[str, Any]], wall: float) -> dict[str, Any]:
    regrets = np.array([r for g in per_group for r in g["regrets"]])
    trained = sum(g["steps_trained"] for g in per_group)
    full = sum(g["steps_full"] for g in per_group)
    orders = sum(g["orders"] for g in per_group)
    finite = regrets[np.isfinite(regrets)]
    return {
        "steps_share": trained / full,
        "best_survival": sum(g["best_survived"] for g in per_group) / orders,
        "regret_mean": float(np.mean(regrets)) if regrets.size else math.nan,
        "regret_worst": float(np.max(regrets)) if regrets.size else math.nan,
        "regret_mean_finite": float(np.mean(finite)) if finite.size else math.nan,
        "no_run_completed": int(np.sum(~np.isfinite(regrets))),
        "group_orders": orders,
        "wall_s": wall,
    }


def run_replay(
    curves: Sequence[Curve],
    pruners: Sequence[str] = PRUNERS,
    *,
    orders: int = 20,
    seed: int = 0,
    group_by: Sequence[str] = GROUP_KEYS,
    report_every: int | None = None,
    storage: str | None = None,
    progress: bool | None = None,
    from_scratch: bool = False,
    workers: int = 1,
) -> dict[str, Any]:
    """Replay ``curves`` under each pruner and return the results (JSON-ready).

    ``orders``: trial orders per group (fewer when a group has fewer permutations);
    ``workers``: runs trained at once (:func:`replay_order`);
    ``storage``: an Optuna storage URL (default: in memory), every study named
    ``replay-<pruner>-<group>-<order>``. Continued runs: see :func:`split_parent`."""
    import optuna

    for name in pruners:
        parse_pruner(name)
    if orders < 1:
        raise InputError(f"replay: --orders must be >= 1, got {orders}")
    curves, parent, left_out = split_parent(curves, from_scratch=from_scratch)
    groups = group_curves(curves, group_by, report_every=report_every, parent=parent)
    plan = [(g, trial_orders(len(g.curves), orders, seed + gi)) for gi, g in enumerate(groups)]
    n_studies = sum(len(o) for _, o in plan) * len(pruners)
    bar = Progress("replay", n_studies, enabled=progress)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict[str, Any] = {
        "machine": _machine(),
        "orders_requested": orders,
        "seed": seed,
        "workers": workers,
        "group_by": list(group_by),
        "parent": None if parent is None else {"run": parent.run_id, "resume_step": parent.resume_step},
        "continued_from_scratch": bool(from_scratch and left_out),
        "left_out": left_out,
        "groups": [
            {
                "group": g.label,
                "runs": [c.run_id for c in g.curves],
                "final_losses": [c.final_loss for c in g.curves],
                "best_run": g.curves[g.best_index].run_id,
                "horizon_steps": g.horizon,
                "report_steps": {
                    "first": int(g.report_steps[0]),
                    "last": int(g.report_steps[-1]),
                    "count": int(g.report_steps.size),
                    "every": int(np.median(np.diff(g.report_steps))) if g.report_steps.size > 1 else 0,
                },
                "orders": len(o),
                "oracle_steps": oracle_steps(g, o, **oracle_gates()),
            }
            for g, o in plan
        ],
        "pruners": {},
    }
    try:
        for name in pruners:
            start, cpu_start = time.perf_counter(), time.process_time()
            per_group = []
            for gi, (group, group_orders) in enumerate(plan):
                outcomes = []
                for oi, order in enumerate(group_orders):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        outcome = replay_order(
                            group,
                            order,
                            make_pruner(name, group),
                            storage=storage,
                            study_name=f"replay-{name}-{gi}-{oi}",  # fixed: HyperbandPruner hashes it
                            seed=seed + oi,
                            workers=workers,
                        )
                    outcomes.append(outcome)
                    bar.advance(note=f"{name} {group.label}")
                per_group.append(_summarise(group, outcomes))
            wall = time.perf_counter() - start
            results["pruners"][name] = {
                "settings": pruner_settings(name),
                **_combine(per_group, wall),
                "cpu_s": time.process_time() - cpu_start,
                "per_group": per_group,
            }
    finally:
        bar.close()
        optuna.logging.set_verbosity(verbosity)
    return results


def combine_results(parts: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Several replays' results (``(label, results)``, as :func:`run_replay` returns them
    or ``results.json`` holds them) as one: their groups side by side, each labelled
    ``"<label>: <group>"``, and every pruner replayed in all of them summarised over all
    their group-orders. :class:`InputError` when no pruner is common to all."""
    if not parts:
        raise InputError("replay-combine: no results to combine")
    names = [n for n in parts[0][1]["pruners"] if all(n in r["pruners"] for _, r in parts[1:])]
    if not names:
        raise InputError("replay-combine: the results have no pruner in common")
    workers = {int(r.get("workers", 1)) for _, r in parts}
    if len(workers) > 1:
        raise InputError(f"replay-combine: the replays ran with different --workers ({sorted(workers)})")
    groups: list[dict[str, Any]] = []
    per_group: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    wall = dict.fromkeys(names, 0.0)
    cpu = dict.fromkeys(names, 0.0)
    for label, res in parts:
        for gi, g in enumerate(res["groups"]):
            groups.append({**g, "group": f"{label}: {g['group']}"})
            for n in names:
                pg = res["pruners"][n]["per_group"][gi]
                regrets = [math.inf if r is None else float(r) for r in pg["regrets"]]  # JSON: inf -> None
                per_group[n].append({**pg, "group": f"{label}: {pg['group']}", "regrets": regrets})
        for n in names:
            wall[n] += float(res["pruners"][n].get("wall_s") or 0.0)
            cpu[n] += float(res["pruners"][n].get("cpu_s") or 0.0)
    first = parts[0][1]
    return {
        "machine": first.get("machine", {}),
        "group_by": first.get("group_by", []),
        "workers": workers.pop(),
        "curves": ", ".join(label for label, _ in parts),
        "combined_from": [{"label": label, "command": r.get("command", "")} for label, r in parts],
        "groups": groups,
        "pruners": {
            n: {
                "settings": first["pruners"][n]["settings"],
                **_combine(per_group[n], wall[n]),
                "cpu_s": cpu[n],
                "per_group": per_group[n],
            }
            for n in names
        },
    }


def _machine() -> dict[str, Any]:
    """Where the replay ran: wall times depend on the machine and its load."""
    import os
    import platform

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": None if load is None else round(load[0], 2),
    }


def format_table(results: dict[str, Any]) -> str:
    """The per-pruner summary as a Markdown table."""
    lines = [
        "| pruner | steps trained (vs no pruning) | best run survived | regret mean (nats) | regret worst (nats) "
        "| wall (s) | CPU (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results["pruners"].items():
        lines.append(
            f"| {name} | {100 * r['steps_share']:.1f}% | {100 * r['best_survival']:.1f}% "
            f"({r['group_orders']} group-orders) | {r['regret_mean']:.4f} | {r['regret_worst']:.4f} "
            f"| {r['wall_s']:.1f} | {r.get('cpu_s', math.nan):.1f} |"
        )
    return "\n".join(lines)


TARGET_SURVIVAL = 0.95
"""Issue 3: with the optlaws pruner the best run survives in at least this share of orders..."""

TARGET_STEPS_SHARE = 0.35
"""...while at most this share of the optimizer steps of no pruning is trained."""


def target_line(results: dict[str, Any]) -> str:
    """Whether the optlaws pruner met the replay targets (best run kept in at least 95% of
    orders with at most 35% of the steps) in this replay (one line)."""
    r = results["pruners"].get("optlaws")
    if r is None:
        variants = [name for name in results["pruners"] if name.startswith("optlaws:")]
        only = f" (only {', '.join(variants)})" if variants else ""
        return f"Targets: not checked, the optlaws pruner with its defaults was not replayed{only}."
    survival_ok = r["best_survival"] >= TARGET_SURVIVAL
    steps_ok = r["steps_share"] <= TARGET_STEPS_SHARE
    verdict = "met" if survival_ok and steps_ok else "NOT met"
    return (
        f"Targets {verdict}: optlaws best run survived {100 * r['best_survival']:.1f}% "
        f"(target >= {100 * TARGET_SURVIVAL:.0f}%: {'yes' if survival_ok else 'no'}), steps trained "
        f"{100 * r['steps_share']:.1f}% (target <= {100 * TARGET_STEPS_SHARE:.0f}%: {'yes' if steps_ok else 'no'})."
    )


def oracle_line(results: dict[str, Any]) -> str:
    """The floor an oracle pruner with the optlaws pruner's gates reaches (see :func:`oracle_steps`)."""
    groups = [g for g in results["groups"] if g.get("oracle_steps")]
    if not groups:
        return ""
    trained = sum(g["oracle_steps"][0] for g in groups)
    full = sum(g["oracle_steps"][1] for g in groups)
    per = ", ".join(f"{g['group']} {100 * g['oracle_steps'][0] / g['oracle_steps'][1]:.1f}%" for g in groups)
    gates = ", ".join(f"{k}={v}" for k, v in oracle_gates().items())
    one_worker = (" (with one worker: the floor of a sequential replay, not of these parallel ones)"
                  if results.get("workers", 1) > 1 else "")
    return (
        f"Floor: an oracle that knows every final loss but keeps the optlaws pruner's gates ({gates}: "
        "min_reports counted past the law's initial transient: the first runs and every run that is best so "
        f"far complete, every other run is pruned at its first report past the gates) trains "
        f"{100 * trained / full:.1f}% of the steps in these orders ({per}){one_worker}. "
        "No pruner with these gates can go lower; in small groups most runs must complete."
    )


def format_group_table(results: dict[str, Any]) -> str:
    """Per group and pruner: steps share, best-run survival, worst regret (Markdown)."""
    lines = ["| group | runs | best run | orders | pruner | steps trained | best survived | regret worst (nats) |",
             "|---|---|---|---|---|---|---|---|"]
    for gi, g in enumerate(results["groups"]):
        for name, r in results["pruners"].items():
            pg = r["per_group"][gi]
            lines.append(
                f"| {g['group']} | {len(g['runs'])} | {g['best_run']} | {pg['orders']} | {name} | "
                f"{100 * pg['steps_trained'] / pg['steps_full']:.1f}% | {pg['best_survived']}/{pg['orders']} | "
                f"{max(pg['regrets']):.4f} |"
            )
    return "\n".join(lines)


def write_results(out_dir: str | Path, results: dict[str, Any], command: str) -> None:
    """Write ``results.json`` and a ``README.md`` (the command, the tables) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = _finite_or_none({"command": command, **results})
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=_json_default, allow_nan=False) + "\n")
    groups = "\n".join(
        f"- {g['group']}: {len(g['runs'])} runs, {g['orders']} orders, best run {g['best_run']}, "
        f"reports every {g['report_steps']['every']} steps from step {g['report_steps']['first']}"
        for g in results["groups"]
    )
    machine = results.get("machine", {})
    settings = "\n".join(f"- `{name}`: {r['settings']}" for name, r in results["pruners"].items())
    sources = "".join(
        f"- {part['label']}: `{part['command']}`\n" for part in results.get("combined_from", [])
    )
    if sources:
        sources = "\nCombined from these replays' `results.json`, each written by its command:\n\n" + sources
    text = f"""# Pruner replay: {results.get('curves', '')}

Written by the command below; do not edit by hand.

```
{command}
```
{sources}
Each logged run is replayed as a trial of a real Optuna study (`trial.report(loss, step)` then
`trial.should_prune()` on each report); a study holds only one group of comparable runs, and each
group is replayed in several trial orders (all orders when a group has few enough runs).
Steps trained: optimizer steps trained up to the pruning report, or the whole horizon; share of
the steps of no pruning. Best run survived: the group's lowest-final-loss run completed.
Regret: final loss of the best completed run minus the group's best final loss (nats; inf
when every run of a study was pruned or failed).
{_workers_line(results)}
Machine: {machine.get('platform')}, {machine.get('cpu_count')} CPUs, 1-minute load average
{machine.get('load_average_1min_at_start')} at the start (wall time depends on the load; CPU time is this
process's).

Groups (grouped by {', '.join(results['group_by']) or 'none'}; each group reports on one grid of steps, losses
linearly interpolated between a run's logged points where its logs are off that grid):

{groups}
{_lineage_line(results)}
{format_table(results)}

{target_line(results)}

{oracle_line(results)}

Pruner settings (T: the group's horizon in steps):

{settings}

## Per group

{format_group_table(results)}
"""
    (out / "README.md").write_text(text)


def _workers_line(results: dict[str, Any]) -> str:
    k = int(results.get("workers", 1))
    if k <= 1:
        return ""
    return (f"\nWorkers: {k} runs train at once (parallel workers sharing each study; time counted in optimizer "
            "steps, each worker taking the next run of the order when its trial ends), so a trial is checked "
            "while others are still running, and the frontier may come from a running trial's prediction.\n")


def _lineage_line(results: dict[str, Any]) -> str:
    """What the README says about continued runs (empty for runs trained from scratch)."""
    parent, left = results.get("parent"), results.get("left_out") or []
    skipped = f" Left out (trained from scratch): {', '.join(left)}." if left else ""
    if parent:
        return (f"\nEvery run continues run {parent['run']} from its step {parent['resume_step']}: each study "
                "declares it with `set_parent_run`, so the law predicts the trials from the parent's state."
                f"{skipped}\n")
    if results.get("continued_from_scratch"):
        return (f"\nThe continued runs are replayed as runs from scratch (`--no-parent`): no study declares "
                f"their parent run.{skipped}\n")
    return ""


def _finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (strict JSON has no inf)."""
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, (float, np.floating)) and not math.isfinite(obj):
        return None
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
