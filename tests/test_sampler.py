"""OptLawsSampler on real Optuna studies: search space, seeds, startup, prior, inner sampler."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import optuna
import pytest
from _study_helpers import TEST_LAW, TOTAL_STEPS, report_steps, schedule_objective, synth_loss
from conftest import LoggedRecords

from optuna_optlaws import InputError, OptLawsSampler, get_schedule, suggest_schedule
from optuna_optlaws._sampler._acquisition import _sobol, expected_improvement
from optuna_optlaws.curves import Curve
from optuna_optlaws.laws import make_law
from optuna_optlaws.sampler import PROPOSAL_KEY
from optuna_optlaws.trial_schedule import get_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE: dict[str, Any] = {"warmup_steps": (0, 60), "peak_lr": (3e-4, 3e-2)}


def _sampler(**kw: Any) -> OptLawsSampler:
    args: dict[str, Any] = {"seed": 0, "n_startup_trials": 3, "n_candidates": 64, **kw}
    return OptLawsSampler(TEST_LAW, **args)


def _params(study: optuna.Study) -> list[dict[str, Any]]:
    return [t.params for t in study.trials]


def test_suggestions_lie_in_the_space_startup_then_law() -> None:
    study = optuna.create_study(sampler=_sampler())
    study.optimize(schedule_objective(), n_trials=6)
    sources = [t.system_attrs[PROPOSAL_KEY]["source"] for t in study.trials]
    assert sources == ["startup"] * 3 + ["law+residual-gp:lcb"] * 3
    for t in study.trials:
        for name, dist in t.distributions.items():
            assert dist._contains(dist.to_internal_repr(t.params[name])), (name, t.params[name])
        space = get_space(t)
        assert space is not None
        assert get_schedule(t) == space.build(space.values_from_params(t.params))
        if t.system_attrs[PROPOSAL_KEY]["source"] != "startup":
            assert np.isfinite(t.system_attrs[PROPOSAL_KEY]["pred_final"])
    # the startup points are space-filling: different families and peaks
    assert len({t.params["lr_family"] for t in study.trials[:3]}) >= 2


def test_seeded_runs_reproduce() -> None:
    runs = []
    for seed in (7, 7, 8):
        study = optuna.create_study(sampler=_sampler(seed=seed))
        study.optimize(schedule_objective(), n_trials=5)
        runs.append(_params(study))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def _prior_law() -> tuple[Any, Any]:
    """A law fitted on 6 synthetic runs of the default test space, and that space."""
    steps = report_steps()
    space_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    space_study.optimize(schedule_objective(), n_trials=1)
    space = get_space(space_study.trials[0])
    assert space is not None
    train = [space.build(v) for v in space.from_unit(_sobol(space.unit_dims, 6, 11))]
    return make_law(TEST_LAW).fit([Curve(f"r{i}", s, steps, synth_loss(s, steps)) for i, s in enumerate(train)]), space


def test_prior_law_makes_the_first_suggestions_among_its_best() -> None:
    prior, space = _prior_law()
    # the prior's ranking of 256 random schedules of the same space
    reference = [space.build(v) for v in space.from_unit(np.random.default_rng(5).random((256, space.unit_dims)))]
    ref_pred = prior.predict_final(reference).mean
    cut = float(np.quantile(ref_pred, 0.1))

    study = optuna.create_study(sampler=_sampler(prior=prior, n_candidates=128))
    study.optimize(schedule_objective(), n_trials=3)
    chosen = [get_schedule(t) for t in study.trials]
    chosen_pred = prior.predict_final([s for s in chosen if s is not None]).mean
    assert all(t.system_attrs[PROPOSAL_KEY]["source"] == "law:lcb" for t in study.trials)
    assert np.all(chosen_pred <= cut), (chosen_pred, cut)

    # without the prior, the same sampler starts with space-filling points
    plain = optuna.create_study(sampler=_sampler(n_candidates=128))
    plain.optimize(schedule_objective(), n_trials=3)
    plain_pred = prior.predict_final([get_schedule(t) for t in plain.trials]).mean  # type: ignore[misc]
    assert np.mean(plain_pred) > np.mean(chosen_pred)


class _SpySampler(optuna.samplers.RandomSampler):
    def __init__(self) -> None:
        super().__init__(seed=0)
        self.names: list[str] = []

    def sample_independent(self, study, trial, param_name, param_distribution):  # type: ignore[no-untyped-def]
        self.names.append(param_name)
        return super().sample_independent(study, trial, param_name, param_distribution)


def test_other_parameters_go_to_the_inner_sampler() -> None:
    spy = _SpySampler()
    study = optuna.create_study(sampler=_sampler(inner_sampler=spy))
    inner = schedule_objective()

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("weight_decay", 0.0, 0.1)
        return inner(trial)

    study.optimize(objective, n_trials=4)
    assert spy.names == ["weight_decay"] * 4


@pytest.mark.parametrize(("directions", "what"), [
    (["minimize", "minimize"], "this study has 2 objectives"),
    (["maximize"], "this study maximises its objective"),
])
def test_a_study_that_does_not_minimise_one_loss_gets_sobol_schedules_and_says_why(
    directions: list[str], what: str
) -> None:
    study = optuna.create_study(directions=directions, sampler=_sampler())
    inner = schedule_objective()

    def objective(trial: optuna.Trial) -> Any:
        if len(directions) == 1:
            return inner(trial)
        schedule = suggest_schedule(trial, warmup_steps=30, peak_lr=(3e-4, 3e-2), total_steps=TOTAL_STEPS)
        final = float(synth_loss(schedule, [TOTAL_STEPS - 1])[0])  # no reports: Optuna keeps none here
        return final, trial.suggest_float("weight_decay", 0.0, 0.1)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.optimize(objective, n_trials=6)
    ours = [str(w.message) for w in caught if "OptLawsSampler" in str(w.message)]
    assert len(ours) == 1 and what in ours[0] and "space-filling (Sobol)" in ours[0]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    sources = {t.system_attrs[PROPOSAL_KEY]["source"] for t in study.trials}
    assert sources == {"startup"}


def test_multivariate_inner_sampler_never_sees_schedule_params() -> None:
    inner = optuna.samplers.TPESampler(seed=0, multivariate=True, n_startup_trials=2)
    sampler = _sampler(inner_sampler=inner)
    study = optuna.create_study(sampler=sampler)
    base = schedule_objective(families=("cosine", "wsd"))

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("dropout", 0.0, 0.3)
        return base(trial)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TPE's experimental-multivariate warning
        study.optimize(objective, n_trials=5)
        trial = study.ask()
        space = sampler.infer_relative_search_space(study, study._storage.get_trial(trial._trial_id))
    assert "dropout" in space and not any(k.startswith("lr_") for k in space)


def test_thompson_acquisition_stays_in_space() -> None:
    study = optuna.create_study(sampler=_sampler(acquisition="thompson"))
    study.optimize(schedule_objective(families=("wsd",), cooldown_fraction=(0.1, 0.4), **SPACE), n_trials=5)
    assert study.trials[-1].system_attrs[PROPOSAL_KEY]["source"] == "law+residual-gp:thompson"
    for t in study.trials:
        assert 0.1 <= t.params["lr_cooldown_fraction"] <= 0.4
        assert 0 <= t.params["lr_warmup_steps"] <= 60
        assert get_schedule(t).total_steps == TOTAL_STEPS  # type: ignore[union-attr]


def test_expected_improvement_matches_monte_carlo_and_values_a_clear_gain() -> None:
    mean, sigma = np.array([2.00, 2.03, 2.10]), np.array([0.01, 0.02, 0.001])
    draws = np.random.default_rng(0).standard_normal((200_000, 1)) * sigma + mean
    mc = np.maximum(2.02 - draws, 0.0).mean(axis=0)
    assert expected_improvement(mean, sigma, 2.02) == pytest.approx(mc, abs=2e-4)
    assert expected_improvement(mean, sigma, 2.02)[2] == 0.0  # 80 sigmas above: underflows to 0
    # a sure tie with the best against an unsure candidate predicted a little worse:
    # expected improvement prefers the tie, unless gains under 0.01 nats count for nothing
    tie, unsure = np.array([1.998, 2.03]), np.array([0.005, 0.02])
    plain = expected_improvement(tie, unsure, 2.0)
    assert plain[0] > plain[1]
    beyond = expected_improvement(tie, unsure, 2.0 - 0.01)
    assert beyond[1] > beyond[0]


def test_ei_acquisition_proposes_by_the_best_complete_trial() -> None:
    study = optuna.create_study(sampler=_sampler(acquisition="ei", min_improvement=0.01))
    study.optimize(schedule_objective(**SPACE), n_trials=6)
    sources = [t.system_attrs[PROPOSAL_KEY]["source"] for t in study.trials]
    assert sources == ["startup"] * 3 + ["law+residual-gp:ei"] * 3
    # a prior law and nothing COMPLETE yet: nothing to improve on, the lower bound decides
    study = optuna.create_study(sampler=_sampler(acquisition="ei", prior=_prior_law()[0]))
    study.optimize(schedule_objective(), n_trials=1)
    assert study.trials[0].system_attrs[PROPOSAL_KEY]["source"].endswith(":lcb")


def test_bad_arguments() -> None:
    with pytest.raises(InputError, match="acquisition"):
        OptLawsSampler(TEST_LAW, acquisition="ucb")
    with pytest.raises(InputError, match="min_improvement"):
        OptLawsSampler(TEST_LAW, acquisition="ei", min_improvement=-0.01)
    with pytest.raises(InputError, match="unknown law"):
        OptLawsSampler("nolaw")
    with pytest.raises(InputError, match="n_candidates"):
        OptLawsSampler(TEST_LAW, n_candidates=0)


def test_a_law_that_cannot_score_falls_back_to_sobol(monkeypatch: pytest.MonkeyPatch) -> None:
    from optuna_optlaws.laws.momentum import MomentumLaw

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(MomentumLaw, "predict_final", broken)
    study = optuna.create_study(sampler=_sampler())
    with pytest.warns(UserWarning, match="cannot score schedules"):
        study.optimize(schedule_objective(), n_trials=5)
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    assert study.trials[-1].system_attrs[PROPOSAL_KEY]["source"] == "startup"


def test_candidates_the_law_cannot_score_are_left_out_not_the_law(monkeypatch: pytest.MonkeyPatch) -> None:
    """A law may predict nothing finite for part of the space (a fit whose annealing term
    sends the loss below 0 there): those candidates drop out, and the proposal is still
    the law's, residual GP included, rather than a Sobol point for every trial."""
    from optuna_optlaws.laws import Prediction
    from optuna_optlaws.laws.momentum import MomentumLaw

    real = MomentumLaw.predict_final
    limit = 1e-2

    def partly(self: MomentumLaw, schedules: list[Any], **kwargs: Any) -> Prediction:
        out = real(self, schedules, **kwargs)
        lost = np.array([s.peak_lr > limit for s in schedules])
        return Prediction(*(np.where(lost, np.nan, a) for a in out))

    monkeypatch.setattr(MomentumLaw, "predict_final", partly)
    study = optuna.create_study(sampler=_sampler(), pruner=optuna.pruners.NopPruner())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "cannot score schedules" fallback
        study.optimize(schedule_objective(), n_trials=9)
    sources = [t.system_attrs[PROPOSAL_KEY]["source"] for t in study.trials[3:]]
    assert set(sources) <= {"law:lcb", "law+residual-gp:lcb"} and "law+residual-gp:lcb" in sources, sources
    assert all(_peak(t) <= limit for t in study.trials[3:])


