"""Loss-vs-schedule laws: this project's Opt-Law and the published baselines.

``law_class(name)`` gives the class registered under a name (``optlaw``, ``multipower``,
``momentum``); ``load_law(path)`` reads any law file.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from optuna_optlaws._errors import InputError
from optuna_optlaws.laws._base import Law, Prediction

LAW_MODULES = {
    "optlaw": ("optuna_optlaws.laws.optlaw", "OptLaw"),
    "multipower": ("optuna_optlaws.laws.multipower", "MultiPowerLaw"),
    "momentum": ("optuna_optlaws.laws.momentum", "MomentumLaw"),
}
"""Law name -> (module, class); modules are imported on first use."""

DEFAULT_LAW = "optlaw"


def law_class(name: str, where: str = "") -> type[Law]:
    """The law class registered under ``name``."""
    if name not in LAW_MODULES:
        place = f"{where}: " if where else ""
        raise InputError(f"{place}unknown law {name!r}; known laws: {', '.join(LAW_MODULES)}")
    module, attr = LAW_MODULES[name]
    klass: type[Law] = getattr(importlib.import_module(module), attr)
    return klass


def make_law(name: str = DEFAULT_LAW) -> Law:
    """A new, unfitted law of the given name."""
    return law_class(name)()


def load_law(path: str | Path) -> Law:
    """Read a law file written by ``optlaws fit`` or ``Law.save``."""
    return Law.load(path)


__all__ = ["DEFAULT_LAW", "LAW_MODULES", "Law", "Prediction", "law_class", "load_law", "make_law"]
