"""Add runs trained outside a study (logged curves) to an Optuna study, as finished trials.

A team starting a sweep usually has runs already: the law the sampler and pruner fit can
learn from them, and the best of them sets the pruner's frontier, before the study trains
anything. Each run becomes one trial with its schedule, model size and tokens per step
attached (as :func:`~optuna_optlaws.set_schedule` attaches them) and its losses as the
trial's intermediate values (``trial.report(loss, step)``, step = optimizer step):

* ``COMPLETE``, its value the loss at the schedule's last step, when the run reached it
  with a finite loss;
* ``PRUNED`` otherwise (a run stopped early, or one whose last loss is NaN or inf): the
  law still learns from its prefix, and a diverged run is not a frontier. Its value is
  its last loss unless NaN, as Optuna sets a pruned trial's.

The run id is kept as the trial's user attribute ``optlaws_run_id``; adding the same runs
again adds nothing (``optlaws export`` names the trials it writes ``trial_<number>``, so a
study exported and added to another one keeps its run ids). Trials carry no parameters:
a sampler that only learns from parameters (TPE) ignores them, ``OptLawsSampler`` and
``OptLawsPruner`` read their schedules and curves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from optuna_optlaws._errors import InputError
from optuna_optlaws.curves import Curve

if TYPE_CHECKING:
    import optuna

RUN_ID_ATTR = "optlaws_run_id"
"""Trial user attribute: the run id of a logged run added by :func:`add_logged_runs`."""


@dataclass
class AddedRuns:
    """What :func:`add_logged_runs` did, by run id: the runs added as complete and as
    pruned trials (with their trial numbers), and those left out, with why."""

    complete: dict[str, int] = field(default_factory=dict)
    pruned: dict[str, int] = field(default_factory=dict)
    already_in_study: list[str] = field(default_factory=list)
    no_loss: list[str] = field(default_factory=list)


def add_logged_runs(study: optuna.Study, curves: Sequence[Curve]) -> AddedRuns:
    """Add each of ``curves`` to ``study`` as a finished trial (see the module docstring).

    Raises :class:`InputError`, before adding anything, when the study does not minimise
    one objective (the runs' value is a loss), or a run continues another run
    (``resume_from``: a trial trains from scratch, so it could not hold the parent's state)."""
    import optuna

    from optuna_optlaws.trial_schedule import set_schedule

    if len(study.directions) != 1 or study.direction != optuna.study.StudyDirection.MINIMIZE:
        raise InputError(f"study {study.study_name!r}: logged runs add only to a study that minimises one loss")
    for curve in curves:
        if curve.resume_from is not None:
            raise InputError(
                f"run {curve.run_id!r} continues run {curve.resume_from!r} (resume_from): a study's trials train "
                "from scratch, so a continued run cannot be added as one"
            )
    present = {
        str(t.user_attrs[RUN_ID_ATTR]) for t in study.get_trials(deepcopy=False) if RUN_ID_ATTR in t.user_attrs
    }
    out = AddedRuns()
    for curve in curves:
        if curve.run_id in present:
            out.already_in_study.append(curve.run_id)
            continue
        if curve.steps.size == 0:
            out.no_loss.append(curve.run_id)
            continue
        last_step, last_loss = int(curve.steps[-1]), float(curve.losses[-1])
        finished = last_step >= curve.schedule.total_steps - 1 and math.isfinite(last_loss)
        trial = optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE if finished else optuna.trial.TrialState.PRUNED,
            value=None if math.isnan(last_loss) else last_loss,  # a pruned trial's too, as Optuna's tell sets it
            intermediate_values={int(s): float(v) for s, v in zip(curve.steps, curve.losses, strict=True)},
            user_attrs={RUN_ID_ATTR: curve.run_id},
        )
        set_schedule(trial, curve.schedule, model_size=curve.model_size, tokens_per_step=curve.tokens_per_step)
        trial._validate()  # what study.add_trial checks; the storage call below returns the trial's id
        trial_id = study._storage.create_new_trial(study._study_id, template_trial=trial)
        number = study._storage.get_trial_number_from_id(trial_id)
        (out.complete if finished else out.pruned)[curve.run_id] = number
        present.add(curve.run_id)
    return out
