"""Attach an LR schedule to an Optuna trial: suggest one from a search space, or set one.

The schedule is stored in the trial's system attributes in the study's storage, so the
pruner and sampler in any worker process read the same schedule; the schedule parameters
are suggested through Optuna's own distributions, so they show up in the dashboard like
any other parameter::

    def objective(trial):
        schedule = suggest_schedule(trial, total_steps=2000, warmup_steps=(0, 200),
                                    model_size=25e6, tokens_per_step=65536)
        scheduler = schedule.to_torch(optimizer)
        for step in range(schedule.total_steps):
            ...
            trial.report(loss, step)          # step = optimizer step
            if trial.should_prune():
                raise optuna.TrialPruned()
"""

from __future__ import annotations

import functools
import math
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import BaseTrial, FrozenTrial

from optuna_optlaws._errors import InputError
from optuna_optlaws._sampler._space import ScheduleSpace
from optuna_optlaws._trial_notes import add_notes
from optuna_optlaws.schedules import Schedule

SCHEDULE_KEY = "optlaws:schedule"
"""Trial system attribute: the trial's schedule as JSON (:meth:`Schedule.to_json`)."""

SPACE_KEY = "optlaws:space"
"""Trial system attribute: the search space the schedule was suggested from (a dict)."""

STUDY_SPACE_PREFIX = "optlaws:space:"
"""Study system attribute ``optlaws:space:<name>``: the search spaces seen in the study."""

MODEL_SIZE_KEY = "optlaws:model_size"
"""Trial system attribute: N, the model's number of parameters."""

TOKENS_PER_STEP_KEY = "optlaws:tokens_per_step"
"""Trial system attribute: tokens per optimizer step (D = steps x tokens_per_step)."""


def suggest_schedule(
    trial: BaseTrial,
    *,
    total_steps: int | tuple[int, int],
    families: Sequence[str] = ("cosine", "wsd", "linear", "constant"),
    peak_lr: float | tuple[float, float] = (1e-4, 1e-2),
    warmup_steps: int | tuple[int, int] = 0,
    cooldown_fraction: float | tuple[float, float] = (0.1, 0.5),
    final_lr_ratio: float | tuple[float, float] = (0.0, 0.1),
    cooldowns: Sequence[str] = ("linear",),
    name: str = "lr",
    model_size: float | None = None,
    tokens_per_step: float | None = None,
) -> Schedule:
    """Suggest an LR schedule and attach it to ``trial``.

    ``total_steps`` (the run's optimizer steps) is required. Every range is an inclusive
    ``(low, high)`` pair or a single fixed value. Parameters
    are named ``f"{name}_<field>"``: ``family`` (categorical), ``peak_lr`` (log-uniform, LR
    units), ``warmup_steps`` and ``total_steps`` (ints, optimizer steps),
    ``cooldown_fraction`` (WSD only: fraction of ``total_steps`` spent in the cooldown),
    ``cooldown`` (WSD cooldown shape, when more than one is allowed) and ``final_lr_ratio``
    (cosine, linear, WSD: final LR / peak LR).

    ``model_size`` (N, parameters) and ``tokens_per_step`` (tokens per optimizer step)
    are stored with the schedule: trials are compared by the pruner only within the same
    (N, D) group, and the law predicts with them.

    With :class:`~optuna_optlaws.OptLawsSampler` the parameters are proposed jointly by
    the fitted law; any other sampler samples them like ordinary parameters.

    A trial has one schedule: a second call with another ``name`` raises
    :class:`InputError` (a second optimizer plays the same schedule, scaled:
    ``optuna_optlaws.torch.scheduler_for(trial, optimizer, scale=...)``).
    """
    space = ScheduleSpace.create(
        name=name,
        families=families,
        peak_lr=peak_lr,
        warmup_steps=warmup_steps,
        cooldown_fraction=cooldown_fraction,
        final_lr_ratio=final_lr_ratio,
        total_steps=total_steps,
        cooldowns=cooldowns,
    )
    earlier = _system_attrs(trial).get(SPACE_KEY)
    if isinstance(earlier, dict) and earlier.get("name") != name:
        raise InputError(
            f"suggest_schedule: trial {trial.number} already has the schedule {earlier.get('name')!r}, and a "
            f"trial has one schedule (the one the law scores); for a second optimizer, play that schedule at "
            f"another LR: scheduler_for(trial, optimizer, scale=trial.suggest_float(...))"
        )
    _set_sizes(trial, model_size, tokens_per_step)  # before suggesting: the sampler reads them
    _set_trial_attr(trial, SPACE_KEY, space.to_dict())
    _register_study_space(trial, space)
    _drop_invalid_enqueued(trial, space)
    values = space.fixed_values()
    field_of = {space.param(f): f for f in values}
    for pname, dist in space.distributions(None).items():
        values[field_of[pname]] = _suggest(trial, pname, dist)
    for pname, dist in space.distributions(str(values["family"])).items():
        values[field_of[pname]] = _suggest(trial, pname, dist)
    schedule = space.build(values)
    set_schedule(trial, schedule, model_size=model_size, tokens_per_step=tokens_per_step)
    return schedule


