"""Studies whose trials all continue one pretrained run: fine-tuning and continual
pre-training sweeps.

A fine-tuning sweep trains every trial from the same checkpoint: the trials' schedules
are what happens *after* the parent run, and the loss they start from, and how fast it
falls, depend on the state the parent left (its schedule, its LR at the checkpoint). The
Opt-Law predicts such continued runs from the parent's state (:mod:`optuna_optlaws.laws.
_optlaw_lineage`); :func:`set_parent_run` tells the study's sampler and pruner about the
parent::

    parent = read_curves_csv("pretrain.csv")[0]          # the pretraining run's log
    study = optuna.create_study(storage=..., sampler=OptLawsSampler(), pruner=OptLawsPruner())
    set_parent_run(study, parent)                         # before the first trial
    study.optimize(objective)                             # each trial loads the checkpoint

The parent (its schedule, its logged losses thinned to at most ``max_points``, its model
size and tokens per step) is stored in the study's system attributes, so every worker
process reads the same one. Each trial reports its own steps from 0 (as a continued run
in a curves file does); a trial that states no ``model_size`` or ``tokens_per_step``
trains the parent's. With the Opt-Law, the study's law is then fitted on the parent's
curve and on the trials' curves, each trial continuing the parent from ``resume_step``,
and every prediction of the sampler, the pruner and its calibration is of a continued
run (:class:`ContinuedRunsLaw`). Laws without a parent state (``multipower``,
``momentum``) fit and predict the trials from their own step 0, as if from scratch.

A study's parent is set once, before any trial reports: the stored fits of the study
would otherwise mix two readings of the same curves. Setting the same parent again (every
worker calling it at start, or a restart) changes nothing.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from optuna_optlaws._errors import InputError
from optuna_optlaws.curves import Curve, evenly_spaced
from optuna_optlaws.laws import Law, Prediction
from optuna_optlaws.schedules import Schedule

if TYPE_CHECKING:
    import optuna

    from optuna_optlaws.laws.optlaw import OptLaw

__all__ = [
    "PARENT_KEY", "ContinuedRunsLaw", "ParentRun", "fit_curves", "get_parent_run", "prior_seen_by_study",
    "seen_by_study", "set_parent_run",
]

PARENT_KEY = "optlaws:parent"
"""Study system attribute: the run every trial of the study continues (see :func:`set_parent_run`)."""

MAX_PARENT_POINTS = 256
"""Default ``max_points`` of :func:`set_parent_run`: the parent's logged losses kept (the
law's fit thins every curve to 128 points anyway)."""


@dataclass(frozen=True)
class ParentRun:
    """The run a study's trials continue: its curve (schedule from its own step 0, logged
    losses, sizes) and the parent's step whose state every trial starts from."""

    curve: Curve
    resume_step: int

    @property
    def run_id(self) -> str:
        """The parent's run id (a law's fitted run of that id is the parent)."""
        return self.curve.run_id

    def continued(self, curve: Curve) -> Curve:
        """``curve`` (a trial's, its own steps from 0) as a run continued from the parent;
        a size the trial does not state is the parent's (it trains the parent's model)."""
        model_size, tokens_per_step = self.sizes(curve.model_size, curve.tokens_per_step)
        return replace(
            curve, resume_from=self.run_id, resume_step=self.resume_step, model_size=model_size,
            tokens_per_step=tokens_per_step,
        )

    def sizes(self, model_size: float | None, tokens_per_step: float | None) -> tuple[float | None, float | None]:
        """A continued run's ``(model_size, tokens_per_step)``: the parent's where not given."""
        return (
            self.curve.model_size if model_size is None else model_size,
            self.curve.tokens_per_step if tokens_per_step is None else tokens_per_step,
        )

    def to_record(self) -> dict[str, Any]:
        """The JSON-ready form stored under :data:`PARENT_KEY`."""
        c = self.curve
        return {
            "run_id": c.run_id,
            "schedule": c.schedule.to_json(),
            "steps": [int(s) for s in c.steps],
            "losses": [float(v) for v in c.losses],
            "model_size": c.model_size,
            "tokens_per_step": c.tokens_per_step,
            "resume_step": self.resume_step,
        }

    @classmethod
    def from_record(cls, record: Any) -> ParentRun:
        """Read :meth:`to_record`'s output; InputError naming the attribute when it is corrupt."""
        where = f"study attribute {PARENT_KEY!r}"
        try:
            curve = Curve(
                str(record["run_id"]),
                Schedule.from_json(record["schedule"]),
                np.asarray(record["steps"], dtype=np.int64),
                np.asarray(record["losses"], dtype=np.float64),
                model_size=_size_or_none(record.get("model_size")),
                tokens_per_step=_size_or_none(record.get("tokens_per_step")),
            )
            return cls(curve, int(record["resume_step"]))
        except InputError as exc:
            raise InputError(f"{where} is corrupt ({exc})") from None
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise InputError(f"{where} is corrupt ({type(exc).__name__}: {exc})") from None


