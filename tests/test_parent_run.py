"""Studies whose trials continue one parent run (fine-tuning sweeps), and transfer priors
on the study's own fits.

Real curves: ``studies/finetune/curves.csv`` (the tiny LM pretrained on one corpus, run
``pre``, then fine-tuned on another under 21 schedules, each continuing ``pre`` from its
last step)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import LoggedRecords

from optuna_optlaws import InputError, OptLaw, OptLawsPruner, OptLawsSampler, set_parent_run, set_schedule
from optuna_optlaws._study_state import LAW_KEY_PREFIX, LawStore
from optuna_optlaws.curves import Curve, read_curves_csv
from optuna_optlaws.parent_run import PARENT_KEY, ContinuedRunsLaw, get_parent_run

ROOT = Path(__file__).resolve().parent.parent
FINETUNE = ROOT / "studies" / "finetune" / "curves.csv"


@pytest.fixture(scope="module")
def finetune() -> tuple[Curve, list[Curve]]:
    """The parent run and its continued (fine-tuning) runs."""
    curves = read_curves_csv(FINETUNE)
    parent = next(c for c in curves if c.run_id == "pre")
    return parent, [c for c in curves if c.resume_from == "pre"]


def _attrs(study: optuna.Study) -> dict[str, object]:
    return study._storage.get_study_system_attrs(study._study_id)


def _study(storage: str | None = None, **kw: object) -> optuna.Study:
    return optuna.create_study(storage=storage, direction="minimize", **kw)  # type: ignore[arg-type]


def _complete(study: optuna.Study, curve: Curve, *, stop_after: int | None = None) -> optuna.trial.FrozenTrial:
    """Run ``curve`` (its own steps) as a trial: report every point, asking the pruner."""
    trial = study.ask()
    set_schedule(trial, curve.schedule, model_size=curve.model_size, tokens_per_step=curve.tokens_per_step)
    points = list(zip(curve.steps.tolist(), curve.losses.tolist(), strict=True))
    for i, (step, loss) in enumerate(points):
        trial.report(loss, step)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return study._storage.get_trial(trial._trial_id)
        if stop_after is not None and i + 1 == stop_after:
            return study._storage.get_trial(trial._trial_id)
    study.tell(trial, curve.final_loss)
    return study._storage.get_trial(trial._trial_id)


# ---------------------------------------------------------------------- set_parent_run
def test_parent_run_round_trips_through_sqlite(tmp_path: Path, finetune: tuple[Curve, list[Curve]]) -> None:
    parent, _ = finetune
    url = f"sqlite:///{tmp_path / 'ft.db'}"
    study = _study(url, study_name="ft")
    set_parent_run(study, parent, max_points=10)
    set_parent_run(study, parent, max_points=10)  # every worker calls it at start: no change
    got = get_parent_run(optuna.load_study(study_name="ft", storage=optuna.storages.RDBStorage(url)))
    assert got is not None
    assert got.run_id == "pre" and got.resume_step == parent.schedule.total_steps - 1
    assert got.curve.schedule == parent.schedule
    assert got.curve.steps.size == 10 and got.curve.steps[-1] == parent.steps[-1]
    np.testing.assert_allclose(got.curve.losses[-1], parent.losses[-1])
    assert (got.curve.model_size, got.curve.tokens_per_step) == (parent.model_size, parent.tokens_per_step)


def test_bad_parent_runs_are_one_line_errors_and_store_nothing(finetune: tuple[Curve, list[Curve]]) -> None:
    parent, cands = finetune
    study = _study()
    bad: list[tuple[object, dict[str, object], str]] = [
        (cands[0], {}, "itself continues 'pre'"),
        (parent, {"resume_step": parent.schedule.total_steps}, "is not a step of run 'pre'"),
        (parent, {"resume_step": -1}, "is not a step of run 'pre'"),
        ("pre", {}, "expected the parent's Curve"),
        (parent, {"max_points": 0}, "max_points=0"),
    ]
    for arg, kw, text in bad:
        with pytest.raises(InputError, match=text) as info:
            set_parent_run(study, arg, **kw)  # type: ignore[arg-type]
        assert "\n" not in str(info.value)
    assert PARENT_KEY not in _attrs(study)
    set_parent_run(study, parent)
    other = replace(parent, run_id="other")
    with pytest.raises(InputError, match="already continues run 'pre'; a study's parent is set once"):
        set_parent_run(study, other)
    late = _study()
    trial = late.ask()
    trial.report(3.0, 0)
    with pytest.raises(InputError, match="already has trials with reports"):
        set_parent_run(late, parent)
    assert PARENT_KEY not in _attrs(late)


# ---------------------------------------------------------------------- the study's law
def test_the_study_law_continues_the_parent(finetune: tuple[Curve, list[Curve]]) -> None:
    """The pruner's law is fitted on the parent and the trials as continued runs, and
    predicts a running trial as a continued run: the same numbers as an Opt-Law fitted
    directly on those curves."""
    parent, cands = finetune
    study = _study(pruner=OptLawsPruner(calibrate=False, record_tol=0.0))
    set_parent_run(study, parent)
    for c in cands[:3]:
        _complete(study, c)
    state = LawStore("optlaw").get(study, study.get_trials(deepcopy=False))
    assert isinstance(state.law, ContinuedRunsLaw) and state.source == "study"
    stored = _attrs(study)[LAW_KEY_PREFIX + "optlaw"]
    assert "pre" in json.loads(stored["law"])["params"]["lineage"]
    direct = OptLaw().fit([parent, *cands[:3]])
    held = cands[10]
    want = direct.predict_curve(replace(held, steps=held.steps[-1:], losses=held.losses[-1:]))
    got = state.law.predict(held.schedule, [299], model_size=held.model_size, tokens_per_step=held.tokens_per_step)
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-9)
    np.testing.assert_allclose(got.lo, want.lo, rtol=1e-9)
    vector = state.law.predict_final([held.schedule, cands[11].schedule], model_size=held.model_size,
                                     tokens_per_step=held.tokens_per_step)
    np.testing.assert_allclose(vector.mean[0], want.mean[-1], rtol=1e-9)

    # the pruner's recorded prediction for a trial (uncalibrated: the law's own,
    # from the law fitted on the data of its last check) is that of a continued run
    c = next(c for c in cands if c.run_id == "ft_wsd_p3e-3")  # the best run: not pruned
    running = _complete(study, c, stop_after=6)
    assert running.state == optuna.trial.TrialState.RUNNING
    n = len(running.intermediate_values)
    now = LawStore("optlaw").get(study, study.get_trials(deepcopy=False)).law
    assert isinstance(now, ContinuedRunsLaw)
    from optuna_optlaws._pruner._decision import law_prefix

    p_steps, p_losses = law_prefix(c.steps[:n], c.losses[:n])
    observed = Curve("p", c.schedule, p_steps, p_losses, model_size=c.model_size, tokens_per_step=c.tokens_per_step)
    own = now.base.predict(c.schedule, [299], model_size=c.model_size, tokens_per_step=c.tokens_per_step,
                           observed=observed, resume_from="pre", resume_step=599)
    assert math.isclose(running.user_attrs["optlaws_pred_final"], float(own.mean[0]), rel_tol=1e-9)
    fresh = now.base.predict(c.schedule, [299], model_size=c.model_size, tokens_per_step=c.tokens_per_step,
                             observed=observed)
    assert not math.isclose(running.user_attrs["optlaws_pred_final"], float(fresh.mean[0]), rel_tol=1e-4)


def test_trials_that_state_no_sizes_train_the_parents_model(finetune: tuple[Curve, list[Curve]]) -> None:
    """Sizes are optional on a trial; in a study with a parent, a trial that gives none
    trains the parent's model (was: the fit mixed a sized parent with unsized trials and
    failed, leaving the study without a law). Its predictions are those of a trial that
    states the parent's sizes."""
    parent, cands = finetune
    studies = []
    for with_sizes in (False, True):
        study = _study(pruner=OptLawsPruner(calibrate=False))
        set_parent_run(study, parent)
        for c in cands[:4]:
            trial = study.ask()
            sizes = {"model_size": c.model_size, "tokens_per_step": c.tokens_per_step} if with_sizes else {}
            set_schedule(trial, c.schedule, **sizes)  # type: ignore[arg-type]
            for step, loss in zip(c.steps.tolist(), c.losses.tolist(), strict=True):
                trial.report(loss, step)
            study.tell(trial, c.final_loss)
        studies.append(LawStore("optlaw").get(study, study.get_trials(deepcopy=False)))
    bare, sized = studies
    assert bare.source == "study" and bare.note is None and isinstance(bare.law, ContinuedRunsLaw)
    held = [c.schedule for c in cands[4:]]
    kw = {"model_size": parent.model_size, "tokens_per_step": parent.tokens_per_step}
    np.testing.assert_allclose(bare.law.predict_final(held).mean, sized.law.predict_final(held, **kw).mean, rtol=1e-9)
    one = bare.law.predict(held[0]).mean
    np.testing.assert_allclose(one, sized.law.predict(held[0], **kw).mean, rtol=1e-9)