def _drop_invalid_enqueued(trial: BaseTrial, space: ScheduleSpace) -> None:
    """Drop the enqueued (``study.enqueue_trial``) values of ``trial``'s schedule
    parameters that no schedule of ``space`` can take: a family not in the space, a
    peak LR that is not a positive number, a cooldown fraction outside [0, 1]. The sampler
    chooses those instead, so the trial runs; what was dropped is recorded on the trial
    (user attribute ``optlaws_warning``) and warned. A valid value merely outside the
    search range is kept, as Optuna keeps it (with its own warning), and noted on the
    trial too (a warmup longer than the run, say, is cut to the run)."""
    stored = _stored_trial(trial)
    fixed = getattr(stored, "_fixed_params", None)
    if not (stored is not None and isinstance(fixed, dict) and fixed):
        return
    notes = []
    base = space.fixed_values()
    field_of = {space.param(f): f for f in base}
    for family in space.families:
        for pname, dist in space.all_distributions(family).items():
            if pname not in fixed:
                continue
            values = {**base, "family": family, field_of[pname]: fixed[pname]}
            try:
                dist.to_internal_repr(fixed[pname])
                space.build(values)
            except (ValueError, TypeError) as exc:
                why = " ".join(str(exc).split())
                notes.append(f"enqueued {pname}={fixed.pop(pname)!r} ignored ({why}): the sampler chose it")
                continue
            if isinstance(dist, (FloatDistribution, IntDistribution)) and not dist.low <= fixed[pname] <= dist.high:
                notes.append(
                    f"enqueued {pname}={fixed[pname]!r} lies outside the search space [{dist.low}, {dist.high}]: "
                    "used as given (as Optuna does), the schedule built from it as it allows"
                )
    notes = list(dict.fromkeys(notes))  # a parameter shared by several families is noted once
    if notes:
        add_notes(stored, notes)
        warnings.warn(f"suggest_schedule: trial {stored.number}: {'; '.join(notes)}", stacklevel=3)


def set_schedule(
    trial: BaseTrial,
    schedule: Schedule,
    *,
    model_size: float | None = None,
    tokens_per_step: float | None = None,
) -> None:
    """Attach any schedule (a named family or a logged ``Schedule.from_knots``) to
    ``trial``, with optional model size N (parameters) and tokens per optimizer step."""
    if not isinstance(schedule, Schedule):
        raise InputError(f"set_schedule: expected a Schedule, got {type(schedule).__name__}")
    _set_trial_attr(trial, SCHEDULE_KEY, schedule.to_json())
    _set_sizes(trial, model_size, tokens_per_step)


def _set_sizes(trial: BaseTrial, model_size: float | None, tokens_per_step: float | None) -> None:
    for key, value, what in (
        (MODEL_SIZE_KEY, model_size, "model_size"),
        (TOKENS_PER_STEP_KEY, tokens_per_step, "tokens_per_step"),
    ):
        if value is None:
            continue
        try:
            fvalue = float(value)
        except (TypeError, ValueError):
            raise InputError(f"trial schedule: {what}={value!r} is not a number") from None
        if not math.isfinite(fvalue) or fvalue <= 0:
            raise InputError(f"trial schedule: {what}={value!r} must be a finite number > 0")
        _set_trial_attr(trial, key, fvalue)


def get_schedule(trial: BaseTrial | FrozenTrial) -> Schedule | None:
    """The schedule attached to ``trial`` (a live trial or a ``FrozenTrial``), or ``None``.

    Raises :class:`InputError` when the stored schedule is corrupt."""
    return stored_schedule(_system_attrs(trial), trial.number)


