"""optuna-optlaws: schedule-aware sampling and pruning for Optuna, driven by Opt-Laws.

The law core (:mod:`~optuna_optlaws.schedules`, :mod:`~optuna_optlaws.curves`,
:mod:`~optuna_optlaws.laws`) needs only NumPy and SciPy. The Optuna components are
imported on first use, and torch only by :mod:`optuna_optlaws.torch`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from optuna_optlaws._errors import InputError
from optuna_optlaws.curves import Curve, read_curves_csv
from optuna_optlaws.schedules import Schedule

__version__ = "0.1.0"

_LAZY = {
    "OptLaw": "optuna_optlaws.laws.optlaw",
    "MultiPowerLaw": "optuna_optlaws.laws.multipower",
    "MomentumLaw": "optuna_optlaws.laws.momentum",
    "load_law": "optuna_optlaws.laws",
    "OptLawsSampler": "optuna_optlaws.sampler",
    "OptLawsPruner": "optuna_optlaws.pruner",
    "suggest_schedule": "optuna_optlaws.trial_schedule",
    "set_schedule": "optuna_optlaws.trial_schedule",
    "get_schedule": "optuna_optlaws.trial_schedule",
    "publish_dashboard": "optuna_optlaws.dashboard",
    "OptLawsDashboardCallback": "optuna_optlaws.dashboard",
    "DivergenceCriterion": "optuna_optlaws.divergence.criterion",
    "LandscapeLaw": "optuna_optlaws.divergence.landscape",
    "detect_divergence": "optuna_optlaws.divergence.online",
    "add_logged_runs": "optuna_optlaws.logged_runs",
    "set_parent_run": "optuna_optlaws.parent_run",
    "get_parent_run": "optuna_optlaws.parent_run",
}

if TYPE_CHECKING:
    from optuna_optlaws.dashboard import OptLawsDashboardCallback, publish_dashboard
    from optuna_optlaws.divergence.criterion import DivergenceCriterion
    from optuna_optlaws.divergence.landscape import LandscapeLaw
    from optuna_optlaws.divergence.online import detect_divergence
    from optuna_optlaws.laws import load_law
    from optuna_optlaws.laws.momentum import MomentumLaw
    from optuna_optlaws.laws.multipower import MultiPowerLaw
    from optuna_optlaws.laws.optlaw import OptLaw
    from optuna_optlaws.logged_runs import add_logged_runs
    from optuna_optlaws.parent_run import get_parent_run, set_parent_run
    from optuna_optlaws.pruner import OptLawsPruner
    from optuna_optlaws.sampler import OptLawsSampler
    from optuna_optlaws.trial_schedule import get_schedule, set_schedule, suggest_schedule


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'optuna_optlaws' has no attribute {name!r}")


__all__ = [
    "Curve",
    "DivergenceCriterion",
    "InputError",
    "LandscapeLaw",
    "MomentumLaw",
    "MultiPowerLaw",
    "OptLaw",
    "OptLawsDashboardCallback",
    "OptLawsPruner",
    "OptLawsSampler",
    "Schedule",
    "add_logged_runs",
    "detect_divergence",
    "get_parent_run",
    "get_schedule",
    "load_law",
    "publish_dashboard",
    "read_curves_csv",
    "set_parent_run",
    "set_schedule",
    "suggest_schedule",
]
