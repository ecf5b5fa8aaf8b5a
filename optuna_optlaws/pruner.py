"""OptLawsPruner: prune a trial when its schedule, given its curve so far, cannot win.

At each ``trial.report(loss, step)`` (``step`` = optimizer step) followed by
``trial.should_prune()``, the pruner

1. prunes a diverging run at once (NaN/inf loss, a spike, a sustained rise: see
   :func:`optuna_optlaws.divergence.online.detect_divergence`), with its reason, and a
   run that never trains: after ``min_reports`` reports, its recent loss is
   :data:`~optuna_optlaws._pruner._frontier.FAR_ABOVE` times the lowest loss that
   ``n_min_trials`` COMPLETE trials of its group had reached by the same LR area (too
   high a peak LR from the first step, which the curve alone cannot tell from a slow
   start). These two rules act at any report, the last one included: a diverged run is
   marked PRUNED, not COMPLETE;
2. otherwise, once the trial has enough evidence (``min_reports`` reports past the law's
   initial transient, its warmup and first 10% of steps, and ``min_fraction`` of its
   schedule), predicts its final loss with the study's fitted law
   conditioned on the observed prefix, calibrates that prediction on the group's COMPLETE
   trials (``calibrate``: the law's error on those runs, cut at the same fraction of their
   schedules, is learnt by a Gaussian process over the schedules' descriptors and removed
   from the trial's prediction, so runs like the trial count most; the interval comes from
   that GP's leave-one-out errors; see :mod:`optuna_optlaws._pruner._calibration`),
   and prunes when the lower end of the 90% interval is above the *frontier* plus
   ``margin`` nats (minus ``tolerance``, the regret the user accepts). The frontier is
   the best final loss of a COMPLETE trial of the same (N, D) group, or the best final
   loss a running trial of the group is predicted to reach (the upper end of its
   interval; not once Optuna's heartbeat says its worker is gone), whichever is lower;
   it needs ``n_min_trials`` COMPLETE trials in the group. A report at the schedule's
   last step is never pruned on (the run is done: pruning it saves nothing).

User attributes written on the trial: ``optlaws_pred_final``, ``optlaws_pred_lo``,
``optlaws_pred_hi`` (plain floats, nats, the latest prediction of the final loss, within
``record_tol`` nats: they are rewritten when the prediction moved by more than that),
``optlaws_prune_reason`` (text, when pruned) and ``optlaws_warning`` (text: bad evidence
that was ignored, a corrupt stored law that was refitted, a law that could not predict).

Bad evidence never prunes and never stops the study: a repeated or out-of-order step, a
step past the schedule's end, a corrupt stored law or a failed fit are recorded in
``optlaws_warning``. A trial without a schedule (see :func:`~optuna_optlaws.suggest_schedule`
and :func:`~optuna_optlaws.set_schedule`) is never pruned by the law: the pruner warns once
and asks ``fallback`` (if given).

State lives in the study's storage (the fitted law under the study system attribute
``optlaws:law:<law>``, refitted only when the data changed meaningfully), so every worker
and a restarted one take the same decisions.

Fine-tuning and continual pre-training: in a study whose trials all continue one
pretrained run (declared with :func:`~optuna_optlaws.set_parent_run`), the Opt-Law is
fitted on that run and the trials, each trial predicted from the parent's state; a law
fitted on the same model's pretraining sweep (``transfer_prior=``) lends the study's
fits what a few trials cannot show, how the model responds to the LR.
"""

from __future__ import annotations

import math
import warnings
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

from optuna_optlaws._errors import InputError
from optuna_optlaws._pruner._decision import Decision, Gates, Seen, check
from optuna_optlaws._pruner._frontier import PRED_FINAL, PRED_HI, PRED_LO, PRUNE_REASON, stale_trial_ids
from optuna_optlaws._study_state import (
    LawState,
    LawStore,
    PicklesWithoutMemos,
    resolve_prior,
    resolve_transfer_prior,
    trial_schedule,
)
from optuna_optlaws._trial_notes import add_stored_notes
from optuna_optlaws.laws import DEFAULT_LAW, law_class
from optuna_optlaws.laws.optlaw import PRIOR_SD

if TYPE_CHECKING:
    from optuna_optlaws.laws import Law

__all__ = ["OptLawsPruner"]

DEFAULT_MARGIN = 0.01
"""Default ``margin`` of :class:`OptLawsPruner` (nats)."""


