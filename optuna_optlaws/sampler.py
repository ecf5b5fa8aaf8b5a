"""OptLawsSampler: propose LR schedules with a law fitted on the study's curves.

Schedule parameters (those :func:`~optuna_optlaws.suggest_schedule` registers) are proposed
*jointly*: when a trial asks for its first schedule parameter, the sampler fits (or reuses)
the study's law, scores many quasi-random candidate schedules from the search space with
``law.predict_final`` and picks one by an acquisition over the law's predictive
distribution (lower confidence bound by default, Thompson sampling, or expected
improvement beyond a margin the user does not care about), after correcting
the law by a Gaussian process on its errors on the study's finished trials; the trial's
other schedule parameters then take that candidate's values. While the study has fewer
than ``n_startup_trials`` COMPLETE curves and no ``prior`` law, schedules come from a
seeded space-filling (Sobol) sequence instead. Every other parameter goes to
``inner_sampler`` (TPE by default).

The fitted law is the same one the :class:`~optuna_optlaws.OptLawsPruner` uses (stored in
the study's storage), so sampler and pruner, in any worker, agree on it.

A caveat: when ``total_steps`` is searched, the sampler minimises predicted final loss,
which favours the longest runs; compare schedules at a fixed number of steps (or tokens).
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from optuna_optlaws._errors import InputError
from optuna_optlaws._pruner._frontier import stale_trial_ids
from optuna_optlaws._sampler._acquisition import ACQUISITIONS, Proposal, propose, startup_point
from optuna_optlaws._sampler._residual import observations, running_schedules
from optuna_optlaws._sampler._space import ScheduleSpace
from optuna_optlaws._study_state import (
    LawStore,
    PicklesWithoutMemos,
    readable_schedule,
    resolve_prior,
    resolve_transfer_prior,
    trial_sizes,
)
from optuna_optlaws._trial_notes import add_stored_notes
from optuna_optlaws.laws import DEFAULT_LAW, law_class
from optuna_optlaws.laws.optlaw import PRIOR_SD
from optuna_optlaws.schedules import Schedule
from optuna_optlaws.trial_schedule import SPACE_KEY, STUDY_SPACE_PREFIX

if TYPE_CHECKING:
    from optuna_optlaws.laws import Law

__all__ = ["OptLawsSampler"]

_log = optuna.logging.get_logger(__name__)

PROPOSAL_KEY = "optlaws:proposal"
"""Trial system attribute: how the trial's schedule was proposed (source, predicted mean
and sigma in nats), for the dashboard and for debugging."""


class OptLawsSampler(PicklesWithoutMemos, BaseSampler):
    """A sampler that proposes LR schedules by a fitted loss-vs-schedule law.

    Args:
        law: Name of the law fitted on the study's curves (``"optlaw"``, ``"multipower"``,
            ``"momentum"``).
        prior: A fitted law (a :class:`~optuna_optlaws.laws.Law` or a law file path),
            used to propose schedules until the study has ``n_startup_trials`` COMPLETE
            curves of its own. In a study with a parent run (:func:`~optuna_optlaws.
            set_parent_run`) an Opt-Law prior predicts each schedule as a run continuing
            the parent (:func:`~optuna_optlaws.parent_run.prior_seen_by_study`).
        transfer_prior: An Opt-Law fitted on the same model and optimiser elsewhere (a
            law file path or an :class:`~optuna_optlaws.OptLaw`: the pretraining sweep,
            before fine-tuning) that the study's own fits are drawn towards; as in
            :class:`~optuna_optlaws.OptLawsPruner`, with which it shares the stored fit.
        transfer_prior_sd: See :class:`~optuna_optlaws.OptLawsPruner`.
        inner_sampler: Sampler for every parameter that is not a schedule parameter
            (default: ``TPESampler(seed=seed)``).
        n_startup_trials: COMPLETE curves the study needs before its own law proposes
            schedules (before that: the prior, or a space-filling Sobol sequence).
        n_candidates: Quasi-random candidate schedules scored per proposal.
        acquisition: ``"lcb"`` (minimise ``mean - kappa * sigma``), ``"thompson"``, or
            ``"ei"`` (maximise the expected improvement on the best COMPLETE trial's final
            loss minus ``min_improvement``).
        kappa: Exploration weight of the lower confidence bound (sigmas).
        min_improvement: Nats by which ``"ei"`` asks a candidate to beat the best COMPLETE
            trial: set it to the :class:`~optuna_optlaws.OptLawsPruner`'s ``tolerance``, so
            that trials are not spent on schedules predicted to tie with the best, which
            that pruner would neither prune early nor keep for a gain you care about.
        seed: Seed; with the same seed and the same study history, proposals repeat.
        refit_growth: Refit the law when the study's finished trials (at least one more)
            or reported points grew by this fraction since the last fit.
        max_fit_points: Each curve is thinned to at most this many points for the fit.
        correct_residuals: Correct the law's predictions with a Gaussian process fitted
            on its errors on the study's finished trials (COMPLETE: last reported loss;
            PRUNED: the final loss predicted from its reported prefix), so that a law biased
            on part of the search space does not keep the search there. ``False``
            scores candidates with the law alone.
        consider_running: With several workers, other trials are RUNNING when a schedule
            is proposed: that Gaussian process then believes each ends where it predicts
            (a "kriging believer"), so candidates near a schedule being trained lose their
            exploration bonus and the workers spread out instead of training near copies
            of one schedule (Optuna's ``constant_liar`` does this for TPE). A trial whose
            worker stopped beating (Optuna's heartbeat) is not counted. It changes nothing
            in a study with one worker (no other trial runs while one is proposed);
            ``False`` ignores running trials.
    """

    _process_memos = ("_proposals",)  # per process only; the copy a pickle makes starts it empty

    def __init__(
        self,
        law: str = DEFAULT_LAW,
        *,
        prior: str | Path | Law | None = None,
        transfer_prior: str | Path | Law | None = None,
        transfer_prior_sd: float = PRIOR_SD,
        inner_sampler: BaseSampler | None = None,
        n_startup_trials: int = 4,
        n_candidates: int = 256,
        acquisition: str = "lcb",
        kappa: float = 1.0,
        min_improvement: float = 0.0,
        seed: int | None = None,
        refit_growth: float = 0.25,
        max_fit_points: int = 128,
        correct_residuals: bool = True,
        consider_running: bool = True,
    ) -> None:
        law_class(law, where="OptLawsSampler(law=...)")
        if acquisition not in ACQUISITIONS:
            raise InputError(f"OptLawsSampler: acquisition={acquisition!r} is not one of {ACQUISITIONS}")
        if not (isinstance(n_startup_trials, int) and n_startup_trials >= 1):
            raise InputError(f"OptLawsSampler: n_startup_trials={n_startup_trials!r} must be an int >= 1")
        if not (isinstance(n_candidates, int) and n_candidates >= 1):
            raise InputError(f"OptLawsSampler: n_candidates={n_candidates!r} must be an int >= 1")
        if not (isinstance(kappa, (int, float)) and math.isfinite(kappa) and kappa >= 0):
            raise InputError(f"OptLawsSampler: kappa={kappa!r} must be a finite number >= 0")
        if not (isinstance(min_improvement, (int, float)) and math.isfinite(min_improvement) and min_improvement >= 0):
            raise InputError(f"OptLawsSampler: min_improvement={min_improvement!r} must be a finite number >= 0 (nats)")
        if inner_sampler is not None and not isinstance(inner_sampler, BaseSampler):
            raise InputError(f"OptLawsSampler: inner_sampler={inner_sampler!r} is not an Optuna sampler")
        self._seed = int(np.random.SeedSequence(seed).generate_state(1)[0]) if seed is None else int(seed)
        self._inner = inner_sampler if inner_sampler is not None else TPESampler(seed=seed)
        self._store = LawStore(
            law,
            prior=resolve_prior(prior, "OptLawsSampler(prior=...)"),
            transfer_prior=resolve_transfer_prior(
                transfer_prior, transfer_prior_sd, law, "OptLawsSampler(transfer_prior=...)"
            ),
            transfer_prior_sd=float(transfer_prior_sd),
            min_complete=n_startup_trials,
            refit_growth=float(refit_growth),
            max_points=max_fit_points,
        )
        self._n_candidates = n_candidates
        self._acquisition = acquisition
        self._kappa = float(kappa)
        self._min_improvement = float(min_improvement)
        self._correct = bool(correct_residuals)
        self._consider_running = bool(consider_running)
        self._proposals: weakref.WeakKeyDictionary[Any, dict[tuple[int, str], Proposal]] = (
            weakref.WeakKeyDictionary()
        )
        self._warned: set[str] = set()

    @property
    def law_store(self) -> LawStore:
        """The fitted-law store (fit counts and seconds, for benchmarks)."""
        return self._store

    # ------------------------------------------------------------------ BaseSampler
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        space = self._inner.infer_relative_search_space(study, trial)
        if not space:
            return space
        mine = _schedule_param_names(study)
        return {k: v for k, v in space.items() if k not in mine}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        space = _trial_space(trial)
        if space is not None and param_name in space.param_names:
            proposal = self._proposal(study, trial, space)
            value = space.params_of(proposal.values).get(param_name)
            if value is not None and param_distribution._contains(param_distribution.to_internal_repr(value)):
                return value
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner.before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        memo = self._proposals.get(study._storage)
        if memo is not None:
            for key in [k for k in memo if k[0] == trial._trial_id]:
                del memo[key]
        if state == TrialState.COMPLETE:
            self._check_report_steps(trial)
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._seed = int(np.random.SeedSequence().generate_state(1)[0])
        self._inner.reseed_rng()

    # ------------------------------------------------------------------ proposals
    def _proposal(self, study: optuna.Study, trial: FrozenTrial, space: ScheduleSpace) -> Proposal:
        memo = self._proposals.setdefault(study._storage, {})
        key = (trial._trial_id, space.name)
        if key in memo:
            return memo[key]
        proposal = self._make_proposal(study, trial, space)
        memo[key] = proposal
        record: dict[str, str | float | None] = {
            "source": proposal.source,
            "pred_final": proposal.mean if math.isfinite(proposal.mean) else None,
            "pred_sigma": proposal.sigma if math.isfinite(proposal.sigma) else None,
        }
        study._storage.set_trial_system_attr(trial._trial_id, PROPOSAL_KEY, record)
        return proposal

    def _make_proposal(self, study: optuna.Study, trial: FrozenTrial, space: ScheduleSpace) -> Proposal:
        if len(study.directions) > 1 or study.direction != StudyDirection.MINIMIZE:
            what = (f"has {len(study.directions)} objectives" if len(study.directions) > 1
                    else "maximises its objective")
            self._warn_once(
                "direction",
                f"OptLawsSampler scores schedules by one final loss to minimise; this study {what}, so its "
                "schedules come from a space-filling (Sobol) sequence and other parameters from the inner sampler",
            )
            return startup_point(space, self._seed, trial.number)
        trials = study.get_trials(deepcopy=False)
        state = self._store.get(study, trials)
        if state.note:  # a corrupt stored law refitted, a corrupt parent: said on the trial it happened in
            add_stored_notes(study._storage, trial, [state.note])
        if state.law is None:
            return startup_point(space, self._seed, trial.number)
        model_size, tokens_per_step = trial_sizes(trial)
        try:
            seen = (
                observations(study._storage, trials, state.law, model_size, tokens_per_step)
                if self._correct or self._acquisition == "ei"
                else None
            )
            return propose(
                space,
                state.law,
                seed=self._seed,
                trial_number=trial.number,
                n_candidates=self._n_candidates,
                acquisition=self._acquisition,
                kappa=self._kappa,
                model_size=model_size,
                tokens_per_step=tokens_per_step,
                observed=seen if self._correct else None,
                incumbent=math.inf if seen is None else seen.incumbent,
                min_improvement=self._min_improvement,
                pending=self._running(study, trials, trial.number, model_size, tokens_per_step),
            )
        except Exception as exc:  # a law that cannot score must never lose the trial
            self._warn_once(
                f"predict:{type(exc).__name__}",
                f"OptLawsSampler: law cannot score schedules ({exc}); using Sobol points",
            )
            return startup_point(space, self._seed, trial.number)

    def _running(
        self,
        study: optuna.Study,
        trials: Sequence[FrozenTrial],
        number: int,
        model_size: float | None,
        tokens_per_step: float | None,
    ) -> list[Schedule]:
        """Schedules other workers are training now (RUNNING trials other than ``number``,
        of the same sizes, whose worker, when Optuna's heartbeat is on, still beats); none
        unless ``consider_running``."""
        if not (self._consider_running and self._correct):
            return []
        if not any(t.state == TrialState.RUNNING and t.number != number for t in trials):
            return []
        gone = stale_trial_ids(study._storage, study._study_id)
        return running_schedules(trials, number, model_size, tokens_per_step, exclude_ids=gone)

    def _check_report_steps(self, trial: FrozenTrial) -> None:
        """Warns once when a COMPLETE trial's reports stop before half of its schedule: its
        steps are then not optimizer steps (an epoch-level reporter), the law is fitted on
        losses at the wrong steps and the pruner never acts."""
        if not trial.intermediate_values:
            return
        schedule = readable_schedule(trial)
        last = max(trial.intermediate_values)
        if schedule is not None and last + 1 < schedule.total_steps / 2:
            self._warn_once(
                "report_steps",
                f"OptLawsSampler: trial {trial.number} reported up to step {last} of a {schedule.total_steps}-step "
                "schedule: report steps must be 0-based optimizer steps (epoch-level reporters such as "
                "PyTorchLightningPruningCallback report epochs); use optuna_optlaws.torch.LossReporter",
            )

    def _warn_once(self, key: str, message: str) -> None:
        """Warns (``UserWarning``) and logs ``message`` the first time ``key`` comes up."""
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)
            _log.warning(message)


def _trial_space(trial: FrozenTrial) -> ScheduleSpace | None:
    data = trial.system_attrs.get(SPACE_KEY)
    if data is None:
        return None
    try:
        return ScheduleSpace.from_dict(data)
    except InputError:
        return None


def _schedule_param_names(study: optuna.Study) -> set[str]:
    names: set[str] = set()
    for key, data in study._storage.get_study_system_attrs(study._study_id).items():
        if key.startswith(STUDY_SPACE_PREFIX):
            try:
                names.update(ScheduleSpace.from_dict(data).param_names)
            except InputError:
                continue
    return names