def get_sizes(trial: BaseTrial | FrozenTrial) -> tuple[float | None, float | None]:
    """``(model_size, tokens_per_step)`` stored with the trial's schedule (``None`` if unset)."""
    return stored_sizes(_system_attrs(trial))


def stored_schedule(attrs: Mapping[str, Any], number: int) -> Schedule | None:
    """The schedule in trial ``number``'s system attributes ``attrs``, or ``None``;
    :class:`InputError` when it is corrupt. Each distinct JSON text is parsed once."""
    text = attrs.get(SCHEDULE_KEY)
    if text is None:
        return None
    if not isinstance(text, str):
        raise InputError(f"trial {number}: stored schedule is not a JSON string")
    return _parse_schedule(text)


@functools.lru_cache(maxsize=4096)
def _parse_schedule(text: str) -> Schedule:
    return Schedule.from_json(text)


def stored_sizes(attrs: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """``(model_size, tokens_per_step)`` in a trial's system attributes ``attrs``."""
    n, tps = attrs.get(MODEL_SIZE_KEY), attrs.get(TOKENS_PER_STEP_KEY)
    return (
        float(n) if isinstance(n, (int, float)) else None,
        float(tps) if isinstance(tps, (int, float)) else None,
    )


def get_space(trial: BaseTrial | FrozenTrial) -> ScheduleSpace | None:
    """The search space ``trial``'s schedule was suggested from, or ``None``."""
    data = _system_attrs(trial).get(SPACE_KEY)
    return None if data is None else ScheduleSpace.from_dict(data)


def _suggest(trial: BaseTrial, name: str, dist: BaseDistribution) -> Any:
    """Suggest through the trial's public API, so every trial type works."""
    if isinstance(dist, CategoricalDistribution):
        try:
            return trial.suggest_categorical(name, dist.choices)  # type: ignore[arg-type]
        except ValueError as exc:
            if "dynamic value space" not in str(exc):
                raise
            raise InputError(
                f"suggest_schedule: trial {trial.number}: {name} choices {dist.choices} differ from those earlier "
                "trials of this study used, and Optuna cannot change a categorical parameter's choices within a "
                "study: keep the families (and WSD cooldown shapes) as they were, or pass another name= for the "
                "new space"
            ) from None
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    raise TypeError(f"unexpected distribution {dist!r}")


def _stored_trial(trial: BaseTrial | FrozenTrial) -> optuna.Trial | None:
    """The ``optuna.Trial`` whose storage holds ``trial``'s attributes: ``trial`` itself, or
    the trial a wrapper delegates to (optuna-integration's ``TorchDistributedTrial`` on
    rank 0); ``None`` for trials without storage (``FixedTrial``, the other ranks)."""
    if isinstance(trial, optuna.Trial):
        return trial
    delegate = getattr(trial, "_delegate", None)
    return delegate if isinstance(delegate, optuna.Trial) else None


_LOCAL_ATTRS: weakref.WeakKeyDictionary[BaseTrial, dict[str, Any]] = weakref.WeakKeyDictionary()
"""Attributes of trials without storage, kept on this process's trial object: the
objective reads its schedule back (``scheduler_for``) under ``FixedTrial`` and on every
rank of a distributed trial."""


def _system_attrs(trial: BaseTrial | FrozenTrial) -> dict[str, Any]:
    stored = _stored_trial(trial)
    if stored is not None:
        return stored.storage.get_trial_system_attrs(stored._trial_id)
    if isinstance(trial, FrozenTrial):
        return dict(trial.system_attrs)
    return dict(_LOCAL_ATTRS.get(trial, {}))


def _set_trial_attr(trial: BaseTrial, key: str, value: Any) -> None:
    stored = _stored_trial(trial)
    if stored is not None:
        stored.storage.set_trial_system_attr(stored._trial_id, key, value)
    elif isinstance(trial, FrozenTrial):
        trial.system_attrs[key] = value
    else:
        _LOCAL_ATTRS.setdefault(trial, {})[key] = value


def _register_study_space(trial: BaseTrial, space: ScheduleSpace) -> None:
    stored = _stored_trial(trial)
    if stored is None:
        return
    key = STUDY_SPACE_PREFIX + space.name
    storage, study_id = stored.storage, stored.study._study_id
    if storage.get_study_system_attrs(study_id).get(key) != space.to_dict():
        storage.set_study_system_attr(study_id, key, space.to_dict())