class OptLawsPruner(PicklesWithoutMemos, BasePruner):
    """A schedule-aware pruner driven by a fitted loss-vs-schedule law.

    Args:
        law: Name of the law fitted on the study's curves (``"optlaw"``, ``"multipower"``,
            ``"momentum"``).
        prior: A fitted law (a :class:`~optuna_optlaws.laws.Law` or a law file path) used
            until the study has ``n_min_trials`` COMPLETE curves of its own.
        transfer_prior: An Opt-Law fitted on the same model and optimiser elsewhere (a
            law file path or an :class:`~optuna_optlaws.OptLaw`; e.g. ``optlaws fit`` on the
            pretraining sweep, before a fine-tuning or continual pre-training study): the
            study's own fits are drawn towards its parameters, all but the loss floors, each
            with standard deviation ``transfer_prior_sd`` (internal coordinates, about 20%
            of a positive parameter at 0.2), so a few trials inherit how the model responds
            to the LR (``OptLaw(prior=...)``; ``law="optlaw"`` only).
        transfer_prior_sd: See ``transfer_prior``.
        margin: Nats the predicted lower end must exceed the frontier by before pruning.
        tolerance: Nats of final loss you accept to lose to the best run in exchange for
            compute (a regret tolerance, e.g. ``0.01`` nats is 0.5% of a loss of 2). A trial
            is then pruned when its interval's lower end is above the frontier plus
            ``margin`` minus ``tolerance``: a run that can beat the frontier, but only by
            less than ``tolerance - margin`` nats, may be pruned, so the eventual winner
            can be lost when it beats the others by less than that. ``0`` (the default)
            never trades the winner for compute.
        min_reports: Reports a trial needs past the law's initial transient (its warmup and
            first 10% of steps, which the law does not describe) before the law may prune it.
            Counted in reports, so the wait depends on how often you report: with a report
            every 25 steps, 3 reports are 75 steps (an eighth of a 600-step run, where the
            defaults were chosen; a quarter of a 300-step one).
        min_fraction: Fraction of its schedule's ``total_steps`` a trial must have reached
            before the law may prune it. The defaults (3 reports, 10%) were chosen on the
            tiny-LM replay: the conditioned prediction's error is as large at 90% of the
            schedule as at 10% (studies/replay/tiny_lm/calibration.md), so waiting longer
            buys no accuracy, only steps.
        n_min_trials: COMPLETE trials of the trial's (N, D) group needed before the law
            prunes (and COMPLETE curves in the study before the law is fitted on it).
        fallback: Pruner asked about trials without a schedule (and in maximisation
            studies); ``None`` never prunes them.
        refit_growth: Refit the law when the study's finished trials (at least one more)
            or reported points grew by this fraction since the last fit.
        max_fit_points: Each curve is thinned to at most this many points for the fit.
        record_tol: The prediction attributes are rewritten only when one of them moved by
            more than this many nats since they were last written (each write is a storage
            transaction); on pruning they are always written. ``0`` writes every change.
        seed: Seed of the law's fit (the same on every worker). The sampler fits with
            seed 0, so with another seed the pruner fits and stores its own law (study
            attribute ``optlaws:law:<name>:seed<seed>``) rather than sharing the sampler's.
        final_noise: Run-to-run noise of a final loss (nats, a standard deviation: what
            training one schedule again with another seed moves it by; on the tiny LM
            0.01-0.02, studies/tiny_lm/noise.md). The calibrated interval is never
            narrower than this noise allows: its residuals come from runs the law was
            fitted on, which it partly absorbed. ``"auto"`` (the default): measured on
            the trial's (N, D) group, on COMPLETE trials that repeat a schedule exactly
            (enqueue a trial's params again and train it with another seed:
            ``study.enqueue_trial(study.best_trial.params)``), as the pooled standard
            deviation of their final losses (their last reports, the loss the law
            predicts); not used (0) until some do. ``optlaws noise`` measures it on
            logged runs. ``0``: never used.
        calibrate: Calibrate the law's prediction on the group's COMPLETE trials (see
            :mod:`optuna_optlaws._pruner._calibration`): the law's error at the trial's
            fraction of its schedule, measured on finished runs cut at that fraction and
            weighted by how alike their schedules are to the trial's, corrects the
            prediction's bias and sets its interval. ``False``: the law's own
            interval, uncorrected.
    """

    _process_memos = ("_seen",)  # per process only; the copy a pickle makes starts it empty

    def __init__(
        self,
        law: str = DEFAULT_LAW,
        *,
        prior: str | Path | Law | None = None,
        transfer_prior: str | Path | Law | None = None,
        transfer_prior_sd: float = PRIOR_SD,
        margin: float = DEFAULT_MARGIN,
        tolerance: float = 0.0,
        min_reports: int = 3,
        min_fraction: float = 0.1,
        n_min_trials: int = 3,
        fallback: BasePruner | None = None,
        refit_growth: float = 0.25,
        max_fit_points: int = 128,
        record_tol: float = 5e-3,
        seed: int = 0,
        calibrate: bool = True,
        final_noise: float | Literal["auto"] = "auto",
    ) -> None:
        law_class(law, where="OptLawsPruner(law=...)")
        auto_noise = final_noise == "auto"
        if isinstance(final_noise, str) and not auto_noise:
            raise InputError(
                f"OptLawsPruner: final_noise={final_noise!r} must be 'auto' or a finite number of nats >= 0"
            )
        noise_floor = 0.0 if auto_noise else final_noise
        for name, value in (("margin", margin), ("tolerance", tolerance), ("final_noise", noise_floor)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise InputError(f"OptLawsPruner: {name}={value!r} must be a finite number of nats >= 0")
        if not (isinstance(min_reports, int) and min_reports >= 1):
            raise InputError(f"OptLawsPruner: min_reports={min_reports!r} must be an int >= 1")
        if not (isinstance(min_fraction, (int, float)) and 0.0 <= min_fraction <= 1.0):
            raise InputError(f"OptLawsPruner: min_fraction={min_fraction!r} must lie in [0, 1]")
        if not (isinstance(n_min_trials, int) and n_min_trials >= 1):
            raise InputError(f"OptLawsPruner: n_min_trials={n_min_trials!r} must be an int >= 1")
        if not (isinstance(refit_growth, (int, float)) and refit_growth >= 0):
            raise InputError(f"OptLawsPruner: refit_growth={refit_growth!r} must be >= 0")
        if not (isinstance(record_tol, (int, float)) and record_tol >= 0):
            raise InputError(f"OptLawsPruner: record_tol={record_tol!r} must be a number of nats >= 0")
        if fallback is not None and not isinstance(fallback, BasePruner):
            raise InputError(f"OptLawsPruner: fallback={fallback!r} is not an Optuna pruner")
        self._gates = Gates(
            float(margin), min_reports, float(min_fraction), n_min_trials, bool(calibrate), tolerance=float(tolerance),
            final_noise=float(noise_floor),
            noise_from_repeats=auto_noise,
        )
        self._store = LawStore(
            law,
            prior=resolve_prior(prior, "OptLawsPruner(prior=...)"),
            transfer_prior=resolve_transfer_prior(
                transfer_prior, transfer_prior_sd, law, "OptLawsPruner(transfer_prior=...)"
            ),
            transfer_prior_sd=float(transfer_prior_sd),
            min_complete=n_min_trials,
            refit_growth=float(refit_growth),
            max_points=max_fit_points,
            seed=seed,
        )
        self._fallback = fallback
        self._record_tol = float(record_tol)
        self._warned: set[str] = set()
        self._seen: weakref.WeakKeyDictionary[Any, dict[int, Seen]] = weakref.WeakKeyDictionary()

    @property
    def law_store(self) -> LawStore:
        """The fitted-law store (fit counts and seconds, for benchmarks)."""
        return self._store

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Whether ``trial`` should be pruned now (see the class docstring)."""
        decision = self._decide(study, trial)
        return self._ask_fallback(study, trial) if decision is None else decision.prune

    def _decide(self, study: optuna.Study, trial: FrozenTrial) -> Decision | None:
        """This check of ``trial``, recorded on the trial; ``None`` when the law does not
        decide (a trial without a readable schedule, a study that does not minimise)."""
        if study.direction != StudyDirection.MINIMIZE:
            self._warn_once("direction", "OptLawsPruner predicts losses: it prunes only minimisation studies")
            return None
        trials = study.get_trials(deepcopy=False)
        me = _find(trials, trial)
        try:
            schedule = trial_schedule(me)
        except InputError as exc:
            self._record(study, me, Decision(notes=[f"stored schedule is corrupt: {exc}"]))
            return None
        if schedule is None:
            self._warn_once(
                "schedule",
                f"trial {me.number} has no schedule (use suggest_schedule or set_schedule): "
                "OptLawsPruner leaves such trials to its fallback pruner",
            )
            to = "its fallback pruner" if self._fallback is not None else "no pruner (no fallback given)"
            self._record(study, me, Decision(notes=[f"no schedule attached: not pruned by the law, left to {to}"]))
            return None
        seen = self._seen.setdefault(study._storage, {})

        def get_law() -> LawState:
            return self._store.get(study, trials)

        def stale() -> frozenset[int]:
            return stale_trial_ids(study._storage, study._study_id)

        decision, now = check(
            study._storage, trials, me, schedule, self._gates, get_law, seen.get(me._trial_id), stale
        )
        if now is not None:
            seen[me._trial_id] = now
        self._record(study, me, decision)
        return decision

    # ------------------------------------------------------------------ helpers
    def _ask_fallback(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return bool(self._fallback.prune(study, trial)) if self._fallback is not None else False

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    def _record(self, study: optuna.Study, me: FrozenTrial, decision: Decision) -> None:
        storage, tid, attrs = study._storage, me._trial_id, me.user_attrs
        if decision.pred is not None:
            keys = (PRED_FINAL, PRED_LO, PRED_HI)
            old = [attrs.get(k) for k in keys]
            tol = 0.0 if decision.prune else self._record_tol
            moved = any(
                not isinstance(o, float) or abs(o - v) > tol or (tol == 0.0 and o != v)
                for o, v in zip(old, decision.pred, strict=True)
            )
            if moved:
                for key, value in zip(keys, decision.pred, strict=True):
                    storage.set_trial_user_attr(tid, key, float(value))
        add_stored_notes(storage, me, decision.notes)
        if decision.prune and decision.reason:
            storage.set_trial_user_attr(tid, PRUNE_REASON, decision.reason)


def _find(trials: list[FrozenTrial], trial: FrozenTrial) -> FrozenTrial:
    """The storage's fresh copy of ``trial`` among ``trials`` (ordered by number)."""
    n = trial.number
    if 0 <= n < len(trials) and trials[n].number == n:
        return trials[n]
    for t in trials:
        if t.number == n:
            return t
    return trial
