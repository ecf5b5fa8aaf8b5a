"""The interface every loss-vs-schedule law implements, and the law file (JSON).

A law is fitted on :class:`~optuna_optlaws.curves.Curve` objects and predicts the loss
(nats) of any schedule at any steps, with a central predictive interval. Concrete laws
live in their own modules (``optlaw``, ``multipower``, ``momentum``) and register
themselves by ``name``.
"""

from __future__ import annotations

import functools
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from optuna_optlaws._errors import InputError
from optuna_optlaws.curves import Curve
from optuna_optlaws.schedules import Schedule

LAW_FILE_FORMAT = 1
"""Version of the law file layout written by :meth:`Law.save`."""

_LawT = TypeVar("_LawT", bound="Law")


@functools.lru_cache(maxsize=16)
def z_quantile(level: float) -> float:
    """Half-width, in standard deviations, of a central ``level`` normal interval."""
    from scipy import stats

    return float(stats.norm.ppf(0.5 + level / 2.0))


class Prediction(NamedTuple):
    """Predicted loss (nats) with a central predictive interval, one entry per step.

    Unpacks as ``mean, lo, hi``."""

    mean: NDArray[np.float64]
    lo: NDArray[np.float64]
    hi: NDArray[np.float64]

    def sd(self, level: float = 0.9) -> NDArray[np.float64]:
        """Standard deviation (nats) read off the central ``level`` interval (0 where it is
        inverted)."""
        width = np.asarray(self.hi, dtype=np.float64) - np.asarray(self.lo, dtype=np.float64)
        return np.asarray(np.maximum(width, 0.0) / (2.0 * z_quantile(level)), dtype=np.float64)