def _peak(t: optuna.trial.FrozenTrial) -> float:
    return float(next(v for k, v in t.params.items() if k.endswith("peak_lr")))


def test_residual_correction_leaves_a_region_the_law_gets_wrong() -> None:
    # the momentum law has no peak-LR penalty, so on these runs it keeps rating the
    # largest peak LR best; the GP on its residuals learns that those runs lose
    runs = {}
    for correct in (True, False):
        study = optuna.create_study(
            sampler=_sampler(correct_residuals=correct, n_candidates=128), pruner=optuna.pruners.NopPruner()
        )
        study.optimize(schedule_objective(peak_penalty=0.2), n_trials=12)
        runs[correct] = study.trials[3:]
    values = {c: np.median([t.value for t in ts]) for c, ts in runs.items()}
    peaks = {c: np.median([_peak(t) for t in ts]) for c, ts in runs.items()}
    assert peaks[False] > 2.5e-2  # the uncorrected law sticks to the top of the range
    assert peaks[True] < 0.5 * peaks[False]
    assert values[True] < values[False] - 0.3
    assert all(t.system_attrs[PROPOSAL_KEY]["source"] == "law+residual-gp:lcb" for t in runs[True])
    assert all(t.system_attrs[PROPOSAL_KEY]["source"] == "law:lcb" for t in runs[False])