def test_a_corrupt_parent_is_noted_and_the_trials_fitted_from_scratch(
    finetune: tuple[Curve, list[Curve]], logged: LoggedRecords
) -> None:
    parent, cands = finetune
    study = _study(pruner=OptLawsPruner(law="momentum"))
    set_parent_run(study, parent)
    store = LawStore("optlaw")
    study._storage.set_study_system_attr(study._study_id, PARENT_KEY, {"run_id": "pre", "schedule": "{"})
    from optuna_optlaws import parent_run

    parent_run._SEEN.clear()
    for c in cands[:3]:
        _complete(study, c)
    state = store.get(study, study.get_trials(deepcopy=False))
    store.get(study, study.get_trials(deepcopy=False))
    assert len(logged.messages("is corrupt")) == 1  # logged once, noted on every check
    assert state.note is not None and f"study attribute {PARENT_KEY!r} is corrupt" in state.note
    assert "fitted as runs from scratch" in state.note
    assert state.law is not None and not isinstance(state.law, ContinuedRunsLaw)


# ---------------------------------------------------------------------- transfer prior
def test_transfer_prior_fits_are_stored_apart_and_shared(
    tmp_path: Path, finetune: tuple[Curve, list[Curve]]
) -> None:
    parent, cands = finetune
    prior = OptLaw(loco=False).fit([parent])
    path = tmp_path / "prior.json"
    prior.save(path)
    pruner = OptLawsPruner(transfer_prior=path, transfer_prior_sd=0.3)
    sampler = OptLawsSampler(transfer_prior=prior, transfer_prior_sd=0.3, seed=0)
    plain = OptLawsPruner()
    assert pruner.law_store.key == sampler._store.key
    assert pruner.law_store.key.startswith(LAW_KEY_PREFIX + "optlaw+prior:")
    assert plain.law_store.key == LAW_KEY_PREFIX + "optlaw"
    assert OptLawsPruner(seed=3).law_store.key == LAW_KEY_PREFIX + "optlaw:seed3"  # not the sampler's fit
    assert OptLawsPruner(transfer_prior=prior, transfer_prior_sd=0.2).law_store.key != pruner.law_store.key

    study = _study(pruner=pruner)
    set_parent_run(study, parent)
    for c in cands[:3]:
        _complete(study, c)
    _complete(study, cands[3], stop_after=5)  # its checks fit the law
    stored = _attrs(study)[pruner.law_store.key]
    info = json.loads(stored["law"])["fit_info"]
    assert info["prior"]["sd"] == 0.3
    assert LAW_KEY_PREFIX + "optlaw" not in _attrs(study)


