"""Show a study's Opt-Law in optuna-dashboard: predicted vs observed curves, the frontier, the fit.

``publish_dashboard(study)`` writes three plotly figures into the study's storage with
``optuna_dashboard.save_plotly_graph_object`` (optuna-dashboard shows four cards on the
study's page) and a Markdown note on each trial the pruner predicted, pruned or warned
about (bad input it ignored)::

    study.optimize(objective, n_trials=50, callbacks=[OptLawsDashboardCallback(every=5)])
    publish_dashboard(study)            # or once at the end

    $ optuna-dashboard sqlite:///study.db

The figures are overwritten in place (fixed ids) each time they are published. The law
drawn is the one passed in, else the law the pruner/sampler cached in the study's
storage, else a new default law fitted on the study's trials. The numeric user
attributes the pruner writes (``optlaws_pred_final``, ``optlaws_pred_lo``,
``optlaws_pred_hi``) let the dashboard's trial table sort trials by predicted final loss.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from optuna_optlaws._dashboard._trials import TrialCurve, trial_curves
from optuna_optlaws._errors import InputError

if TYPE_CHECKING:
    import optuna

    from optuna_optlaws.laws import Law

GRAPH_IDS = {
    "curves": "optlaws-curves",
    "frontier": "optlaws-frontier",
    "fit": "optlaws-fit",
    "params": "optlaws-params",
}
"""Ids under which the figures are saved (publishing again overwrites them)."""

MIN_FIT_POINTS = 3
"""Finite reported losses a trial needs before a law is fitted on it."""


def _study_law(study: optuna.Study) -> Law | None:
    """The law the pruner/sampler fitted and stored in the study's storage (study system
    attribute ``optlaws:law:<name>``, see :mod:`optuna_optlaws._study_state`), if any; the
    default law first when several are stored."""
    import json

    from optuna_optlaws._study_state import LAW_KEY_PREFIX
    from optuna_optlaws.laws import DEFAULT_LAW, Law

    attrs = study._storage.get_study_system_attrs(study._study_id)
    keys = sorted((k for k in attrs if k.startswith(LAW_KEY_PREFIX)), key=lambda k: k != LAW_KEY_PREFIX + DEFAULT_LAW)
    for key in keys:
        record = attrs[key]
        text = record.get("law") if isinstance(record, dict) else None
        if not isinstance(text, str):
            continue
        try:
            law = Law.from_dict(json.loads(text), where=key)
        except (InputError, ValueError):
            continue
        if law.is_fitted:
            return law
    return None


def resolve_law(study: optuna.Study, law: Law | None, trials: Sequence[TrialCurve]) -> tuple[Law | None, str]:
    """The law to draw, and a note saying where it comes from (or why there is none).

    An unfitted ``law`` is fitted on the study's trials; with no ``law`` the study's cached
    law is used, else a new default law is fitted on the trials."""
    from optuna_optlaws.parent_run import fit_curves, get_parent_run, seen_by_study

    try:
        parent = get_parent_run(study)
    except InputError:
        parent = None
    continuing = "" if parent is None else f", each trial continuing run {parent.run_id!r}"
    if law is not None and law.is_fitted:
        return seen_by_study(law, parent), f"law {law.name!r} passed in{continuing}"
    if law is None:
        cached = _study_law(study)
        if cached is not None:
            return (seen_by_study(cached, parent),
                    f"law {cached.name!r} stored in the study by the pruner/sampler{continuing}")
    curves = [t.curve for t in trials if int(sum(t.curve.finite)) >= MIN_FIT_POINTS]
    if not curves:
        return None, "no law: no trial has reported enough losses yet"
    if law is None:
        from optuna_optlaws.laws import make_law

        try:
            law = make_law()
        except (ModuleNotFoundError, InputError) as exc:
            return None, f"no law: the default law is not available ({exc})"
    try:
        law.fit(fit_curves(parent, curves, law.name))
    except (InputError, ValueError, FloatingPointError) as exc:
        return None, f"no law: fitting {law.name!r} failed ({exc})"
    return seen_by_study(law, parent), f"law {law.name!r} fitted on {len(curves)} trials{continuing}"


def _trial_note(t: TrialCurve) -> str | None:
    if t.pred_final is None and t.prune_reason is None and t.warning is None:
        return None
    lines = [f"### Opt-Law, trial {t.number}", ""]
    if t.pred_final is not None:
        mean, lo, hi = t.pred_final
        lines.append(f"Predicted final loss **{mean:.4f}** nats, 90% interval [{lo:.4f}, {hi:.4f}] "
                     f"(at step {t.curve.schedule.total_steps - 1}).")
    if t.prune_reason is not None:
        lines.append("")
        last = t.last_loss
        at = f" at step {t.curve.last_step} (loss {last:.4f} nats)" if math.isfinite(last) else ""
        lines.append(f"Pruned{at}: {t.prune_reason}")
    if t.warning is not None:
        lines += ["", f"Bad input, ignored: {t.warning}"]
    return "\n".join(lines)


def _save_trial_notes(study: optuna.Study, trials: Sequence[TrialCurve]) -> int:
    import optuna
    from optuna_dashboard import get_note, save_note

    written = 0
    for t in trials:
        body = _trial_note(t)
        if body is None:
            continue
        handle = optuna.Trial(study, t.trial_id)
        if get_note(handle) != body:
            save_note(handle, body)
            written += 1
    return written


def publish_dashboard(study: optuna.Study, law: Law | None = None, *, notes: bool = True) -> dict[str, str]:
    """Write the Opt-Law figures of ``study`` into optuna-dashboard (in the study's storage).

    Figures: observed vs predicted loss curves with the law's 90% band, the frontier
    (best final loss reached, each trial's predicted final loss with its interval, pruned
    trials with the pruner's reason), and the law's fit diagnostics (residuals along
    each trial; a table of the fit and its parameters). ``law``: a fitted law
    to draw (default: the study's cached law, else a default law fitted on the trials).
    ``notes``: also write a Markdown note on each trial the pruner predicted or pruned.
    Returns the figure ids by name (:data:`GRAPH_IDS`)."""
    from optuna_dashboard import save_plotly_graph_object

    from optuna_optlaws._dashboard._figures import curves_figure, fit_figure, frontier_figure, params_figure

    trials = trial_curves(study)
    drawn, note = resolve_law(study, law, trials)
    figures = {
        "curves": curves_figure(trials, drawn, note),
        "frontier": frontier_figure(trials, drawn),
        "fit": fit_figure(trials, drawn, note),
        "params": params_figure(trials, drawn, note),
    }
    for name, fig in figures.items():
        save_plotly_graph_object(study, fig, graph_object_id=GRAPH_IDS[name])
    if notes:
        _save_trial_notes(study, trials)
    return dict(GRAPH_IDS)


class OptLawsDashboardCallback:
    """A ``study.optimize(callbacks=[...])`` callback that republishes the Opt-Law figures
    (:func:`publish_dashboard`) after every ``every``-th finished trial.

    A failure to draw is turned into a warning: the dashboard never stops a study."""

    def __init__(self, law: Law | None = None, *, every: int = 1, notes: bool = True) -> None:
        if every < 1:
            raise InputError(f"OptLawsDashboardCallback: every={every} must be >= 1")
        self.law = law
        self.every = every
        self.notes = notes
        self._seen = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._seen += 1
        if self._seen % self.every:
            return
        try:
            publish_dashboard(study, self.law, notes=self.notes)
        except Exception as exc:  # a dashboard problem must not end the optimisation
            warnings.warn(f"OptLawsDashboardCallback: could not publish the figures ({exc!r})", stacklevel=2)


__all__ = ["GRAPH_IDS", "OptLawsDashboardCallback", "publish_dashboard", "resolve_law"]
