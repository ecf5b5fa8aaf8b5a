"""The study's fitted law, kept in the study's storage and cached in process memory.

Both :class:`~optuna_optlaws.OptLawsSampler` and :class:`~optuna_optlaws.OptLawsPruner`
need a law fitted on every curve the study holds (complete, pruned, failed and running
trials that carry a schedule). This module is the one place that

* turns Optuna trials into :class:`~optuna_optlaws.curves.Curve` objects
  (:func:`trial_curve`), cut at the first diverging point and at the schedule's end;
* summarises the study's data cheaply (:class:`DataSummary`: which trials are finished,
  how many loss points there are) and decides whether that summary changed
  *meaningfully* since the stored fit: the number of finished trials grew by
  ``refit_growth`` (a fraction; at least one trial, so early on every finished trial
  counts), or the number of reported points grew by ``refit_growth``;
* fits the law (``seed`` fixed, so any worker fitting the same data gets the same law),
  and stores it in the study's system attributes under ``optlaws:law:<name>`` together
  with the summary and fingerprint of the data it was fitted on, so a second worker, or a
  restarted one, reuses exactly that law and makes the same decisions;
* caches the parsed law in process memory keyed by that fingerprint, so a check that
  needs no refit costs one read of the study's system attributes and a dict lookup;
* treats a corrupt stored law as missing: it refits and says so (``LawState.note``).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from optuna_optlaws._errors import InputError
from optuna_optlaws.curves import Curve, evenly_spaced
from optuna_optlaws.divergence.online import DivergenceSignal, detect_divergence
from optuna_optlaws.laws import Law, Prediction, load_law, make_law
from optuna_optlaws.laws._base import _json_default
from optuna_optlaws.laws.optlaw import PRIOR_SD, OptLaw, transfer_prior
from optuna_optlaws.parent_run import (
    ContinuedRunsLaw,
    ParentRun,
    fit_curves,
    get_parent_run,
    prior_seen_by_study,
    seen_by_study,
)
from optuna_optlaws.schedules import Schedule
from optuna_optlaws.trial_schedule import SCHEDULE_KEY, stored_schedule, stored_sizes

LAW_KEY_PREFIX = "optlaws:law:"
"""Study system attribute ``optlaws:law:<law name>``: the stored fit (see :class:`LawStore`)."""

CURVE_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
"""Trials whose curves the law is fitted on."""

RETRY_HISTORY = "retry_history"
"""System attribute Optuna's retry callbacks (``RetryFailedTrialCallback``,
``RetryHeartbeatStaleTrialCallback``) set on a retry: the numbers of the failed trials
it reruns."""


def without_retried(trials: Sequence[FrozenTrial]) -> Sequence[FrozenTrial]:
    """``trials`` less the FAIL trials another trial retries (Optuna's retry callbacks):
    the retry trains the same schedule again (from the failed run's reports, when it
    inherits them), so the law would fit that run twice."""
    retried: set[int] = set()
    for t in trials:
        history = t.system_attrs.get(RETRY_HISTORY)
        if isinstance(history, list):
            retried.update(n for n in history if isinstance(n, int))
    if not retried:
        return trials
    return [t for t in trials if not (t.state == TrialState.FAIL and t.number in retried)]

_log = optuna.logging.get_logger(__name__)


# ---------------------------------------------------------------------- trials -> curves
def trial_schedule(trial: FrozenTrial) -> Schedule | None:
    """The trial's schedule, or ``None`` without one; :class:`InputError` when corrupt."""
    return stored_schedule(trial.system_attrs, trial.number)


def readable_schedule(trial: FrozenTrial) -> Schedule | None:
    """The trial's schedule, or ``None`` when it has none or the stored one is corrupt
    (for code that skips such trials; the pruner reports corruption on the trial itself)."""
    try:
        return trial_schedule(trial)
    except InputError:
        return None


def trial_sizes(trial: FrozenTrial) -> tuple[float | None, float | None]:
    """``(model_size, tokens_per_step)`` stored with the trial's schedule."""
    return stored_sizes(trial.system_attrs)


GROUP_D_TOLERANCE = 0.02
"""Relative difference in data size D under which two runs share an (N, D) group: logged
runs of "24k steps" end at 23,905 or 23,937 steps and are still comparable."""


def group_key(schedule: Schedule, model_size: float | None, tokens_per_step: float | None) -> tuple[Any, ...]:
    """The (N, D) group of a run: model size and data size (tokens, or steps when the
    tokens per step are unknown). Compare keys with :func:`same_group`."""
    d = schedule.total_steps * tokens_per_step if tokens_per_step is not None else float(schedule.total_steps)
    return (model_size, tokens_per_step is not None, d)


def within_tolerance(x: float, y: float) -> bool:
    """Whether two sizes differ by at most :data:`GROUP_D_TOLERANCE` (relative)."""
    return abs(x - y) <= GROUP_D_TOLERANCE * max(abs(x), abs(y))


def same_group(a: tuple[Any, ...] | None, b: tuple[Any, ...] | None) -> bool:
    """Whether two runs are compared with each other: the same N, and data sizes D within
    :data:`GROUP_D_TOLERANCE` of each other (relative)."""
    if a is None or b is None:
        return False
    if a[0] != b[0] or a[1] != b[1]:
        return False
    return within_tolerance(a[2], b[2])


def raw_points(trial: FrozenTrial) -> tuple[np.ndarray, np.ndarray]:
    """The trial's intermediate values as sorted ``(steps, losses)`` arrays."""
    iv = trial.intermediate_values
    if not iv:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    steps = np.fromiter(iv.keys(), dtype=np.int64, count=len(iv))
    losses = np.fromiter(iv.values(), dtype=np.float64, count=len(iv))
    if steps.size > 1 and np.any(np.diff(steps) < 0):
        order = np.argsort(steps, kind="stable")
        steps, losses = steps[order], losses[order]
    return steps, losses


def usable_points(
    schedule: Schedule, steps: np.ndarray, losses: np.ndarray, divergence: DivergenceSignal | None
) -> tuple[np.ndarray, np.ndarray]:
    """The points a law may see: within the schedule, before the first diverging point,
    finite. ``divergence`` is :func:`detect_divergence` of these same points, passed in
    because the prune check has already computed it (the detector is causal, so cutting
    the points at the schedule's end first would not move it)."""
    keep = steps < schedule.total_steps
    if divergence is not None:
        keep &= steps < divergence.step
    steps, losses = steps[keep], losses[keep]
    fin = np.isfinite(losses)
    return steps[fin], losses[fin]


def trial_curve(trial: FrozenTrial, max_points: int | None = None) -> Curve | None:
    """The trial as a :class:`Curve` (run id ``trial_<number>``), or ``None`` when it has
    no schedule or no usable point. ``max_points`` thins the curve to at most that many
    points (evenly spaced in report index, the last one always kept)."""
    schedule = readable_schedule(trial)
    if schedule is None:
        return None
    steps, losses = raw_points(trial)
    steps, losses = usable_points(schedule, steps, losses, detect_divergence(steps, losses))
    if steps.size == 0:
        return None
    if max_points is not None and steps.size > max_points:
        idx = evenly_spaced(steps.size, max_points)
        steps, losses = steps[idx], losses[idx]
    n, tps = trial_sizes(trial)
    return Curve(f"trial_{trial.number}", schedule, steps, losses, model_size=n, tokens_per_step=tps)


_UNPREDICTABLE_LOGGED: set[str] = set()
"""Kinds of error :func:`conditioned_final` has logged (once each per process)."""


def conditioned_final(law: Law, observed: Curve) -> Prediction | None:
    """``law``'s prediction (nats, with its interval) of the loss at the last step of
    ``observed``'s schedule, conditioned on the points of ``observed``; ``None`` when the
    law cannot predict it (any error: a finished or pruned run is then just left out; an
    error other than an :class:`InputError` is logged once per kind) or predicts a
    non-finite value."""
    try:
        pred = law.predict(
            observed.schedule,
            [observed.schedule.total_steps - 1],
            model_size=observed.model_size,
            tokens_per_step=observed.tokens_per_step,
            observed=observed,
        )
    except InputError:
        return None
    except Exception as exc:  # a run the law cannot predict must never stop the study
        kind = type(exc).__name__
        if kind not in _UNPREDICTABLE_LOGGED:
            _UNPREDICTABLE_LOGGED.add(kind)
            _log.warning(f"law {law.name!r} cannot predict run {observed.run_id!r} ({_short(exc)}); such runs are "
                         "left out of the calibration and the sampler's residuals")
        return None
    ok = all(math.isfinite(float(v[0])) for v in (pred.mean, pred.lo, pred.hi))
    return pred if ok else None


# ---------------------------------------------------------------------- data summary
@dataclass(frozen=True)
class DataSummary:
    """What the law would be fitted on, in a few numbers.

    ``finished``: numbers of the finished trials with a schedule and reports;
    ``n_complete``: how many of them are COMPLETE; ``points``: reports over all trials with
    a schedule; ``fingerprint``: a hash of every (trial, state, number of reports)."""

    finished: tuple[int, ...]
    n_complete: int
    points: int
    items: tuple[tuple[int, int, int], ...]

    @property
    def fingerprint(self) -> str:
        """A short hash of the data: which trials, in which state, with how many reports."""
        return hashlib.sha1(repr(self.items).encode()).hexdigest()[:16]

    @classmethod
    def of(cls, trials: Sequence[FrozenTrial]) -> DataSummary:
        """Summarise ``trials`` (cost: O(number of trials))."""
        finished: list[int] = []
        items: list[tuple[int, int, int]] = []
        n_complete = points = 0
        for t in trials:
            if t.state not in CURVE_STATES or not t.intermediate_values:
                continue
            if SCHEDULE_KEY not in t.system_attrs:
                continue
            n = len(t.intermediate_values)
            points += n
            if t.state.is_finished():
                finished.append(t.number)
                n_complete += t.state == TrialState.COMPLETE
            items.append((t.number, int(t.state), n))
        return cls(tuple(sorted(finished)), n_complete, points, tuple(sorted(items)))


# ---------------------------------------------------------------------- stored fit
@dataclass
class LawState:
    """The law a check should use, and where it came from.

    ``source`` is ``"study"`` (fitted on this study), ``"prior"`` (the user's prior law,
    the study has too little data) or ``"none"``; ``note`` says what went wrong, if
    anything (a corrupt stored law, a failed fit), for the caller to record on the trial."""

    law: Law | None
    source: str
    fingerprint: str = ""
    note: str | None = None
    refitted: bool = False


_MEMORY: weakref.WeakKeyDictionary[Any, dict[tuple[int, str], _Fit]] = weakref.WeakKeyDictionary()
"""storage -> {(study id, stored fit's key): the stored fit as last seen}: parsed laws
cached in this process."""


def resolve_prior(prior: str | Path | Law | None, where: str) -> Law | None:
    """A ``prior=`` argument (a law file path or a fitted :class:`Law`) as a fitted law."""
    if prior is None:
        return None
    law = prior if isinstance(prior, Law) else load_law(str(prior))
    if not law.is_fitted:
        raise InputError(f"{where}: prior law {law.name!r} is not fitted")
    return law


def resolve_transfer_prior(
    prior: str | Path | Law | None, sd: float, law_name: str, where: str
) -> Law | None:
    """A ``transfer_prior=`` argument (a law file path or a fitted Opt-Law) as a fitted
    law, checked with its ``sd`` (:func:`~optuna_optlaws.laws.optlaw.transfer_prior`)."""
    if prior is None:
        return None
    if law_name != OptLaw.name:
        raise InputError(f"{where}: a transfer prior works with law='optlaw' only, not {law_name!r}")
    law = prior if isinstance(prior, Law) else load_law(str(prior))
    try:
        transfer_prior(law, sd)  # InputError unless a fitted Opt-Law and sd > 0
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    return law


class PicklesWithoutMemos:
    """A mixin for the sampler and pruner: pickling leaves out the per-process memos named
    in ``_process_memos`` (weak-keyed dicts, which do not pickle) and the copy starts them
    empty. They only save work: what decisions need is in the study's storage."""

    _process_memos: tuple[str, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in self._process_memos:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        for name in self._process_memos:
            setattr(self, name, weakref.WeakKeyDictionary())


class LawStore:
    """Fits, stores and fetches one study's law of one name.

    ``law_name``: a registered law (``optlaw``, ``multipower``, ``momentum``).
    ``min_complete``: COMPLETE curves the study needs before a law is fitted on it
    (before that, ``prior`` is used, if any). ``refit_growth``: refit when the number of
    finished trials, or of reported points, grew by this fraction since the stored fit
    (at least one more finished trial). ``max_points``: each curve is thinned to at most this many points
    for the fit. ``seed``: the fit's seed (fixed so every worker fits alike)."""

    def __init__(
        self,
        law_name: str,
        *,
        prior: Law | None = None,
        transfer_prior: Law | None = None,
        transfer_prior_sd: float = PRIOR_SD,
        min_complete: int = 3,
        refit_growth: float = 0.25,
        max_points: int = 128,
        seed: int = 0,
    ) -> None:
        self.law_name = law_name
        self.prior = prior
        self.transfer_prior = transfer_prior
        self.transfer_prior_sd = transfer_prior_sd
        self._corrupt_parent_logged: set[int] = set()
        """Studies whose corrupt parent record was logged (once each; every trial's
        record says it)."""
        self._key = LAW_KEY_PREFIX + law_name
        if transfer_prior is not None:
            text = json.dumps(transfer_prior.to_dict(), sort_keys=True, default=_json_default) + repr(transfer_prior_sd)
            self._key += "+prior:" + hashlib.sha1(text.encode()).hexdigest()[:12]
        if seed != 0:  # a fit under another seed is another fit: not shared with seed 0's
            self._key += f":seed{seed}"
        self.min_complete = min_complete
        self.refit_growth = refit_growth
        self.max_points = max_points
        self.seed = seed
        self.n_fits = 0
        """Fits made by this process (for benchmarks)."""
        self.fit_seconds = 0.0

    @property
    def key(self) -> str:
        """The study system attribute holding the stored fit: ``optlaws:law:<name>``, with
        a hash of the transfer prior and its sd after it when there is one, and the fit's
        seed when it is not 0 (a sampler and a pruner with the same law, transfer prior and
        fit seed share one stored fit)."""
        return self._key

    def get(self, study: optuna.Study, trials: Sequence[FrozenTrial]) -> LawState:
        """The law to use now for ``study`` whose trials are ``trials``; fits and stores it
        first when the data changed meaningfully since the stored fit.

        The storage is read only when this process's last view of the stored fit would
        now call for a refit (every worker applies the same rule to the same data, so
        until then the stored fit cannot have changed, short of corruption). A failed trial
        that another retries is not fitted (:func:`without_retried`)."""
        trials = without_retried(trials)
        summary = DataSummary.of(trials)
        parent, note = self._parent(study)
        if summary.n_complete < self.min_complete:
            return self._fallback(note, parent)
        storage, study_id = study._storage, study._study_id
        memory = _MEMORY.setdefault(storage, {})
        fit = memory.get((study_id, self.key))
        if fit is not None and not self._changed(fit, summary):
            return self._state_of(fit, note, parent)
        stored = storage.get_study_system_attrs(study_id).get(self.key)
        if stored is not None:
            try:
                fit = self._parse(stored, fit, parent)
            except Exception as exc:  # a corrupt stored law must never stop the study
                note = _join(note, f"stored law {self.key!r} is corrupt ({_short(exc)}); refitted")
                _log.warning(note)
                fit = None
            else:
                memory[(study_id, self.key)] = fit
                if not self._changed(fit, summary):
                    return self._state_of(fit, note, parent)
        fit = self._fit_and_store(study, trials, summary, parent)
        memory[(study_id, self.key)] = fit
        state = self._state_of(fit, note, parent)
        state.refitted = True
        return state

    # ------------------------------------------------------------------ internals
    def _parent(self, study: optuna.Study) -> tuple[ParentRun | None, str | None]:
        """The run the study's trials continue (:func:`~optuna_optlaws.parent_run.set_parent_run`),
        when this store's law can continue runs; a note when the stored parent is corrupt."""
        if self.law_name != ContinuedRunsLaw.name:  # laws without parent state fit trials from step 0
            return None, None
        try:
            return get_parent_run(study), None
        except InputError as exc:
            note = f"{exc}; trials fitted as runs from scratch"
            if study._study_id not in self._corrupt_parent_logged:
                self._corrupt_parent_logged.add(study._study_id)
                _log.warning(note)
            return None, note

    def _new_law(self) -> Law:
        """An unfitted law of this store's kind (with the transfer prior, if any)."""
        if self.transfer_prior is None:
            return make_law(self.law_name)
        return OptLaw(prior=self.transfer_prior, prior_sd=self.transfer_prior_sd)

    def _parse(self, stored: Any, cached: _Fit | None, parent: ParentRun | None) -> _Fit:
        if not isinstance(stored, dict) or not isinstance(stored.get("fingerprint"), str):
            raise InputError("not a stored fit")
        fp = stored["fingerprint"]
        try:
            finished = tuple(int(n) for n in stored["finished"])
            points = int(stored["points"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"bad data summary ({exc!r})") from None
        if cached is not None and cached.fingerprint == fp:
            return cached
        text = stored.get("law")
        law = None if text is None else Law.from_dict(json.loads(text), where=self.key)
        if law is not None and not law.is_fitted:
            raise InputError("stored law is not fitted")
        seen = None if law is None else seen_by_study(law, parent)
        return _Fit(fp, finished, points, seen, str(stored.get("error", "")))

    def _changed(self, fit: _Fit, summary: DataSummary) -> bool:
        """Whether the data moved enough since ``fit`` to refit: ``refit_growth`` more
        finished trials (at least one), or ``refit_growth`` more reported points."""
        if fit.finished != summary.finished:
            old = set(fit.finished)
            if not old.issubset(summary.finished):
                return True
            new = len(summary.finished) - len(old)
            if new >= max(1.0, self.refit_growth * len(old)):
                return True
        return summary.points >= (1.0 + self.refit_growth) * fit.points and summary.points > fit.points

    def _state_of(self, fit: _Fit, note: str | None, parent: ParentRun | None) -> LawState:
        if fit.law is None:  # a failed fit on this data: not retried until the data change
            return self._fallback(_join(note, f"law fit failed: {fit.error or '?'}"), parent)
        return LawState(fit.law, "study", fit.fingerprint, note)

    def _fallback(self, note: str | None, parent: ParentRun | None) -> LawState:
        """The user's prior law (as a study with ``parent`` sees it), or no law."""
        if self.prior is not None:
            return LawState(prior_seen_by_study(self.prior, parent), "prior", note=note)
        return LawState(None, "none", note=note)

    def _fit_and_store(
        self, study: optuna.Study, trials: Sequence[FrozenTrial], summary: DataSummary, parent: ParentRun | None
    ) -> _Fit:
        curves = [c for c in (trial_curve(t, self.max_points) for t in trials if t.state in CURVE_STATES) if c]
        curves = fit_curves(parent, curves, self.law_name)
        record: dict[str, Any] = {
            "fingerprint": summary.fingerprint,
            "finished": list(summary.finished),
            "points": summary.points,
            "n_curves": len(curves),
            "law": None,
        }
        t0 = time.perf_counter()
        law: Law | None = None
        error = ""
        try:
            law = self._new_law().fit(curves, seed=self.seed)
            record["law"] = json.dumps(law.to_dict(), separators=(",", ":"), default=_json_default)
        except Exception as exc:  # a failed fit must never stop the study
            law = None
            error = record["error"] = f"law {self.law_name!r} fit on {len(curves)} curves failed ({_short(exc)})"
            _log.warning(error)
        elapsed = time.perf_counter() - t0
        self.n_fits += 1
        self.fit_seconds += elapsed
        record["fit_seconds"] = round(elapsed, 4)
        study._storage.set_study_system_attr(study._study_id, self.key, record)
        seen = None if law is None else seen_by_study(law, parent)
        return _Fit(summary.fingerprint, summary.finished, summary.points, seen, error)


@dataclass(frozen=True)
class _Fit:
    """A stored fit as this process last saw it: the data summary it was fitted on and
    the parsed law (``None`` when the fit failed, with ``error``)."""

    fingerprint: str
    finished: tuple[int, ...]
    points: int
    law: Law | None
    error: str = ""


def _join(first: str | None, second: str) -> str:
    return second if first is None else f"{first}; {second}"


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