def test_bad_transfer_priors_are_one_line_errors(tmp_path: Path, finetune: tuple[Curve, list[Curve]]) -> None:
    parent, _ = finetune
    from optuna_optlaws.laws import make_law

    momentum = make_law("momentum").fit([parent])
    cases: list[tuple[dict[str, object], str]] = [
        ({"transfer_prior": momentum}, "a transfer prior must be a fitted optlaw law"),
        ({"transfer_prior": OptLaw()}, "a transfer prior must be a fitted optlaw law"),
        ({"transfer_prior": tmp_path / "missing.json"}, "missing.json"),
        ({"transfer_prior": OptLaw(loco=False).fit([parent]), "law": "momentum"}, "works with law='optlaw' only"),
        ({"transfer_prior": OptLaw(loco=False).fit([parent]), "transfer_prior_sd": 0.0}, "prior sd must be"),
    ]
    for cls in (OptLawsPruner, OptLawsSampler):
        for kw, text in cases:
            with pytest.raises(InputError, match=text) as info:
                cls(**kw)  # type: ignore[arg-type]
            assert "\n" not in str(info.value)
            assert f"{cls.__name__}(transfer_prior=...)" in str(info.value) or "missing.json" in str(info.value)


# ---------------------------------------------------------------------- sampler
def test_the_sampler_proposes_continued_schedules(finetune: tuple[Curve, list[Curve]]) -> None:
    """With a parent run, the sampler's law predicts candidates as continued runs (its
    proposal after 3 complete trials comes from the fitted law, not the Sobol start)."""
    from optuna_optlaws import suggest_schedule

    parent, cands = finetune
    sampler = OptLawsSampler(n_startup_trials=3, seed=0)
    study = _study(sampler=sampler)
    set_parent_run(study, parent)
    for c in cands[:3]:
        study.enqueue_trial({"lr_family": "constant", "lr_peak_lr": c.schedule.peak_lr})
        trial = study.ask()
        suggest_schedule(trial, total_steps=300, families=("constant",), peak_lr=(1e-4, 3e-3),
                         model_size=c.model_size, tokens_per_step=c.tokens_per_step)
        set_schedule(trial, c.schedule, model_size=c.model_size, tokens_per_step=c.tokens_per_step)
        for step, loss in zip(c.steps.tolist(), c.losses.tolist(), strict=True):
            trial.report(loss, step)
        study.tell(trial, c.final_loss)
    trial = study.ask()
    schedule = suggest_schedule(trial, total_steps=300, families=("constant",), peak_lr=(1e-4, 3e-3),
                                model_size=parent.model_size, tokens_per_step=parent.tokens_per_step)
    assert 1e-4 <= schedule.peak_lr <= 3e-3
    state = sampler._store.get(study, study.get_trials(deepcopy=False))
    assert isinstance(state.law, ContinuedRunsLaw)


