"""Law files (JSON) of the baseline laws: exact round trip, clear errors on bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from optuna_optlaws._errors import InputError
from optuna_optlaws.curves import read_curves_csv
from optuna_optlaws.laws import Law, load_law, make_law
from optuna_optlaws.laws.momentum import MomentumLaw
from optuna_optlaws.laws.multipower import MultiPowerLaw
from optuna_optlaws.schedules import Schedule

RUNS = ["100M_cosine_24000", "100M_constant_24000", "100M_wsdcon_9"]


@pytest.fixture(scope="module")
def fitted(mpl_csv: Path) -> dict[str, Law]:
    curves = read_curves_csv(mpl_csv, runs=RUNS)
    mpl = MultiPowerLaw()
    mpl.loco = False  # the momentum law round-trips a model discrepancy; this saves time
    return {
        "multipower": mpl.fit(curves),
        "momentum": MomentumLaw(decay=0.995).fit(curves),
    }


@pytest.fixture(scope="module")
def mpl_csv() -> Path:
    from importlib import resources

    return Path(str(resources.files("optuna_optlaws") / "data" / "mpl_luo2025.csv"))


SCHEDULES = [
    Schedule.wsd(3e-4, 24000, warmup_steps=2160, final_lr=3e-5, cooldown_fraction=1 / 6, cooldown="exp"),
    Schedule.cosine(3e-4, 30000, warmup_steps=2160, final_lr=0.0),
]


@pytest.mark.parametrize("name", ["multipower", "momentum"])
def test_round_trip_gives_identical_predictions(name: str, fitted: dict[str, Law], tmp_path: Path) -> None:
    law = fitted[name]
    path = tmp_path / f"{name}.json"
    law.save(path)
    back = load_law(path)
    assert type(back) is type(law)
    assert back.to_dict() == json.loads(path.read_text())
    data = json.loads(path.read_text())
    assert data["law"] == name and data["format_version"] == 1
    assert [r["run_id"] for r in data["fitted_on"]] == RUNS
    assert data["fitted_on"][0]["model_size"] == 100e6
    assert data["fit_info"]["n_obs"] > 100
    for s in SCHEDULES:
        steps = np.arange(2200, s.total_steps, 997)
        a, b = law.predict(s, steps), back.predict(s, steps)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(law.predict_final(SCHEDULES).mean, back.predict_final(SCHEDULES).mean)
    with pytest.raises(InputError, match="cannot extrapolate"):
        back.predict(SCHEDULES[0], model_size=25e6)


def test_law_constants_are_saved(fitted: dict[str, Law], tmp_path: Path) -> None:
    fitted["momentum"].save(tmp_path / "m.json")
    back = load_law(tmp_path / "m.json")
    assert isinstance(back, MomentumLaw) and back.decay == 0.995
    assert back.posterior is not None and back.posterior.model_sd > 0
    assert back.posterior.model_sd == fitted["momentum"].posterior.model_sd  # type: ignore[attr-defined]
    fitted["multipower"].save(tmp_path / "p.json")
    assert json.loads((tmp_path / "p.json").read_text())["params"]["block"] == MultiPowerLaw().block


def test_unfitted_law_cannot_be_saved(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not fitted"):
        make_law("multipower").save(tmp_path / "x.json")


def _corrupt(fitted: dict[str, Law], tmp_path: Path, name: str, edit: object) -> Path:
    data = fitted[name].to_dict()
    edit(data)  # type: ignore[operator]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d["params"].pop("posterior"), "bad parameters"),
        (lambda d: d["params"]["posterior"].update(z=[1.0, 2.0]), "bad parameters"),
        (lambda d: d["params"]["posterior"].update(noise="NaN"), "bad parameters"),
        (lambda d: d["params"]["posterior"]["cov"][0].__setitem__(0, None), "bad parameters"),
        (lambda d: d["params"]["values"].update(L0=99.0), "bad parameters"),
        (lambda d: d["params"].update(decay=1.5), "bad parameters"),
        (lambda d: d.update(params=[1, 2, 3]), "bad parameters"),
        (lambda d: d.update(law="nolaw"), "unknown law"),
        (lambda d: d.update(format_version=99), "format_version"),
        (lambda d: d.pop("params"), "not a law file"),
    ],
)
def test_bad_law_file_is_an_input_error(fitted: dict[str, Law], tmp_path: Path, edit: object, match: str) -> None:
    path = _corrupt(fitted, tmp_path, "momentum", edit)
    with pytest.raises(InputError, match=match) as info:
        load_law(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unreadable_law_files(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_law(bad)
    with pytest.raises(InputError, match="cannot read"):
        load_law(tmp_path / "missing.json")


def test_law_file_without_model_discrepancy_still_loads(fitted: dict[str, Law], tmp_path: Path) -> None:
    # files written before the model discrepancy existed have no "model_sd": it reads as 0
    data = fitted["momentum"].to_dict()
    del data["params"]["posterior"]["model_sd"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    back = load_law(path)
    assert back.posterior.model_sd == 0.0  # type: ignore[attr-defined]
    p_old = back.predict(SCHEDULES[0])
    p_new = fitted["momentum"].predict(SCHEDULES[0])
    assert p_old.mean[0] == p_new.mean[0]
    assert p_old.hi[0] - p_old.lo[0] < p_new.hi[0] - p_new.lo[0]