def test_a_trial_that_reports_epochs_of_a_long_schedule_warns_once(logged: LoggedRecords) -> None:
    """An epoch-level reporter (optuna-integration's PyTorchLightningPruningCallback) reports
    steps 0, 1, 2, 3 of a 600-step schedule: the law would be fitted on losses at the
    wrong steps and the pruner would never act, so the sampler says so, once. Trials that
    report their whole schedule, or have no schedule, do not warn."""
    from optuna_optlaws import suggest_schedule

    def by_epoch(trial: optuna.Trial) -> float:
        schedule = suggest_schedule(trial, total_steps=TOTAL_STEPS, warmup_steps=30, peak_lr=(3e-4, 3e-2))
        losses = synth_loss(schedule, np.array([149, 299, 449, 599]))  # the losses after 4 epochs
        for epoch, loss in enumerate(losses.tolist()):
            trial.report(loss, epoch)
        return float(losses[-1])

    study = optuna.create_study(sampler=_sampler())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.optimize(schedule_objective(), n_trials=2)
        study.optimize(lambda trial: 1.0, n_trials=1)  # no schedule, no reports
        study.optimize(by_epoch, n_trials=3)
    expected = (
        "OptLawsSampler: trial 3 reported up to step 3 of a 600-step schedule: report steps must be 0-based "
        "optimizer steps (epoch-level reporters such as PyTorchLightningPruningCallback report epochs); "
        "use optuna_optlaws.torch.LossReporter"
    )
    assert [str(w.message) for w in caught if "reported up to step" in str(w.message)] == [expected]
    assert [r.getMessage() for r in logged.records] == [expected]