def _size_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def set_parent_run(
    study: optuna.Study, parent: Curve, *, resume_step: int | None = None, max_points: int = MAX_PARENT_POINTS
) -> None:
    """Declare that every trial of ``study`` continues run ``parent`` from its state after
    its step ``resume_step`` (default: the parent's last step, ``total_steps - 1``).

    ``parent``: the parent run's curve (its whole schedule from its own step 0, its logged
    losses in nats, ``model_size`` and ``tokens_per_step``), e.g. read from a curves file
    with :func:`~optuna_optlaws.read_curves_csv`; trained from scratch (a parent that
    itself continues a run is not supported). Its finite losses are kept, thinned to at
    most ``max_points`` evenly spaced ones (the last one always kept).

    Raises :class:`InputError` (nothing stored) when the parent continues another run, the
    resume step is not one of the parent's steps, the study already has another parent,
    or a trial of the study has already reported (call it before the first trial)."""
    if not isinstance(parent, Curve):
        raise InputError(f"set_parent_run: expected the parent's Curve, got {type(parent).__name__}")
    if parent.resume_from is not None:
        raise InputError(
            f"set_parent_run: run {parent.run_id!r} itself continues {parent.resume_from!r}; the parent must be "
            "trained from scratch"
        )
    step = parent.schedule.total_steps - 1 if resume_step is None else resume_step
    if not (isinstance(step, (int, np.integer)) and 0 <= step < parent.schedule.total_steps):
        raise InputError(
            f"set_parent_run: resume_step={resume_step!r} is not a step of run {parent.run_id!r} "
            f"(0 .. {parent.schedule.total_steps - 1})"
        )
    if not (isinstance(max_points, int) and max_points >= 1):
        raise InputError(f"set_parent_run: max_points={max_points!r} must be an int >= 1")
    ok = parent.finite
    steps, losses = parent.steps[ok], parent.losses[ok]
    if steps.size > max_points:
        idx = evenly_spaced(steps.size, max_points)
        steps, losses = steps[idx], losses[idx]
    record = ParentRun(replace(parent, steps=steps, losses=losses, batch_size=None), int(step)).to_record()
    storage, study_id = study._storage, study._study_id
    stored = storage.get_study_system_attrs(study_id).get(PARENT_KEY)
    if stored is not None:
        if stored == record:
            return
        raise InputError(
            f"set_parent_run: study {study.study_name!r} already continues run "
            f"{stored.get('run_id') if isinstance(stored, dict) else '?'!r}; a study's parent is set once"
        )
    if has_reports(study):
        raise InputError(
            f"set_parent_run: study {study.study_name!r} already has trials with reports; set the parent run "
            "before the first trial"
        )
    storage.set_study_system_attr(study_id, PARENT_KEY, record)
    _SEEN.pop(storage, None)


_SEEN: weakref.WeakKeyDictionary[Any, dict[int, ParentRun | None]] = weakref.WeakKeyDictionary()
"""storage -> {study id: its parent run}: read once per process (a parent never changes
once a trial has reported)."""


def get_parent_run(study: optuna.Study) -> ParentRun | None:
    """The run ``study``'s trials continue, or ``None``; :class:`InputError` when the
    stored parent is corrupt. Read from storage once per process and study; a study
    without a parent is read again until one of its trials has reported."""
    storage, study_id = study._storage, study._study_id
    seen = _SEEN.setdefault(storage, {})
    if study_id in seen:
        return seen[study_id]
    stored = storage.get_study_system_attrs(study_id).get(PARENT_KEY)
    parent = None if stored is None else ParentRun.from_record(stored)
    if parent is not None or has_reports(study):
        seen[study_id] = parent
    return parent


def has_reports(study: optuna.Study) -> bool:
    """Whether a trial of ``study`` has reported (after which its parent run is fixed)."""
    return any(t.intermediate_values for t in study.get_trials(deepcopy=False))


