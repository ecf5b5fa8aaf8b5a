"""suggest_schedule / set_schedule / get_schedule on real Optuna trials and storages."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from optuna_optlaws import InputError, Schedule, get_schedule, set_schedule, suggest_schedule
from optuna_optlaws.trial_schedule import SPACE_KEY, STUDY_SPACE_PREFIX, get_sizes, get_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(storage: str | None = None) -> optuna.Study:
    return optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=3))


def test_params_are_optuna_distributions_and_schedule_matches() -> None:
    study = _study()
    seen_families = set()
    for _ in range(24):
        trial = study.ask()
        schedule = suggest_schedule(
            trial, total_steps=(500, 800), warmup_steps=(0, 40), peak_lr=(1e-4, 1e-2), model_size=25e6
        )
        study.tell(trial, 1.0)
        frozen = study.trials[-1]
        fam = frozen.params["lr_family"]
        seen_families.add(fam)
        assert frozen.distributions["lr_family"] == CategoricalDistribution(("cosine", "wsd", "linear", "constant"))
        assert frozen.distributions["lr_peak_lr"] == FloatDistribution(1e-4, 1e-2, log=True)
        assert frozen.distributions["lr_warmup_steps"] == IntDistribution(0, 40)
        assert frozen.distributions["lr_total_steps"] == IntDistribution(500, 800)
        # conditional parameters: only the family's own
        assert ("lr_cooldown_fraction" in frozen.params) == (fam == "wsd")
        assert ("lr_final_lr_ratio" in frozen.params) == (fam in ("cosine", "linear", "wsd"))
        # the stored schedule is the one returned, and it is built from the params
        assert get_schedule(frozen) == schedule
        assert schedule.family == fam
        assert schedule.total_steps == frozen.params["lr_total_steps"]
        assert schedule.warmup_steps == frozen.params["lr_warmup_steps"]
        assert math.isclose(schedule.peak_lr, frozen.params["lr_peak_lr"])
        if fam in ("cosine", "linear", "wsd"):
            assert math.isclose(schedule.params["final_lr"], frozen.params["lr_final_lr_ratio"] * schedule.peak_lr)
        assert get_sizes(frozen) == (25e6, None)
        space = get_space(frozen)
        assert space is not None and space.build(space.values_from_params(frozen.params)) == schedule
    assert seen_families == {"cosine", "wsd", "linear", "constant"}
    attrs = study._storage.get_study_system_attrs(study._study_id)
    assert attrs[STUDY_SPACE_PREFIX + "lr"]["families"] == ["cosine", "wsd", "linear", "constant"]


def test_fixed_values_suggest_no_parameter() -> None:
    study = _study()
    trial = study.ask()
    schedule = suggest_schedule(trial, families=("wsd",), total_steps=1000, warmup_steps=50, cooldown_fraction=0.2,
                                final_lr_ratio=0.0, peak_lr=(1e-3, 1e-2), name="sched")
    assert set(trial.params) == {"sched_peak_lr"}
    assert schedule == Schedule.wsd(trial.params["sched_peak_lr"], 1000, 50, 0.0, 0.2)


def test_set_schedule_logged_knots_and_sizes_roundtrip_through_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=url, study_name="s")
    knots = Schedule.from_knots([0, 100, 900, 1000], [0.0, 3e-4, 3e-4, 3e-5])
    trial = study.ask()
    set_schedule(trial, knots, model_size=1e8, tokens_per_step=5e5)
    assert get_schedule(trial) == knots
    study.tell(trial, 2.0)
    # another process would load the study from the same storage
    again = optuna.load_study(study_name="s", storage=url)
    frozen = again.trials[0]
    assert get_schedule(frozen) == knots
    assert get_sizes(frozen) == (1e8, 5e5)
    assert get_space(frozen) is None


def test_trial_without_schedule_gives_none() -> None:
    study = _study()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert get_schedule(study.trials[0]) is None


def test_fixed_trial_works_without_storage() -> None:
    trial = optuna.trial.FixedTrial({"lr_family": "cosine", "lr_peak_lr": 2e-3, "lr_final_lr_ratio": 0.05})
    schedule = suggest_schedule(trial, total_steps=300)
    assert schedule == Schedule.cosine(2e-3, 300, 0, 1e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"families": ("cosine", "exotic")}, "unknown family 'exotic'"),
        ({"peak_lr": (-1.0, 1e-3)}, "peak_lr"),
        ({"warmup_steps": (0, 2000), "total_steps": 1000}, "warmup_steps up to 2000"),
        ({"total_steps": (0, 10)}, "total_steps"),
        ({"cooldown_fraction": (0.1, 1.5)}, "cooldown_fraction"),
        ({"final_lr_ratio": "big"}, "final_lr_ratio"),
        ({"families": ()}, "families is empty"),
        ({"model_size": -5.0}, "model_size"),
    ],
)
def test_bad_arguments_raise_one_line_input_error(kwargs: dict, match: str) -> None:
    study = _study()
    trial = study.ask()
    with pytest.raises(InputError, match=match) as info:
        suggest_schedule(trial, **{"total_steps": 1000, **kwargs})
    assert "\n" not in str(info.value)


def test_set_schedule_rejects_non_schedule() -> None:
    trial = _study().ask()
    with pytest.raises(InputError, match="expected a Schedule"):
        set_schedule(trial, {"family": "cosine"})  # type: ignore[arg-type]


def test_space_is_stored_before_parameters_are_suggested() -> None:
    """The sampler reads the space from the trial while the parameters are suggested."""
    seen: list[bool] = []

    class Spy(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, name, dist):  # type: ignore[no-untyped-def]
            seen.append(SPACE_KEY in trial.system_attrs)
            return super().sample_independent(study, trial, name, dist)

    study = optuna.create_study(sampler=Spy(seed=0))
    suggest_schedule(study.ask(), total_steps=100)
    assert seen and all(seen)


def test_enqueued_values_no_schedule_can_take_are_dropped_and_said_so(tmp_path: Path) -> None:
    """``study.enqueue_trial`` with a family not in the space, a negative peak LR and a
    cooldown fraction of 2: the trial still runs (the sampler chooses those three), the
    valid enqueued values are kept, and the trial says what was dropped; a valid value
    merely outside the range is kept, as Optuna keeps it, and said."""
    study = _study(f"sqlite:///{tmp_path / 'q.db'}")
    space = {"total_steps": 600, "peak_lr": (1e-4, 1e-2), "warmup_steps": (0, 40)}
    study.enqueue_trial({"lr_family": "nosuch", "lr_peak_lr": 2e-3, "lr_warmup_steps": 7})
    study.enqueue_trial({"lr_family": "wsd", "lr_peak_lr": -1e-3, "lr_cooldown_fraction": 2.0,
                         "lr_warmup_steps": 9})
    study.enqueue_trial({"lr_family": "cosine", "lr_peak_lr": 0.05})  # outside the range, valid
    for _ in range(3):
        trial = study.ask()
        with pytest.warns(UserWarning):
            schedule = suggest_schedule(trial, **space)
        study.tell(trial, 1.0)
        assert get_schedule(study.trials[trial.number]) == schedule
    first, second, third = study.trials
    assert first.params["lr_family"] in ("cosine", "wsd", "linear", "constant")
    assert (first.params["lr_peak_lr"], first.params["lr_warmup_steps"]) == (2e-3, 7)
    assert first.user_attrs["optlaws_warning"].startswith("enqueued lr_family='nosuch' ignored")
    assert second.params["lr_family"] == "wsd" and second.params["lr_warmup_steps"] == 9
    assert 1e-4 <= second.params["lr_peak_lr"] <= 1e-2 and 0 <= second.params["lr_cooldown_fraction"] <= 1
    warning = second.user_attrs["optlaws_warning"]
    assert "lr_peak_lr=-0.001 ignored" in warning and "lr_cooldown_fraction=2.0 ignored" in warning
    assert ";" in warning and "\n" not in warning
    assert third.params["lr_peak_lr"] == 0.05
    assert third.user_attrs["optlaws_warning"] == (
        "enqueued lr_peak_lr=0.05 lies outside the search space [0.0001, 0.01]: used as given (as Optuna does), "
        "the schedule built from it as it allows"
    )  # said once, though every family has a peak LR


def test_an_enqueued_warmup_longer_than_the_run_is_said_on_the_trial() -> None:
    """Optuna keeps an enqueued value outside the range; a warmup longer than the run is
    then cut to the run by the schedule: the trial says the value lay outside the space."""
    study = _study()
    study.enqueue_trial({"lr_warmup_steps": 10000})
    trial = study.ask()
    with pytest.warns(UserWarning):
        schedule = suggest_schedule(trial, total_steps=200, families=("cosine", "wsd"), warmup_steps=(0, 20))
    assert schedule.warmup_steps == 200
    assert "enqueued lr_warmup_steps=10000 lies outside the search space [0, 20]" in trial.user_attrs[
        "optlaws_warning"
    ]


def test_changing_the_families_within_a_study_says_how_to_go_on() -> None:
    """Optuna cannot change a categorical parameter's choices within a study: narrowing
    the families is one line naming the parameter and the way out (another ``name=``),
    which then works; a narrower peak-LR range needs nothing."""
    study = _study()
    for space in ({}, {"peak_lr": (1e-3, 3e-3)}):
        trial = study.ask()
        suggest_schedule(trial, total_steps=600, **space)
        study.tell(trial, 1.0)
    trial = study.ask()
    with pytest.raises(InputError, match=r"lr_family choices \('cosine', 'wsd'\) differ .* another name=") as err:
        suggest_schedule(trial, total_steps=600, families=("cosine", "wsd"))
    assert "\n" not in str(err.value)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    trial = study.ask()
    schedule = suggest_schedule(trial, total_steps=600, families=("cosine", "wsd"), name="lr2")
    assert schedule.family in ("cosine", "wsd") and "lr2_family" in trial.params


def test_a_second_schedule_in_one_trial_says_how_to_go_on() -> None:
    """A trial has one schedule, the one the law scores: a second ``suggest_schedule``
    under another name would silently replace it, so it is one line naming the way on;
    the same name again gives the same schedule."""
    study = optuna.create_study()
    trial = study.ask()
    first = suggest_schedule(trial, total_steps=100, name="lr")
    assert suggest_schedule(trial, total_steps=100, name="lr") == first
    with pytest.raises(InputError, match=r"already has the schedule 'lr'.*scale=") as info:
        suggest_schedule(trial, total_steps=100, name="emb")
    assert "\n" not in str(info.value)
    assert get_schedule(trial) == first and get_space(trial).name == "lr"  # type: ignore[union-attr]