def test_the_sampler_prior_predicts_runs_continuing_the_parent() -> None:
    """Before the study has complete trials, the sampler's ``prior=`` law (fitted on
    runs from scratch elsewhere) predicts each schedule as a run continuing the study's
    parent from the state the parent's schedule leaves; the prior itself is untouched.
    On the continual pre-training runs that is what makes the prior's level right."""
    from optuna_optlaws.laws import load_law

    curves = read_curves_csv(ROOT / "studies" / "continual" / "curves.csv")
    parent = next(c for c in curves if c.run_id == "pre")
    cands = [c for c in curves if c.resume_from == "pre"]
    prior = load_law(ROOT / "studies" / "curves" / "tiny_lm_600_law.json")
    assert isinstance(prior, OptLaw)
    lineage_before = dict(prior.lineage)
    sampler = OptLawsSampler(prior=prior, seed=0)
    plain = _study(sampler=sampler)
    assert sampler._store.get(plain, []).law is prior  # no parent: runs from scratch
    study = _study(sampler=sampler)
    set_parent_run(study, parent)
    state = sampler._store.get(study, [])
    assert state.source == "prior" and isinstance(state.law, ContinuedRunsLaw)
    assert sampler._store.get(study, []).law is state.law  # registered once per parent
    assert prior.lineage == lineage_before
    kw = {"model_size": parent.model_size, "tokens_per_step": parent.tokens_per_step}
    schedules = [c.schedule for c in cands]
    truth = np.array([c.final_loss for c in cands])
    continued = state.law.predict_final(schedules, **kw).mean
    one = state.law.predict(cands[0].schedule, **kw).mean[0]
    assert math.isclose(one, continued[0], rel_tol=1e-9)
    scratch = prior.predict_final(schedules, **kw).mean
    assert np.mean(np.abs(continued - truth)) < 0.5 * np.mean(np.abs(scratch - truth))


@pytest.mark.parametrize("with_prior", [False, True])
def test_a_parent_run_stays_in_every_left_out_fold(finetune: tuple[Curve, list[Curve]], with_prior: bool) -> None:
    """The model discrepancy is measured by leaving out runs like those the law predicts
    (the continued ones), never the parent they all continue, with or without a transfer
    prior: with the parent left out in turn (as before), 5 fine-tuning runs gave a
    discrepancy of 0.061 nats and 90% intervals of about +-0.12 nats (+-0.46 with the
    prior); now they are about +-0.04 and still cover."""
    from optuna_optlaws import load_law

    parent, cands = finetune
    prior = load_law(ROOT / "studies" / "curves" / "tiny_lm_600_law.json") if with_prior else None
    law = OptLaw(prior=prior).fit([parent, *cands[:5]])
    held = cands[5:]
    pred = law.predict_final([c.schedule for c in held], model_size=parent.model_size,
                             tokens_per_step=parent.tokens_per_step, resume_from="pre", resume_step=599)
    finals = np.array([c.final_loss for c in held])
    coverage = float(np.mean((pred.lo <= finals) & (finals <= pred.hi)))
    half = float(np.median(pred.hi - pred.lo)) / 2
    assert coverage >= 0.8
    assert half < 0.06


def test_the_dashboard_draws_trials_as_continued_runs(finetune: tuple[Curve, list[Curve]]) -> None:
    """The dashboard's law (stored by the pruner, or fitted by the dashboard itself) is
    the study's: it predicts each trial as a run continuing the parent."""
    from optuna_optlaws._dashboard._trials import trial_curves
    from optuna_optlaws.dashboard import resolve_law

    parent, cands = finetune
    study = _study(pruner=OptLawsPruner())
    set_parent_run(study, parent)
    for c in cands[:4]:
        _complete(study, c)
    trials = trial_curves(study)
    law, note = resolve_law(study, None, trials)
    assert isinstance(law, ContinuedRunsLaw) and "stored in the study" in note and "continuing run 'pre'" in note
    fresh, note = resolve_law(study, OptLaw(), trials)
    assert isinstance(fresh, ContinuedRunsLaw) and "fitted on 4 trials, each trial continuing run 'pre'" in note
    assert "pre" in fresh.base.lineage
