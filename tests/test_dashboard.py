"""Tests of the optuna-dashboard integration: figures in storage, notes, callback, and the
real dashboard server rendering them in headless Chromium."""

from __future__ import annotations

import json
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import optuna
import pytest

from optuna_optlaws import set_schedule
from optuna_optlaws._dashboard._browser import find_browser
from optuna_optlaws._dashboard._figures import CURVES_TITLE, FIT_TITLE, FRONTIER_TITLE, PARAMS_TITLE
from optuna_optlaws.curves import Curve, read_curves_csv
from optuna_optlaws.dashboard import GRAPH_IDS, OptLawsDashboardCallback, publish_dashboard, resolve_law
from optuna_optlaws.laws import make_law

MPL = Path(str(resources.files("optuna_optlaws") / "data" / "mpl_luo2025.csv"))
REASON = "predicted final 3.31 [3.30, 3.33] above frontier 3.28 + 0.01"


@pytest.fixture(scope="module")
def runs() -> list[Curve]:
    """The four 25M runs of 24k steps, every 4th logged point (about 43 per run)."""
    curves = [c for c in read_curves_csv(MPL) if c.model_size == 25e6 and c.schedule.total_steps < 30000
              and "wsdcon" not in c.run_id]
    assert len(curves) == 4
    return [Curve(c.run_id, c.schedule, c.steps[::4], c.losses[::4], model_size=c.model_size) for c in curves]


IGNORED = "no new report since the last check at step 40 (repeated step?)"
"""A warning of the pruner's, as it records it on a trial."""


def _plots(study: optuna.Study) -> dict[str, dict]:
    from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

    attrs = study._storage.get_study_system_attrs(study._study_id)
    return {k: json.loads(v) for k, v in get_plotly_graph_objects(attrs).items()}


def _make_study(runs: list[Curve], storage: str | None = None) -> optuna.Study:
    """Trial 0 pruned half way with the pruner's attributes, the others complete with
    predictions; one trial without a schedule (ignored by the figures)."""
    study = optuna.create_study(storage=storage, study_name="dash", direction="minimize")
    for i, c in enumerate(runs):
        trial = study.ask()
        set_schedule(trial, c.schedule, model_size=c.model_size)
        n = c.steps.size // 2 if i == 0 else c.steps.size
        for s, v in zip(c.steps[:n].tolist(), c.losses[:n].tolist(), strict=True):
            trial.report(v, s)
        trial.set_user_attr("optlaws_pred_final", c.final_loss + 0.002)
        trial.set_user_attr("optlaws_pred_lo", c.final_loss - 0.01)
        trial.set_user_attr("optlaws_pred_hi", c.final_loss + 0.014)
        if i == 1:
            trial.set_user_attr("optlaws_warning", IGNORED)
        if i == 0:
            trial.set_user_attr("optlaws_prune_reason", REASON)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, c.final_loss)
    study.enqueue_trial({})
    plain = study.ask()
    plain.report(5.0, 10)
    study.tell(plain, 5.0)
    return study


