"""The package's import promises: the law core needs neither torch nor the Optuna parts."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _imported_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"import sys; {code}; print(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    return set(out)


def test_law_core_imports_without_torch_or_optuna() -> None:
    mods = _imported_after(
        "import optuna_optlaws; from optuna_optlaws.laws import make_law; make_law('optlaw'); "
        "make_law('multipower'); make_law('momentum'); import optuna_optlaws.cli"
    )
    assert "torch" not in mods
    assert "optuna" not in mods
    assert "plotly" not in mods


def test_the_sampler_and_pruner_import_without_torch_or_scipy_stats() -> None:
    """What a study script imports to plug in: scipy.stats (a third of a second) and
    torch load only when used."""
    mods = _imported_after("from optuna_optlaws import OptLawsPruner, OptLawsSampler, suggest_schedule")
    assert "torch" not in mods
    assert "scipy.stats" not in mods


@pytest.mark.parametrize(
    "name",
    ["OptLaw", "OptLawsSampler", "OptLawsPruner", "suggest_schedule", "set_schedule", "get_schedule",
     "publish_dashboard", "OptLawsDashboardCallback", "DivergenceCriterion", "LandscapeLaw", "detect_divergence",
     "load_law", "MultiPowerLaw", "MomentumLaw"],
)
def test_public_names_resolve(name: str) -> None:
    import optuna_optlaws

    assert getattr(optuna_optlaws, name) is not None
    assert name in optuna_optlaws.__all__