class Law(ABC):
    """A law that predicts training loss from the whole LR schedule (and N, D).

    Subclasses set ``name`` and implement :meth:`fit`, :meth:`predict`, and the
    parameter (de)serialisation hooks :meth:`_state` / :meth:`_load_state`.
    """

    name: ClassVar[str] = ""
    """The law's name on the command line and in law files."""

    uses_model_size: ClassVar[bool] = False
    """Whether the law has a model-size term (can predict a model size it was not fitted on)."""

    interval_level: float = 0.9
    """Coverage of the central predictive interval returned by :meth:`predict`."""

    def __init__(self) -> None:
        self.fit_info: dict[str, Any] = {}
        """Diagnostics of the last fit (loss, seconds, starts, runs, sizes)."""
        self.fitted_on: list[dict[str, Any]] = []
        """The runs the law was fitted on: id, model size, tokens per step, steps, final loss."""

    # ------------------------------------------------------------------ to implement
    @abstractmethod
    def fit(self: _LawT, curves: Sequence[Curve], *, seed: int = 0) -> _LawT:
        """Fit the law on ``curves`` (only their finite losses) and return ``self``."""

    @abstractmethod
    def predict(
        self,
        schedule: Schedule,
        steps: ArrayLike | None = None,
        *,
        model_size: float | None = None,
        tokens_per_step: float | None = None,
        observed: Curve | None = None,
    ) -> Prediction:
        """Predicted loss of ``schedule`` at ``steps`` (default: its last step).

        ``observed``: the run's own losses so far (a prefix); when given, the
        prediction is conditioned on them (the pruner's use)."""

    @abstractmethod
    def _state(self) -> dict[str, Any]:
        """The fitted parameters as a JSON-ready dict."""

    @abstractmethod
    def _load_state(self, state: Mapping[str, Any]) -> None:
        """Restore the fitted parameters written by :meth:`_state`."""

    @property
    @abstractmethod
    def is_fitted(self) -> bool:
        """Whether the law has parameters to predict with."""

    # ------------------------------------------------------------------ shared
    def predict_final(
        self,
        schedules: Sequence[Schedule],
        *,
        model_size: float | None = None,
        tokens_per_step: float | None = None,
    ) -> Prediction:
        """Predicted final loss (at each schedule's last step) of many schedules at once.

        Laws override this with a vectorised version; this default loops."""
        out = [
            self.predict(s, [s.total_steps - 1], model_size=model_size, tokens_per_step=tokens_per_step)
            for s in schedules
        ]
        return Prediction(
            np.array([p.mean[0] for p in out]),
            np.array([p.lo[0] for p in out]),
            np.array([p.hi[0] for p in out]),
        )

    def predict_curve(self, curve: Curve, *, observed: Curve | None = None) -> Prediction:
        """Predicted loss at every observed step of ``curve``, using its schedule and sizes."""
        return self.predict(
            curve.schedule,
            curve.steps,
            model_size=curve.model_size,
            tokens_per_step=curve.tokens_per_step,
            observed=observed,
        )

    def check_sizes(self, model_size: float | None, where: str = "") -> None:
        """Raise :class:`InputError` when asked for a model size this law cannot predict.

        A law without a model-size term predicts only the size(s) it was fitted on."""
        if self.uses_model_size or model_size is None:
            return
        sizes = {float(r["model_size"]) for r in self.fitted_on if r.get("model_size") is not None}
        if sizes and not any(math.isclose(model_size, s, rel_tol=1e-6) for s in sizes):
            place = f"{where}: " if where else ""
            raise InputError(
                f"{place}law {self.name!r} has no model-size term: fitted on model_size "
                f"{sorted(sizes)}, cannot extrapolate to model_size={model_size:g}"
            )

    def check_tokens_per_step(self, tokens_per_step: float | None, where: str = "") -> None:
        """Raise :class:`InputError` when asked for a ``tokens_per_step`` other than the
        fitted one(s): no law here has a batch-size term, so a step means the fitted
        batch's step."""
        if tokens_per_step is None:
            return
        fitted = sorted({float(r["tokens_per_step"]) for r in self.fitted_on if r.get("tokens_per_step") is not None})
        if fitted and not any(math.isclose(tokens_per_step, t, rel_tol=1e-6) for t in fitted):
            place = f"{where}: " if where else ""
            raise InputError(
                f"{place}law {self.name!r} has no batch-size term: fitted on tokens_per_step "
                f"{fitted}, cannot predict tokens_per_step={tokens_per_step:g}"
            )

    def _record_fitted_on(self, curves: Sequence[Curve]) -> None:
        self.fitted_on = [
            {
                "run_id": c.run_id,
                "model_size": c.model_size,
                "tokens_per_step": c.tokens_per_step,
                "total_steps": c.schedule.total_steps,
                "points": int(np.sum(c.finite)),
                "final_loss": c.final_loss if math.isfinite(c.final_loss) else None,
            }
            for c in curves
        ]

    # ------------------------------------------------------------------ law file
    def to_dict(self) -> dict[str, Any]:
        """The law file's content: name, format, fitted parameters, data, diagnostics."""
        if not self.is_fitted:
            raise InputError(f"law {self.name!r} is not fitted; fit it before saving")
        return {
            "law": self.name,
            "format_version": LAW_FILE_FORMAT,
            "params": self._state(),
            "fitted_on": self.fitted_on,
            "fit_info": self.fit_info,
        }

    def save(self, path: str | Path) -> None:
        """Write the law file (JSON) to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, default=_json_default) + "\n")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "law") -> Law:
        """Rebuild a fitted law from :meth:`to_dict`'s output (any registered law)."""
        from optuna_optlaws.laws import law_class

        if not isinstance(data, Mapping) or "law" not in data or "params" not in data:
            raise InputError(f"{where}: not a law file (needs the keys 'law' and 'params')")
        version = data.get("format_version")
        if not isinstance(version, int) or version > LAW_FILE_FORMAT or version < 1:
            raise InputError(
                f"{where}: law file format_version {version!r} is not supported by this "
                f"optuna-optlaws (reads 1..{LAW_FILE_FORMAT}); refit the law with 'optlaws fit'"
            )
        klass = law_class(str(data["law"]), where=where)
        if cls is not Law and not issubclass(klass, cls):
            raise InputError(f"{where}: holds law {data['law']!r}, not {cls.name!r}")
        law = klass()
        try:
            law._load_state(data["params"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{where}: law {data['law']!r} has bad parameters ({exc!r})") from None
        fitted_on, fit_info = data.get("fitted_on", []), data.get("fit_info", {})
        if not isinstance(fitted_on, list) or not isinstance(fit_info, Mapping):
            raise InputError(f"{where}: law file's 'fitted_on' must be a list and 'fit_info' an object")
        law.fitted_on = list(fitted_on)
        law.fit_info = dict(fit_info)
        return law

    @classmethod
    def load(cls, path: str | Path) -> Law:
        """Read a law file written by :meth:`save` (or by ``optlaws fit``)."""
        from optuna_optlaws._csvio import read_input_text

        path = Path(path)
        text = read_input_text(path, "law file")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: law file is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(data, where=str(path))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