def test_publish_writes_four_figures_and_notes(runs: list[Curve]) -> None:
    from optuna_dashboard import get_note

    study = _make_study(runs)
    law = make_law("momentum")
    ids = publish_dashboard(study, law)
    assert ids == GRAPH_IDS
    plots = _plots(study)
    assert set(plots) == set(GRAPH_IDS.values())
    titles = {k: v["layout"]["title"]["text"] for k, v in plots.items()}
    assert titles[GRAPH_IDS["curves"]].startswith(CURVES_TITLE)
    assert titles[GRAPH_IDS["frontier"]] == FRONTIER_TITLE
    assert titles[GRAPH_IDS["fit"]].startswith(FIT_TITLE)
    assert titles[GRAPH_IDS["params"]] == PARAMS_TITLE
    assert law.is_fitted  # an unfitted law passed in is fitted on the study's trials
    assert "fitted on 4 trials" in titles[GRAPH_IDS["curves"]]

    curves = plots[GRAPH_IDS["curves"]]["data"]
    # per trial: band, predicted mean, observed; the trial without a schedule is left out
    assert len(curves) == 3 * 4
    names = [t["name"] for t in curves]
    assert {"#0 (pruned)", "#0 predicted", "#0 90% band", "#1"} <= set(names)
    pred = next(t for t in curves if t["name"] == "#1 predicted")
    assert pred["x"][-1] == runs[1].schedule.total_steps - 1
    # the law's prediction tracks the observed curve within a few hundredths of a nat
    final_pred = pred["y"][-1]
    assert abs(final_pred - runs[1].final_loss) < 0.05

    frontier = {t["name"]: t for t in plots[GRAPH_IDS["frontier"]]["data"]}
    pruned = frontier["pruned (last reported loss)"]
    assert pruned["x"] == [0] and REASON in pruned["text"][0]
    best = min(c.final_loss for c in runs[1:])
    assert f"frontier (best final {best:.4f})" in frontier
    predicted = frontier["predicted final (90% interval)"]
    assert predicted["x"] == [0, 1, 2, 3]
    assert predicted["y"][1] == pytest.approx(runs[1].final_loss + 0.002, abs=1e-5)

    cells = plots[GRAPH_IDS["params"]]["data"][0]["cells"]["values"]
    table = dict(zip(cells[0], cells[1], strict=True))
    assert table["law"] == "momentum" and table["fitted on"].startswith("4 runs")
    assert "reported losses inside the 90% band" in table

    note = get_note(optuna.Trial(study, study.trials[0]._trial_id))
    assert REASON in note and "Predicted final loss" in note and "Bad input" not in note
    note = get_note(optuna.Trial(study, study.trials[1]._trial_id))  # bad input the pruner ignored
    assert f"Bad input, ignored: {IGNORED}" in note and "Pruned" not in note


def test_params_table_marks_a_parameter_on_its_bound(runs: list[Curve]) -> None:
    """A parameter the fit pressed against a bound (``fit_info["at_bounds"]``) says so in
    the dashboard's fit table; the others do not."""
    from optuna_optlaws._dashboard._figures import params_figure

    law = make_law("momentum").fit(runs)
    name, other = list(law.fit_info["params"])[:2]
    law.fit_info = {**law.fit_info, "at_bounds": {name: {"side": "upper", "bound": 10.0}}}
    cells = params_figure([], law).to_plotly_json()["data"][0]["cells"]["values"]
    table = dict(zip(cells[0], cells[1], strict=True))
    assert table[f"parameter {name}"].endswith("(on its upper bound 10)")
    assert "bound" not in table[f"parameter {other}"]


def test_publish_again_overwrites_in_place(runs: list[Curve]) -> None:
    study = _make_study(runs[:3])
    law = make_law("momentum").fit(runs[:3])
    publish_dashboard(study, law)
    before = study._storage.get_study_system_attrs(study._study_id)
    publish_dashboard(study, law)
    after = study._storage.get_study_system_attrs(study._study_id)
    assert set(_plots(study)) == set(GRAPH_IDS.values())
    assert {k for k in after if k.startswith("dashboard:plot_data:")} == {
        k for k in before if k.startswith("dashboard:plot_data:")
    }
    # notes are rewritten only when they change: the version stays
    assert after["dashboard:1:note_ver"] == before["dashboard:1:note_ver"] == 1


def test_resolve_law_without_data_or_with_a_stored_law(runs: list[Curve]) -> None:
    empty = optuna.create_study()
    law, note = resolve_law(empty, None, [])
    assert law is None and "no trial has reported" in note
    publish_dashboard(empty)  # figures without a law still publish
    assert set(_plots(empty)) == set(GRAPH_IDS.values())


