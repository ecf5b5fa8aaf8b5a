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

Continued runs (``resume_from``, a fine-tuning sweep's log) are added to a study whose
trials continue their parent (:func:`~optuna_optlaws.set_parent_run`): when the study has
no parent yet and no reports, the runs' parent, which must be in ``curves``, becomes the
study's parent (it is not added as a trial); runs that do not continue the study's parent
from its resume step (those trained from scratch, in such a study) are left out.

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

    from optuna_optlaws.parent_run import ParentRun

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
    parent: str | None = None
    """The run the study's trials continue, when the runs are continued ones."""
    parent_set: bool = False
    """Whether this call made ``parent`` the study's parent run."""
    not_continuing: list[str] = field(default_factory=list)
    """Runs left out because they do not continue the study's parent run."""


def add_logged_runs(study: optuna.Study, curves: Sequence[Curve]) -> AddedRuns:
    """Add each of ``curves`` to ``study`` as a finished trial (see the module docstring).

    Raises :class:`InputError`, before adding anything, when the study does not minimise
    one objective (the runs' value is a loss), or continued runs do not fit the study:
    runs that continue different runs (or one run from different steps), a parent that is
    neither the study's nor among ``curves``, a study of runs from scratch (trials that
    reported without a parent run)."""
    import optuna

    from optuna_optlaws.parent_run import get_parent_run, set_parent_run
    from optuna_optlaws.trial_schedule import set_schedule

    if len(study.directions) != 1 or study.direction != optuna.study.StudyDirection.MINIMIZE:
        raise InputError(f"study {study.study_name!r}: logged runs add only to a study that minimises one loss")
    out = AddedRuns()
    parent = get_parent_run(study)
    new_parent = _parent_of(study, curves, parent)
    if new_parent is not None:
        parent_curve, resume_step = new_parent
        set_parent_run(study, parent_curve, resume_step=resume_step)
        parent, out.parent_set = get_parent_run(study), True
    if parent is not None:
        out.parent = parent.run_id
        keep = [c for c in curves if c.resume_from == parent.run_id and c.resume_step == parent.resume_step]
        kept = {c.run_id for c in keep}
        out.not_continuing = [c.run_id for c in curves if c.run_id != parent.run_id and c.run_id not in kept]
        curves = keep
    present = {
        str(t.user_attrs[RUN_ID_ATTR]) for t in study.get_trials(deepcopy=False) if RUN_ID_ATTR in t.user_attrs
    }
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


def _parent_of(
    study: optuna.Study, curves: Sequence[Curve], parent: ParentRun | None
) -> tuple[Curve, int] | None:
    """The parent run (and resume step) to set on ``study`` before adding ``curves``:
    ``None`` when they hold no continued run or the study's parent is theirs; InputError
    when their continued runs cannot join the study."""
    from optuna_optlaws.parent_run import has_reports

    starts = {(c.resume_from, c.resume_step) for c in curves if c.resume_from is not None}
    if not starts:
        return None
    if len(starts) > 1:
        shown = ", ".join(f"{p!r} at step {k}" for p, k in sorted(starts, key=str))
        raise InputError(f"the continued runs resume from several runs or steps ({shown}); a study's trials "
                         "continue one run from one step")
    ((parent_id, resume_step),) = starts
    if parent is not None:
        if (parent.run_id, parent.resume_step) != (parent_id, resume_step):
            raise InputError(
                f"the runs continue {parent_id!r} at step {resume_step}, but the trials of study "
                f"{study.study_name!r} continue {parent.run_id!r} at step {parent.resume_step}"
            )
        return None
    found = [c for c in curves if c.run_id == parent_id]
    if not found:
        raise InputError(f"the runs continue {parent_id!r}, which is neither in the file nor the parent run of "
                         f"study {study.study_name!r}; add the parent's curve to the file")
    if has_reports(study):
        raise InputError(f"the runs continue {parent_id!r}, but study {study.study_name!r} already holds runs "
                         "from scratch; add them to a new study")
    return found[0], int(resume_step or 0)
