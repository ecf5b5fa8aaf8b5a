"""``ParametricLaw``: a :class:`~optuna_optlaws.laws._base.Law` whose fit, intervals,
prefix conditioning and law-file state all come from the shared harness
(:mod:`optuna_optlaws.laws._fitting`).

A concrete law only writes its maths:

* ``space``: a :class:`~optuna_optlaws.laws._fitting.ParamSpace` (class attribute);
* ``_predict_loss(theta, feats, steps)``: the mean loss (nats) at integer ``steps`` of
  one schedule whose :class:`~optuna_optlaws.laws._features.ScheduleFeatures` are
  ``feats`` (natural parameters ``theta``);
* optionally ``_predict_loss_jac(theta, feats, steps)`` (``d loss / d theta``, shape
  ``(len(steps), p)``; set ``has_jacobian = True``), ``_initial_guesses(obs, feats)``
  (data-driven starts), ``_extra_state`` / ``_load_extra_state`` for fixed constants.

Fitting minimises the Huber loss of ``log(observed) - log(predicted)`` over the finite
points of all curves (diverged points are ignored). Model size: a law with
``uses_model_size = False`` fits curves of one model size only (InputError otherwise;
curves without a ``model_size`` may be mixed in) and refuses to predict any other size.
Likewise for ``tokens_per_step`` (these laws have no batch-size term).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from optuna_optlaws._errors import InputError
from optuna_optlaws.curves import Curve
from optuna_optlaws.laws._base import Law, Prediction
from optuna_optlaws.laws._features import (
    Observations,
    ScheduleFeatures,
    check_steps,
    features_for,
    observations,
)
from optuna_optlaws.laws._fitting import (
    FitResult,
    ParamSpace,
    Posterior,
    condition_on_prefix,
    fit_least_squares,
    loco_discrepancy,
    predictive,
)
from optuna_optlaws.schedules import Schedule

FloatArray = NDArray[np.float64]
_P = TypeVar("_P", bound="ParametricLaw")


def single_value(curves: Sequence[Curve], attr: str, law: str) -> float | None:
    """The one ``model_size`` or ``tokens_per_step`` (``attr``) of ``curves`` (None when
    none is given); InputError when the curves hold several, for a law without a term
    for it."""
    values = sorted({float(getattr(c, attr)) for c in curves if getattr(c, attr) is not None})
    distinct: list[float] = []
    for v in values:
        if not distinct or not math.isclose(v, distinct[-1], rel_tol=1e-6):
            distinct.append(v)
    if len(distinct) > 1:
        shown = ", ".join(f"{v:g}" for v in distinct)
        term = "model-size" if attr == "model_size" else "batch-size"
        what = "one model size" if attr == "model_size" else "one tokens_per_step"
        raise InputError(
            f"law {law!r} has no {term} term: fit it on curves of {what} "
            f"(got {attr} {shown}); use --runs to pick them"
        )
    return distinct[0] if distinct else None


def single_model_size(curves: Sequence[Curve], law: str) -> float | None:
    """:func:`single_value` for ``model_size``."""
    return single_value(curves, "model_size", law)


class ParametricLaw(Law):
    """Base of laws with a fixed parametric formula; see the module docstring."""

    space: ClassVar[ParamSpace]
    """The law's parameters."""
    has_jacobian: ClassVar[bool] = False
    """Whether :meth:`_predict_loss_jac` is implemented (else finite differences)."""
    huber_delta: float = 1e-3
    """Huber scale on log-loss residuals (nats)."""
    n_random_starts: int = 2
    """Random starts added to the law's own initial guesses."""
    interval_method: str = "delta"
    """``delta`` (linearised Laplace, fast) or ``draws`` (parameter draws)."""
    max_nfev: int = 300
    """Evaluation budget of each start."""
    agree: int = 2
    """Stop the multi-start once this many starts reach the best cost (0: run all)."""
    loco: bool = True
    """Estimate the law's error on unseen schedules by leaving each curve out (adds one
    warm-started refit per curve; see :mod:`optuna_optlaws.laws._fitting`)."""
    loco_folds: int = 8
    """With more curves than this, only this many (evenly spread) are left out in turn."""

    def __init__(self) -> None:
        super().__init__()
        self.posterior: Posterior | None = None
        """The Laplace posterior of the last fit (None before fitting)."""

    # ------------------------------------------------------------------ law maths
    def _predict_loss(self, theta: FloatArray, feats: ScheduleFeatures, steps: NDArray[np.int64]) -> FloatArray:
        """Mean loss (nats) at ``steps``; implemented by each law."""
        raise NotImplementedError

    def _predict_loss_jac(
        self, theta: FloatArray, feats: ScheduleFeatures, steps: NDArray[np.int64]
    ) -> FloatArray:
        """``d loss / d theta`` at ``steps``, shape ``(len(steps), p)``. The harness calls
        it right before :meth:`_predict_loss` at the same point, so a law may memoise
        shared work."""
        raise NotImplementedError

    def _initial_guesses(self, obs: Observations, feats: Sequence[ScheduleFeatures]) -> list[list[float]]:
        """Data-driven starting points (natural units)."""
        return []

    def _extra_state(self) -> dict[str, Any]:
        """Law constants to save besides the fitted parameters."""
        return {}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`_extra_state`."""

    # ------------------------------------------------------------------ fitting
    def fit(self: _P, curves: Sequence[Curve], *, seed: int = 0) -> _P:
        """Fit on the finite losses of ``curves`` (one model size); returns ``self``."""
        if not self.uses_model_size:
            single_model_size(curves, self.name)
        single_value(curves, "tokens_per_step", self.name)
        obs = observations(curves, where=f"fit {self.name}")
        slices = obs.slices()
        feats = [features_for(c.schedule, obs.steps[sl]) for c, sl in zip(obs.curves, slices, strict=True)]
        parts = [(f, obs.steps[sl], np.log(obs.losses[sl])) for f, sl in zip(feats, slices, strict=True)]
        residuals, jacobian = self._residual_fns(parts)
        result = fit_least_squares(
            self.space,
            residuals,
            jacobian=jacobian,
            starts=self._initial_guesses(obs, feats),
            n_random=self.n_random_starts,
            seed=seed,
            huber_delta=self.huber_delta,
            groups=obs.curve_index,
            max_nfev=self.max_nfev,
            agree=self.agree,
            label=f"fit {self.name}",
        )
        if self.loco and len(parts) >= 2:
            folds = []
            chosen = np.unique(np.linspace(0, len(parts) - 1, min(len(parts), self.loco_folds)).round().astype(int))
            for i in chosen.tolist():
                f, st, ly = parts[i]
                others = parts[:i] + parts[i + 1 :]
                late = slice(st.size - max(1, st.size // 4), st.size)
                held, _ = self._residual_fns([(f, st[late], ly[late])])
                folds.append((*self._residual_fns(others), held))
            result.posterior.model_sd = loco_discrepancy(
                self.space, result.theta, folds, noise=result.posterior.noise, huber_delta=self.huber_delta
            )
        self._set_fit(result, curves)
        return self

    def _residual_fns(
        self, parts: Sequence[tuple[ScheduleFeatures, NDArray[np.int64], FloatArray]]
    ) -> tuple[Callable[[FloatArray], FloatArray], Callable[[FloatArray], FloatArray] | None]:
        """Residuals ``log(y) - log(pred)`` (and their Jacobian) over (features, steps,
        log losses) parts, concatenated."""

        def residuals(theta: FloatArray) -> FloatArray:
            out = []
            for f, st, ly in parts:
                with np.errstate(invalid="ignore", divide="ignore"):
                    out.append(ly - np.log(self._predict_loss(theta, f, st)))
            return np.asarray(np.concatenate(out), dtype=np.float64)

        if not self.has_jacobian:
            return residuals, None

        def jacobian(theta: FloatArray) -> FloatArray:
            rows = []
            for f, st, _ in parts:
                jac = self._predict_loss_jac(theta, f, st)
                rows.append(-jac / self._predict_loss(theta, f, st)[:, None])
            return np.concatenate(rows)

        return residuals, jacobian

    def _set_fit(self, result: FitResult, curves: Sequence[Curve]) -> None:
        self.posterior = result.posterior
        self._record_fitted_on(curves)
        self.fit_info = {**result.info(), "params": self.params}

    # ------------------------------------------------------------------ prediction
    @property
    def is_fitted(self) -> bool:
        """Whether the law has parameters."""
        return self.posterior is not None

    @property
    def params(self) -> dict[str, float]:
        """The fitted parameters by name (natural units)."""
        return self.space.as_dict(self._post().theta)

    def _post(self) -> Posterior:
        if self.posterior is None:
            raise InputError(f"law {self.name!r} is not fitted; call fit() or load a law file first")
        return self.posterior

    def predict(
        self,
        schedule: Schedule,
        steps: ArrayLike | None = None,
        *,
        model_size: float | None = None,
        tokens_per_step: float | None = None,
        observed: Curve | None = None,
    ) -> Prediction:
        """Loss of ``schedule`` at ``steps`` (default its last step), central 90% interval
        for an observed loss (nats); conditioned on the run's prefix ``observed``."""
        post = self._post()
        self.check_sizes(model_size, where=f"predict {self.name}")
        self.check_tokens_per_step(tokens_per_step, where=f"predict {self.name}")
        st = check_steps(steps, schedule, where=f"predict {self.name}")
        all_steps = st if observed is None else np.concatenate([st, observed.steps])
        feats = features_for(schedule, all_steps)
        pred = self._predictive(post, feats, st)
        if observed is not None and observed.steps.size:
            # the law's model discrepancy is kept like noise: a prefix shows the run's
            # offset, not how the law errs in phases the prefix has not reached
            prefix_pred = self._predict_loss(post.theta, feats, observed.steps)
            pred = condition_on_prefix(
                pred, st, observed.steps, observed.losses, prefix_pred,
                noise=float(np.hypot(post.noise, post.model_sd)), level=self.interval_level,
            )
        return pred

    def predict_final(
        self,
        schedules: Sequence[Schedule],
        *,
        model_size: float | None = None,
        tokens_per_step: float | None = None,
    ) -> Prediction:
        """Predicted final loss (last step) of many schedules, one interval computation
        for all of them (nats)."""
        post = self._post()
        self.check_sizes(model_size, where=f"predict {self.name}")
        self.check_tokens_per_step(tokens_per_step, where=f"predict {self.name}")
        if len(schedules) == 0:
            empty = np.zeros(0)
            return Prediction(empty, empty.copy(), empty.copy())
        parts = [(features_for(s, np.array([s.total_steps - 1])), np.array([s.total_steps - 1])) for s in schedules]

        def predict_log(theta: FloatArray) -> FloatArray:
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.log(np.concatenate([self._predict_loss(theta, f, st) for f, st in parts]))

        log_jac = None
        if self.has_jacobian:

            def log_jac(theta: FloatArray) -> FloatArray:
                rows = []
                for f, st in parts:
                    jac = self._predict_loss_jac(theta, f, st)
                    rows.append(jac / self._predict_loss(theta, f, st)[:, None])
                return np.concatenate(rows)

        return predictive(
            post, predict_log, predict_log_jac=log_jac, level=self.interval_level, method=self.interval_method
        )

    def _predictive(self, post: Posterior, feats: ScheduleFeatures, st: NDArray[np.int64]) -> Prediction:
        if st.size == 0:
            empty = np.zeros(0)
            return Prediction(empty, empty.copy(), empty.copy())

        def predict_log(theta: FloatArray) -> FloatArray:
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.asarray(np.log(self._predict_loss(theta, feats, st)), dtype=np.float64)

        log_jac = None
        if self.has_jacobian:

            def log_jac(theta: FloatArray) -> FloatArray:
                jac = self._predict_loss_jac(theta, feats, st)
                return jac / self._predict_loss(theta, feats, st)[:, None]

        return predictive(
            post, predict_log, predict_log_jac=log_jac, level=self.interval_level,
            method=self.interval_method,
        )

    # ------------------------------------------------------------------ law file
    def _state(self) -> dict[str, Any]:
        post = self._post()
        return {"values": self.params, "posterior": post.to_state(), **self._extra_state()}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping):
            raise ValueError("params must be a JSON object")
        self._load_extra_state(state)
        self.posterior = Posterior.from_state(self.space, state["posterior"])
        if "values" in state:
            theta = self.space.from_mapping(state["values"])
            if not np.allclose(theta, self.posterior.theta, rtol=1e-9, atol=0):
                raise ValueError("'values' disagree with 'posterior'")