def test_law_stored_by_the_pruner_is_drawn(runs: list[Curve]) -> None:
    from optuna_optlaws import OptLawsPruner
    from optuna_optlaws.benchmarks.replay import group_curves, replay_order

    group = group_curves(runs)[0]
    storage = optuna.storages.InMemoryStorage()
    replay_order(group, [0, 1, 2, 3], OptLawsPruner(law="momentum"), storage=storage, study_name="p")
    study = optuna.load_study(study_name="p", storage=storage)
    assert any(k.startswith("optlaws:law:momentum") for k in study._storage.get_study_system_attrs(study._study_id))
    publish_dashboard(study)
    title = _plots(study)[GRAPH_IDS["curves"]]["layout"]["title"]["text"]
    assert "law 'momentum' stored in the study" in title


def test_callback_publishes_every_k_trials_and_never_raises(runs: list[Curve]) -> None:
    law = make_law("momentum").fit(runs)

    def objective(trial: optuna.Trial) -> float:
        c = runs[trial.number % len(runs)]
        set_schedule(trial, c.schedule, model_size=c.model_size)
        for s, v in zip(c.steps.tolist(), c.losses.tolist(), strict=True):
            trial.report(v, s)
        return c.final_loss

    study = optuna.create_study()
    study.optimize(objective, n_trials=1, callbacks=[OptLawsDashboardCallback(law, every=2)])
    assert _plots(study) == {}
    study.optimize(objective, n_trials=1, callbacks=[cb := OptLawsDashboardCallback(law, every=2)])
    assert _plots(study) == {}  # a new callback counts from zero
    study.optimize(objective, n_trials=1, callbacks=[cb])
    assert set(_plots(study)) == set(GRAPH_IDS.values())

    class Broken:
        name = "broken"
        is_fitted = True
        fit_info: dict = {}  # noqa: RUF012
        fitted_on: list = []  # noqa: RUF012

        def predict(self, *a: object, **k: object) -> None:
            raise RuntimeError("boom")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.optimize(objective, n_trials=1, callbacks=[OptLawsDashboardCallback(Broken(), every=1)])  # type: ignore[arg-type]
    assert any("could not publish" in str(w.message) for w in caught)
    assert len(study.trials) == 4


def test_real_dashboard_renders_figures_in_headless_chromium(runs: list[Curve], tmp_path: Path) -> None:
    pytest.importorskip("selenium", reason="selenium is not installed")
    if find_browser() is None:
        pytest.skip("chromium or chromedriver is not installed (looked in /usr/bin and PATH)")
    from selenium.webdriver.common.by import By

    from optuna_optlaws._dashboard._browser import (
        dashboard_server,
        headless_chromium,
        open_and_wait,
        save_screenshot,
        study_url,
    )

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = _make_study(runs, storage=url)
    publish_dashboard(study, make_law("momentum"))
    with dashboard_server(url) as base, headless_chromium(height=2600) as driver:
        page = study_url(base, study._study_id)
        body = open_and_wait(driver, page, [CURVES_TITLE, FRONTIER_TITLE, FIT_TITLE, PARAMS_TITLE], min_plots=4)
        shot = save_screenshot(driver, tmp_path / "study_page.png")
        assert shot.stat().st_size > 10_000
        # every published figure is a rendered plotly graph in a div named after its id
        for graph_id in GRAPH_IDS.values():
            div = driver.find_element(By.ID, f"user-defined-plot:{graph_id}")
            assert div.find_elements(By.CSS_SELECTOR, ".main-svg")
            assert div.size["height"] > 100 and div.size["width"] > 100
        # the curves figure drew band, prediction and observed line for each trial with a schedule
        selector = f"[id='user-defined-plot:{GRAPH_IDS['curves']}'] .scatterlayer .trace"
        lines = driver.find_elements(By.CSS_SELECTOR, selector)
        assert len(lines) == 3 * 4
        assert "frontier (best final" in body

        table = open_and_wait(driver, page + "/smartSelection", ["optlaws_pred_final"])
        save_screenshot(driver, tmp_path / "trial_table.png")
        assert "optlaws_prune_reason" in table
        pred0 = study.trials[0].user_attrs["optlaws_pred_final"]
        assert f"{pred0:.4f}"[:5] in table
        assert np.isfinite(pred0)