class ContinuedRunsLaw(Law):
    """A fitted Opt-Law as a study with a parent run sees it: every schedule it is asked
    about is a run continued from ``parent`` (its own steps from 0). It predicts only;
    the law it wraps was fitted on the parent's curve and the trials' continued curves."""

    name = "optlaw"

    def __init__(self, law: OptLaw, parent: ParentRun) -> None:
        super().__init__()
        self.base = law
        """The wrapped law (fitted with the parent among its runs)."""
        self.parent = parent
        self.fit_info = law.fit_info
        self.fitted_on = law.fitted_on
        self.interval_level = law.interval_level

    def fit(self, curves: Sequence[Curve], *, seed: int = 0) -> ContinuedRunsLaw:
        """Not supported: fit the wrapped law on the parent and the continued curves."""
        raise InputError("ContinuedRunsLaw only predicts; fit the Opt-Law on the parent and its continued runs")

    def predict(
        self,
        schedule: Schedule,
        steps: ArrayLike | None = None,
        *,
        model_size: float | None = None,
        tokens_per_step: float | None = None,
        observed: Curve | None = None,
    ) -> Prediction:
        """Loss (nats) at ``steps`` (the run's own, default its last) of a run that continues
        the parent under ``schedule``; conditioned on the run's own prefix ``observed``. A
        size not given is the parent's."""
        model_size, tokens_per_step = self.parent.sizes(model_size, tokens_per_step)
        return self.base.predict(
            schedule, steps, model_size=model_size, tokens_per_step=tokens_per_step, observed=observed,
            resume_from=self.parent.run_id, resume_step=self.parent.resume_step,
        )

    def predict_final(
        self,
        schedules: Sequence[Schedule],
        *,
        model_size: float | None = None,
        tokens_per_step: float | None = None,
    ) -> Prediction:
        """Final loss (nats) of many runs continuing the parent, one per schedule
        (vectorised). A size not given is the parent's."""
        model_size, tokens_per_step = self.parent.sizes(model_size, tokens_per_step)
        return self.base.predict_final(
            schedules, model_size=model_size, tokens_per_step=tokens_per_step,
            resume_from=self.parent.run_id, resume_step=self.parent.resume_step,
        )

    def _state(self) -> dict[str, Any]:
        return self.base._state()

    def _load_state(self, state: Any) -> None:
        raise InputError("ContinuedRunsLaw is not loaded from a law file; load the Opt-Law it wraps")

    @property
    def is_fitted(self) -> bool:
        """Whether the wrapped law is fitted."""
        return self.base.is_fitted

    def check_sizes(self, model_size: float | None, where: str = "") -> None:
        """As the wrapped law."""
        self.base.check_sizes(model_size, where)



def fit_curves(parent: ParentRun | None, curves: Sequence[Curve], law_name: str) -> list[Curve]:
    """What a law of ``law_name`` is fitted on for a study's trial ``curves``: with a
    parent and the Opt-Law, the parent's curve and every trial as a run continuing it;
    otherwise the trials' own curves (laws without parent state fit them from step 0)."""
    if parent is None or law_name != ContinuedRunsLaw.name:
        return list(curves)
    return [parent.curve, *(parent.continued(c) for c in curves)]


def seen_by_study(law: Law, parent: ParentRun | None) -> Law:
    """A fitted law as a study with ``parent`` sees it: an Opt-Law then predicts every
    schedule as a run continuing the parent (:class:`ContinuedRunsLaw`)."""
    from optuna_optlaws.laws.optlaw import OptLaw

    return ContinuedRunsLaw(law, parent) if parent is not None and isinstance(law, OptLaw) else law


_PRIORS_SEEN: weakref.WeakKeyDictionary[Law, tuple[ParentRun, Law]] = weakref.WeakKeyDictionary()
"""prior law -> (the parent it was last registered with, the law continuing it)."""


def prior_seen_by_study(prior: Law, parent: ParentRun | None) -> Law:
    """A law fitted elsewhere (a sampler's ``prior=``, which has never seen this study's
    parent) as a study with ``parent`` sees it: an Opt-Law then predicts every schedule
    as a run continuing the parent, from the state the parent's schedule leaves under the
    prior's own parameters (a copy of the prior with the parent registered as lineage,
    :meth:`~optuna_optlaws.laws.optlaw.OptLaw.add_lineage`; a prior run of the same id is
    replaced). Other laws, or no parent: ``prior`` itself (runs from their own step 0)."""
    from optuna_optlaws.laws.optlaw import OptLaw

    if parent is None or not isinstance(prior, OptLaw):
        return prior
    cached = _PRIORS_SEEN.get(prior)
    if cached is not None and cached[0] is parent:
        return cached[1]
    copy = Law.from_dict(prior.to_dict())
    assert isinstance(copy, OptLaw)
    copy.add_lineage([Curve(parent.run_id, parent.curve.schedule)])
    seen = ContinuedRunsLaw(copy, parent)
    _PRIORS_SEEN[prior] = (parent, seen)
    return seen