def _batch_of_two(consider_running: bool, seed: int) -> list[Any]:
    """Six trials one after the other, then two asked together (parallel workers): the
    schedules of the two (a synthetic loss with an interior best peak LR)."""
    sampler = _sampler(consider_running=consider_running, seed=seed, n_candidates=256)
    study = optuna.create_study(sampler=sampler)
    study.optimize(schedule_objective(peak_penalty=0.5), n_trials=6)
    asked = [study.ask(), study.ask()]
    return [suggest_schedule(t, total_steps=TOTAL_STEPS, **SPACE) for t in asked]


def test_a_worker_is_not_sent_to_the_schedule_another_is_training() -> None:
    """Two workers asking while neither has finished: with ``consider_running`` the second
    is proposed farther from the schedule the first is training than without it (4 seeds).
    A study with one worker is the same either way (no other trial runs at a proposal)."""
    from optuna_optlaws._residual_gp import schedule_descriptors

    def gap(pair: list[Any]) -> float:
        d = schedule_descriptors(pair)
        return float(np.abs(d[0] - d[1]).max())

    for seed in range(4):
        believe, ignore = _batch_of_two(True, seed), _batch_of_two(False, seed)
        assert believe[0] == ignore[0]  # the first proposal: nothing else runs yet
        assert gap(believe) > gap(ignore), (seed, gap(believe), gap(ignore))
    one_worker = [optuna.create_study(sampler=_sampler(consider_running=c)) for c in (True, False)]
    for study in one_worker:
        study.optimize(schedule_objective(), n_trials=7)
    assert _params(one_worker[0]) == _params(one_worker[1])


def test_a_running_trial_whose_worker_is_gone_is_not_believed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The schedules the sampler believes are being trained: the other RUNNING trials with
    a schedule, except those Optuna's heartbeat says are stale (their workers died)."""
    import optuna_optlaws.sampler as sampler_mod

    sampler = _sampler()
    study = optuna.create_study(sampler=sampler)
    asked = [study.ask() for _ in range(3)]
    schedules = [suggest_schedule(t, total_steps=TOTAL_STEPS, **SPACE) for t in asked]
    trials = study.get_trials(deepcopy=False)
    assert sampler._running(study, trials, 2, None, None) == schedules[:2]
    monkeypatch.setattr(sampler_mod, "stale_trial_ids", lambda storage, study_id: frozenset({asked[0]._trial_id}))
    assert sampler._running(study, trials, 2, None, None) == schedules[1:2]
    assert _sampler(consider_running=False)._running(study, trials, 2, None, None) == []
