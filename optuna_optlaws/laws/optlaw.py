"""The Opt-Law: this project's SDE-derived law of the loss along any LR schedule.

    L(t) = L0(N) + A(N) (S(t) + s_w)^(-alpha)               convergence (river)
         + B(N) sum_j w_j n_j(t)                             noise excess in J modes
         + k_esc m(t)                                        escape / instability
         + k_fast f(t)                                       fast excess
         + k_warm w(t)                                       early instability (warmup)

``S(t)`` is the LR area up to step ``t`` (area units of 1000 steps at the reference LR
``eta_ref``, the largest peak LR of the fitting data). Mode ``j`` relaxes at rate
``kappa_j`` per area unit towards ``(eta/eta_ref)^phi (1 + eps A (S + s_w)^(-alpha))``:
the noise floor is a power ``phi`` of the LR, and it is proportional to the loss above an
entropy floor ``E = L0 - 1/eps`` because the gradient-noise covariance shrinks with the
loss (multiplicative noise). That coupling is what makes a late, short decay after a
long stable phase gain less than an early one (design.md section 4); ``eps = 0`` is the
plain additive-noise recursion. The modes' shares ``w_j ~ kappa_j^beta exp(-kappa_j /
c_cut)`` form a Gamma-like Hessian spectrum. See :mod:`._optlaw_dynamics` for the exact
chunked integrator (cost independent of the number of steps).

Model size. Fitted on one size, the law predicts only that size (InputError otherwise):
its size terms are not identified. Fitted on two or more sizes, ``A``, ``B`` and
``alpha`` are power laws in ``N`` around the geometric-mean size ``n_ref`` (exponents
``g_a, g_b, g_alpha``), and ``L0(N)`` takes one of two forms that fit the training data
equally well but extrapolate differently: ``power``, ``L0 (N/n_ref)^(-g_l0)`` with a free
``eps``; ``entropy``, ``E + delta (N/n_ref)^(-g_l0)`` with the data's entropy floor ``E``
shared by all sizes and ``eps(N) = 1 / (L0(N) - E)`` (the multiplicative noise above).
Both are fitted and predictions mix them with equal weights, their disagreement adding
to the interval; two sizes cannot tell which curvature in ``N`` is right.

Escape term. Time near or past the stability edge leaves an excess ``m(t)`` that relaxes
at rate ``kappa_esc`` towards ``(eta/eta_ref)^4``; with ``k_esc > 0`` the final loss is
U-shaped in the peak LR (more area helps, too high a peak hurts). The term is only
identifiable when the fitting curves use different peak LRs (at least a factor 1.25
apart); otherwise it is off (``k_esc = 0``, not a fitted parameter).

Fast excess. The loss held in the sharpest directions follows the LR within a few steps:
an excess ``k_fast f(t)`` relaxing at rate ``kappa_fast`` (at least 10 per area unit, i.e.
within about a hundred steps at the reference LR; fits put it at the bound of 10^4, at
once) towards ``(eta/eta_ref)^p_fast`` (:func:`~._optlaw_terms.held_power`). It is what
a cooldown removes at once, apart from the modes' slower floor. Without it, fits on the
tiny LM's runs put the modes' weight on slow modes (a high LR costing loss for good) and
left WSD's fast final drop out, overpredicting every WSD run by 0.02-0.08 nats; with it,
the 20 runs of studies/curves/law_check.md, each left out in turn, are predicted within
0.026 nats rms (0.049 without it: ``check_law.py --loco --without-fast``). It is tried
when the escape term is fitted (the data varies the peak LR, which separates ``p_fast``
from the modes' ``phi``) on at least 8 runs (:data:`~._optlaw_terms.FAST_MIN_RUNS`), and
kept only when the runs left out one at a time are predicted better with it than
without it (both are fitted; ``fit_info["fast_choice"]`` holds both errors); a fit
with ``loco=False`` has no left-out errors and keeps it.

Early-instability (warmup) term. Early in training the stability edge is low, so a high
LR while the LR area is still small does damage: an excess ``k_warm w(t)`` that relaxes
at rate ``kappa_warm`` towards ``(eta/eta_ref)^2 exp(-S / s_edge)``
(:func:`~._optlaw_terms.instability_target`). A warmup keeps the LR low while ``S`` is
small, so with ``k_warm > 0`` too short a warmup costs loss. Fitted only when the runs
trained from scratch differ in warmup length (the longest at least twice the shortest
plus one step).

Fitting: Huber on log-loss, its scale 1.345 times the curves' own point noise, through
the shared harness (:func:`~optuna_optlaws.laws._fitting.fit_least_squares`, analytic
Jacobian from :mod:`._optlaw_fit`), several seeded starts, on at most ``fit_points``
points per curve after its warmup and its first 10% of steps (the initial transient);
the fit's chunk grids thin logged schedules to their jumps and kinks. Intervals: the
Laplace posterior plus a leave-one-curve-out model discrepancy (for a single curve: fit
its first three quarters, predict the last)
(:func:`~optuna_optlaws.laws._fitting.loco_discrepancy`) whose variance grows in
proportion to the LR area beyond the largest fitted area. ``predict(...,
observed=prefix)`` conditions on the run's own prefix with
:func:`~optuna_optlaws.laws._fitting.condition_on_prefix`.

Continued runs (``Curve.resume_from`` / ``resume_step``, steps counted from 0 in the new
run) are integrated over their whole history, so they start from the parent's mode state
(:mod:`._optlaw_lineage`). A fit that includes continued runs gives them a data-shift
term, ``D (1 + S_c / s_d)^(-gamma_d)`` in the LR area ``S_c`` since the resume (the new
corpus's excess at the resume), plus a constant offset ``d0`` of their floor when the
parent's own losses are fitted too; runs without ``resume_from`` never get it.

Transfer prior (``OptLaw(prior=law, prior_sd=0.2)``, ``optlaws fit --prior``): a law
fitted on the same model elsewhere (a pretraining sweep on another corpus) holds every
parameter but the loss floors (:data:`TRANSFER_FREE`) near its value, a robust Gaussian
of ``prior_sd`` in internal coordinates (:class:`~optuna_optlaws.laws._fitting.ParamPrior`),
and lends the fit its terms and reference LR. On the tiny LM's fine-tuning runs, fitted
on 3 of them, it lifts the Top-2 hit rate from 0.458 to 0.917
(``studies/finetune/law_results.md``); on continued pre-training it cuts the mean
absolute error of the final loss from 0.029 to 0.011 nats (``studies/continual``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from optuna_optlaws._errors import InputError
from optuna_optlaws.curves import Curve
from optuna_optlaws.laws import _optlaw_dynamics as dyn
from optuna_optlaws.laws._base import Law, Prediction, z_quantile
from optuna_optlaws.laws._features import check_steps, observations
from optuna_optlaws.laws._fitting import (
    ParamPrior,
    Posterior,
    condition_on_prefix,
    fit_least_squares,
    loco_discrepancy,
    predictive,
)
from optuna_optlaws.laws._optlaw_fit import HUBER_EFFICIENCY, fit_points, loco_folds, log_point_noise
from optuna_optlaws.laws._optlaw_lineage import (
    continued,
    fit_problem,
    lineage_from_state,
    lineage_state,
    offsets_from_state,
    resolve_lineage_offsets,
    resume_area,
    shift_terms,
)
from optuna_optlaws.laws._optlaw_predict import fd_thetas, log_jac, loss_at_targets, loss_final
from optuna_optlaws.laws._optlaw_terms import Terms, default_start, terms_for, warm_start
from optuna_optlaws.schedules import Schedule

FloatArray = NDArray[np.float64]
_L = TypeVar("_L", bound="OptLaw")

_STATE_VERSION = 3
"""Version of the parameters this code writes (3 added the fast excess)."""

_READABLE_VERSIONS = (2, 3)
"""Versions it reads: a version-2 law has no fast excess (``Terms.fast`` is ``False``)."""

_PREFIX_WINDOW = 0.2
"""Conditioning on a prefix estimates the run's offset from its last 20% of steps."""
_PREFIX_MIN_POINTS = 3

_FIT_CHUNKS = 128
"""Uniform chunks of a fitted curve's grid (besides its fitted steps and kinks)."""
_FIT_KNOTS = 0
"""The fit thins every logged (knot) schedule to its jumps and kinks: the fit's cost
grows with the chunk count of the longest curve."""


PRIOR_SD = 0.2
"""Default standard deviation of a transfer prior (internal coordinates: about 20% on a
``log`` parameter)."""

TRANSFER_FREE = ("L0", "E", "d0")
"""Parameters a transfer prior leaves free: the corpus's loss floor (``L0``; ``E`` in the
entropy size form) and a continued run's floor offset on its new corpus (``d0``)."""


def transfer_prior(law: Law, sd: float = PRIOR_SD) -> tuple[ParamPrior, Terms]:
    """A :class:`ParamPrior` from a fitted Opt-Law (its parameters, of its first size form,
    except :data:`TRANSFER_FREE`, each with standard deviation ``sd``) and the law's terms.
    InputError when ``law`` is not a fitted Opt-Law or ``sd`` is not a positive number."""
    if not isinstance(law, OptLaw) or not law.is_fitted:
        raise InputError(f"a transfer prior must be a fitted optlaw law, got {law.name} "
                         f"({'fitted' if law.is_fitted else 'not fitted'})")
    if not (isinstance(sd, (int, float)) and math.isfinite(sd) and sd > 0):
        raise InputError(f"prior sd must be a positive number of internal units, got {sd!r}")
    assert law._terms is not None
    return ParamPrior({n: v for n, v in law.params.items() if n not in TRANSFER_FREE}, float(sd)), law._terms


class OptLaw(Law):
    """The Opt-Law (default law): convergence + multiplicative-noise modes + escape term,
    with model-size terms; see the module docstring."""

    name = "optlaw"
    uses_model_size = True

    huber_delta: float | None = None
    """Huber scale on log-loss residuals (nats); ``None``: ``HUBER_EFFICIENCY`` times the
    fitted points' own noise (:func:`~._optlaw_fit.log_point_noise`), at least ``min_huber``."""
    min_huber: float = 5e-5
    """Floor of the automatic Huber scale (nats), for noiseless (synthetic) curves."""
    total_fit_points: int = 900
    """Budget of fitted points over all curves (each curve keeps at least 24)."""
    loco_folds: int = 6
    """Most leave-one-curve-out refits for the model discrepancy (curves spread evenly)."""

    def __init__(
        self, *, n_random: int = 3, fit_points: int = 96, max_nfev: int = 200, loco: bool = True,
        fast_excess: bool = True, prior: Law | None = None, prior_sd: float = PRIOR_SD,
    ) -> None:
        """``n_random``: random starts besides the default one; ``fit_points``: at most this
        many points per curve are fitted (evenly spread, the last one always);
        ``loco``: estimate the model discrepancy by leave-one-curve-out refits;
        ``fast_excess``: ``False`` never tries the fast excess (to measure what it adds);
        ``prior``: an Opt-Law fitted elsewhere (the same model and optimiser on another
        corpus: a pretraining sweep before fine-tuning) whose parameters, except the
        corpus's levels (:data:`TRANSFER_FREE`), the fit is drawn towards, each with
        standard deviation ``prior_sd`` (internal coordinates, :class:`ParamPrior`): a few
        runs then inherit how the model responds to the LR instead of guessing it."""
        super().__init__()
        self.prior: ParamPrior | None = None
        self._prior_terms: Terms | None = None
        """The prior law's terms: a fit with the prior has at least its terms and its
        reference LR, so that the parameters drawn towards its values mean the same."""
        if prior is not None:
            self.prior, self._prior_terms = transfer_prior(prior, prior_sd)
        self.fast_excess = bool(fast_excess)
        self.n_random = int(n_random)
        self.fit_points = int(fit_points)
        self.max_nfev = int(max_nfev)
        self.loco = bool(loco)
        self._terms: Terms | None = None
        self._members: list[tuple[Terms, Posterior]] = []
        """The fitted size forms (one, or ``power`` and ``entropy`` when fitted on
        several sizes): predictions mix them with equal weights."""
        self.lineage: dict[str, Schedule] = {}
        """Whole-history schedule of every run fitted on (a continued run's parent part
        included), by run id: :meth:`predict_curve` continues from these. Saved in the
        law file (absent from files written before, which load with none);
        :meth:`add_lineage` registers more."""
        self.lineage_offsets: dict[str, int] = {}
        """Whole-history step of a continued run's own step 0, by run id (absent: 0)."""
        self.posterior: Posterior | None = None
        """Laplace posterior of the last fit (None before fitting)."""

    # ------------------------------------------------------------------ fitting
    def fit(self: _L, curves: Sequence[Curve], *, seed: int = 0) -> _L:
        """Fit on the finite losses of ``curves`` after each curve's warmup; returns ``self``."""
        where = f"fit {self.name}"
        given = list(curves)
        parents = frozenset(c.resume_from for c in given if c.resume_from is not None)
        curves, offsets = resolve_lineage_offsets(given, where)
        self.lineage = {c.run_id: c.schedule for c in curves}
        self.lineage_offsets = {rid: off for rid, off in offsets.items() if off}
        obs = observations(curves, where=where)
        base = terms_for(curves, where, offsets)
        if self._prior_terms is not None:
            pt = self._prior_terms
            base = replace(base, eta_ref=pt.eta_ref, escape=base.escape or pt.escape,
                           warmup=base.warmup or pt.warmup, fast=base.fast or pt.fast)
        if not self.fast_excess:
            base = replace(base, fast=False)
        prepared: list[tuple[Curve, dyn.ChunkGrid, FloatArray]] = []
        per_curve = max(24, min(self.fit_points, self.total_fit_points // max(len(curves), 1)))
        for c, sl in zip(obs.curves, obs.slices(), strict=True):
            steps, losses = obs.steps[sl], obs.losses[sl]
            steps, losses = fit_points(c, steps, losses, per_curve)
            if steps.size == 0:
                continue
            grid = dyn.chunk_grid(
                c.schedule, steps, eta_ref=base.eta_ref, max_chunks=_FIT_CHUNKS, max_knots=_FIT_KNOTS
            )
            prepared.append((c, grid, np.log(losses)))
        if not prepared:
            ids = ", ".join(c.run_id for c in curves[:5])
            raise InputError(f"{where}: no finite loss after the warmup in runs {ids}")
        log_y = np.concatenate([p[2] for p in prepared])
        groups = np.concatenate([np.full(p[2].size, i, dtype=np.int64) for i, p in enumerate(prepared)])
        area_max = max(float(grid.s_target[-1]) for _, grid, _ in prepared)
        base = shift_terms(base, [c for c, _, _ in prepared], self.lineage_offsets)
        forms = ("power", "entropy") if len(base.sizes) >= 2 else ("single",)
        self._members = []
        infos = []
        for form in forms:
            terms = replace(base, size_form=form, area_max=area_max)
            if not self._members:
                post, info = self._fit_form(terms, prepared, log_y, groups, seed, where, parents=parents)
                if terms.fast and self.loco and self.prior is None:
                    # the fast excess adds three parameters: keep it only when it predicts
                    # left-out runs better (on a few runs it can fit them and extrapolate worse)
                    slow = replace(terms, fast=False)
                    post_s, info_s = self._fit_form(slow, prepared, log_y, groups, seed, where, parents=parents)
                    # left-out error (log-loss rms) of each: discrepancy and point noise together
                    err, err_s = math.hypot(post.model_sd, post.noise), math.hypot(post_s.model_sd, post_s.noise)
                    info["fast_choice"] = {"with": err, "without": err_s}
                    if err_s < err:
                        terms, post, info = slow, post_s, {**info_s, "fast_choice": info["fast_choice"]}
                    base = replace(base, fast=terms.fast)
            else:
                # the second size form starts from the first one's optimum and shares its
                # schedule discrepancy (both have the same schedule dynamics)
                first = self._members[0][1]
                post, info = self._fit_form(
                    terms, prepared, log_y, groups, seed, where, warm=first.space.as_dict(first.theta)
                )
                post.model_sd = first.model_sd
            self._members.append((terms, post))
            infos.append({**info, "size_form": form, "params": post.space.as_dict(post.theta)})
        self._terms, self.posterior = self._members[0]
        self._record_fitted_on(given)
        self.fit_info = {**infos[0], "terms": base.to_state(), "members": infos}
        if self.prior is not None:
            self.fit_info["prior"] = {"sd": self.prior.sd, "params": dict(self.prior.centre)}
        return self

    def _fit_form(
        self,
        terms: Terms,
        prepared: list[tuple[Curve, dyn.ChunkGrid, FloatArray]],
        log_y: FloatArray,
        groups: NDArray[np.int64],
        seed: int,
        where: str,
        warm: Mapping[str, float] | None = None,
        parents: frozenset[str] = frozenset(),
    ) -> tuple[Posterior, dict[str, Any]]:
        """Fit one size form on prepared curves; its posterior and diagnostics. ``warm``:
        parameters of the ``power`` form to start the ``entropy`` form from (then one
        random start and no LOCO refits: the caller shares the first form's discrepancy).
        ``parents``: ids of the runs that fitted runs continue."""
        space = terms.space()
        problem = fit_problem(
            terms, [c for c, _, _ in prepared], [g for _, g, _ in prepared], log_y, self.lineage_offsets
        )
        starts = [default_start(terms, float(np.exp(log_y).min()))]
        huber = self.huber_scale(log_y, groups)
        if warm is not None:
            starts.insert(0, warm_start(terms, warm))
        scale = huber / HUBER_EFFICIENCY  # the fitted points' noise
        result = fit_least_squares(
            space, problem.residuals, jacobian=problem.jacobian, starts=starts,
            n_random=self.n_random if warm is None else 1, seed=seed,
            huber_delta=huber, groups=groups, max_nfev=self.max_nfev, agree=2, label=where,
            prior=self.prior, prior_scale=scale,
        )
        if self.loco and warm is None:
            res_fn: Any = problem.residuals
            jac_fn: Any = problem.jacobian
            # a run that fitted runs continue is their context, not a run like those the
            # law will be asked about: every fold keeps it (group -1)
            kept = [i for i, (c, _, _) in enumerate(prepared) if c.run_id in parents]
            fold_groups = np.where(np.isin(groups, kept), -1, groups)
            bound = None if self.prior is None else self.prior.bind(space, scale)
            if bound is not None:
                res_fn, jac_fn = bound.wrap(space, res_fn, jac_fn)
                fold_groups = bound.folds_groups(fold_groups)
            folds = loco_folds(res_fn, jac_fn, fold_groups, self.loco_folds)
            result.posterior.model_sd = loco_discrepancy(
                space, result.theta, folds,
                noise=result.posterior.noise, huber_delta=huber,
            )
        return result.posterior, {**result.info(), "huber_delta": huber}

    def huber_scale(self, log_y: FloatArray, groups: NDArray[np.int64]) -> float:
        """The Huber scale (nats of log-loss) for fitted points ``log_y`` of curves ``groups``."""
        if self.huber_delta is not None:
            return float(self.huber_delta)
        return max(self.min_huber, HUBER_EFFICIENCY * log_point_noise(log_y, groups))

    # ------------------------------------------------------------------ prediction
    @property
    def is_fitted(self) -> bool:
        """Whether the law has parameters."""
        return self.posterior is not None

    @property
    def params(self) -> dict[str, float]:
        """Fitted parameters by name (natural units; areas in units of 1000 steps at ``eta_ref``)."""
        post = self._post()
        return post.space.as_dict(post.theta)

    def _post(self) -> Posterior:
        if self.posterior is None or self._terms is None:
            raise InputError(f"law {self.name!r} is not fitted; call fit() or load a law file first")
        return self.posterior

    def check_sizes(self, model_size: float | None, where: str = "") -> None:
        """InputError unless the law can predict ``model_size``: any size when fitted on
        two or more sizes (then a size is required), else only the fitted one."""
        place = f"{where}: " if where else ""
        terms = self._terms
        if terms is not None and terms.multi_size:
            if model_size is None:
                raise InputError(
                    f"{place}law {self.name!r} was fitted on model sizes "
                    f"{', '.join(f'{s:g}' for s in terms.sizes)}: give the model_size to predict"
                )
            if not (math.isfinite(model_size) and model_size > 0):
                raise InputError(f"{place}model_size={model_size!r} must be a finite number > 0")
            return
        if model_size is None or terms is None or not terms.sizes:
            return
        if not math.isclose(model_size, terms.sizes[0], rel_tol=1e-6):
            raise InputError(
                f"{place}law {self.name!r} was fitted on one model size ({terms.sizes[0]:g}), so its "
                f"model-size term is not identified: cannot extrapolate to model_size={model_size:g}; "
                "fit it on curves of two or more sizes"
            )

    def _interval(self, post: Posterior, mean: FloatArray, log_jac: FloatArray) -> Prediction:
        """Predictive interval from the mean loss and ``d log L / d theta`` (harness delta method)."""
        return predictive(
            post,
            lambda theta: np.asarray(np.log(mean), dtype=np.float64),
            predict_log_jac=lambda theta: log_jac,
            level=self.interval_level,
        )

    def _widen(self, pred: Prediction, area: FloatArray, terms: Terms, post: Posterior) -> Prediction:
        """Add the model discrepancy's growth beyond the fitted LR area: variance
        ``model_sd^2 * (area / area_max - 1)`` for targets past the largest fitted area
        (the law's error on an unseen schedule grows with how far it extrapolates)."""
        if post.model_sd <= 0 or terms.area_max <= 0:
            return pred
        extra = post.model_sd**2 * np.maximum(area / terms.area_max - 1.0, 0.0)
        if not np.any(extra > 0):
            return pred
        zq = z_quantile(self.interval_level)
        m = np.log(pred.mean)
        sd0 = (np.log(pred.hi) - np.log(pred.lo)) / (2.0 * zq)
        half = zq * np.sqrt(sd0**2 + extra)
        return Prediction(pred.mean, np.exp(m - half), np.exp(m + half))

    def _mix(self, preds: Sequence[Prediction]) -> Prediction:
        """Equal-weight mixture of the size forms' predictions (moments in log-loss): the
        forms' disagreement, which grows as ``N`` leaves the fitted sizes, widens the interval."""
        if len(preds) == 1:
            return preds[0]
        zq = z_quantile(self.interval_level)
        m = np.stack([np.log(p.mean) for p in preds])
        sd = np.stack([(np.log(p.hi) - np.log(p.lo)) / (2.0 * zq) for p in preds])
        mean = m.mean(axis=0)
        half = zq * np.sqrt(np.mean(sd**2, axis=0) + np.mean((m - mean) ** 2, axis=0))
        return Prediction(np.exp(mean), np.exp(mean - half), np.exp(mean + half))

    def _check_predict(self, model_size: float | None, tokens_per_step: float | None) -> Terms:
        self._post()
        where = f"predict {self.name}"
        self.check_sizes(model_size, where=where)
        self.check_tokens_per_step(tokens_per_step, where=where)
        assert self._terms is not None
        return self._terms

    def predict(
        self,
        schedule: Schedule,
        steps: ArrayLike | None = None,
        *,
        model_size: float | None = None,
        tokens_per_step: float | None = None,
        observed: Curve | None = None,
        resume_from: str | None = None,
        resume_step: int = 0,
    ) -> Prediction:
        """Loss (nats) of ``schedule`` at ``steps`` (default its last step) with a central
        90% interval; conditioned on the run's own prefix ``observed`` when given.

        ``resume_from``: the run continues that known run (a fitted run or one registered
        with :meth:`add_lineage`) from its state after its step ``resume_step``;
        ``schedule``, ``steps`` and ``observed`` count the run's own steps from 0."""
        if resume_from is None:
            return self._predict(schedule, steps, model_size=model_size, tokens_per_step=tokens_per_step,
                                 observed=observed)
        return self._predict_continued(schedule, steps, resume_from, resume_step, "the run", model_size=model_size,
                                       tokens_per_step=tokens_per_step, observed=observed)

    def _predict_continued(
        self, schedule: Schedule, steps: ArrayLike | None, parent_id: str, resume_step: int, run_id: str, *,
        model_size: float | None, tokens_per_step: float | None, observed: Curve | None,
    ) -> Prediction:
        """:meth:`predict` of run ``run_id`` continued from ``parent_id`` (for messages)."""
        sched, offset = self._continued(schedule, parent_id, resume_step, run_id)
        st = check_steps(steps, schedule, where=f"predict {self.name}")
        shifted = None
        if observed is not None:
            shifted = replace(observed, schedule=sched, steps=observed.steps + offset, resume_from=None)
        return self._predict(sched, st + offset, model_size=model_size, tokens_per_step=tokens_per_step,
                             observed=shifted, resume_at=offset)

    def _predict(
        self,
        schedule: Schedule,
        steps: ArrayLike | None = None,
        *,
        model_size: float | None = None,
        tokens_per_step: float | None = None,
        observed: Curve | None = None,
        resume_at: int = 0,
    ) -> Prediction:
        """:meth:`predict`; ``resume_at``: the whole-history step of a continued run's own
        step 0 on ``schedule`` (its data-shift term starts there), 0 for a fresh run."""
        terms = self._check_predict(model_size, tokens_per_step)
        st = check_steps(steps, schedule, where=f"predict {self.name}")
        if st.size == 0:
            empty = np.zeros(0)
            return Prediction(empty, empty.copy(), empty.copy())
        p_steps = np.zeros(0, dtype=np.int64)
        p_losses = np.zeros(0)
        if observed is not None and observed.steps.size:
            ok = np.isfinite(observed.losses) & (observed.losses > 0)
            p_steps, p_losses = observed.steps[ok], observed.losses[ok]
            if p_steps.size:
                # conditioning reads only the recent window of the prefix: predict just there
                recent = p_steps >= p_steps.max() * (1.0 - _PREFIX_WINDOW)
                recent[-_PREFIX_MIN_POINTS:] = True
                p_steps, p_losses = p_steps[recent], p_losses[recent]
        grid = dyn.chunk_grid(schedule, np.concatenate([st, p_steps]), eta_ref=terms.eta_ref)
        s_resume = resume_area(schedule, resume_at, terms.eta_ref) if any(t.shift for t, _ in self._members) else None
        preds, prefix_log = [], []
        for m_terms, post in self._members:
            thetas, h = fd_thetas(post)
            loss = loss_at_targets(m_terms, post.space, thetas, grid, model_size, s_resume)
            pred_m = self._interval(post, loss[: st.size, 0], log_jac(loss[: st.size], h, post))
            preds.append(self._widen(pred_m, grid.s_target[: st.size], m_terms, post))
            prefix_log.append(np.log(loss[st.size :, 0]))
        pred = self._mix(preds)
        if p_steps.size:
            pred = condition_on_prefix(
                pred, st, p_steps, p_losses, np.exp(np.mean(prefix_log, axis=0)),
                noise=self._post().noise, level=self.interval_level, window=_PREFIX_WINDOW,
                min_points=_PREFIX_MIN_POINTS,
            )
        return pred

    def add_lineage(self, curves: Sequence[Curve]) -> None:
        """Register runs (and their own parents, given in the same list or already known)
        that later continued runs may resume from."""
        known = [Curve(rid, sched) for rid, sched in self.lineage.items() if rid not in {c.run_id for c in curves}]
        given = {c.run_id for c in curves}
        old = {rid: off for rid, off in self.lineage_offsets.items() if rid not in given}
        resolved, offsets = resolve_lineage_offsets([*known, *curves], f"{self.name} lineage", old)
        for c in resolved:
            self.lineage[c.run_id] = c.schedule
        self.lineage_offsets = {rid: off for rid, off in offsets.items() if off}

    def predict_curve(self, curve: Curve, *, observed: Curve | None = None) -> Prediction:
        """Predicted loss at every observed step of ``curve``. A continued run
        (``resume_from``) starts from its parent's state at ``resume_step``: its parent
        must be a fitted run or registered with :meth:`add_lineage`."""
        if curve.resume_from is None:
            return super().predict_curve(curve, observed=observed)
        return self._predict_continued(
            curve.schedule, curve.steps, curve.resume_from, int(curve.resume_step or 0), curve.run_id,
            model_size=curve.model_size, tokens_per_step=curve.tokens_per_step, observed=observed,
        )

    def _continued(self, schedule: Schedule, parent_id: str, resume_step: int, run_id: str) -> tuple[Schedule, int]:
        """The whole-history schedule of a run that follows ``schedule`` (its own steps
        from 0) after step ``resume_step`` of the known run ``parent_id``, and the
        whole-history step of its own step 0."""
        parent = self.lineage.get(parent_id)
        if parent is None:
            raise InputError(
                f"predict {self.name}: run {run_id!r} resumes from {parent_id!r}, which the law "
                "does not know; fit on it or register it with add_lineage()"
            )
        return continued(
            parent, resume_step, schedule, parent_offset=self.lineage_offsets.get(parent_id, 0),
            where=f"predict {self.name}", run_id=run_id, parent_id=parent_id,
        )

    def predict_final(
        self,
        schedules: Sequence[Schedule],
        *,
        model_size: float | None = None,
        tokens_per_step: float | None = None,
        resume_from: str | None = None,
        resume_step: int = 0,
    ) -> Prediction:
        """Predicted final loss of many schedules at once (vectorised over schedules).

        ``resume_from``: every schedule is a run continued from that known run (a fitted
        run or one registered with :meth:`add_lineage`) after its step ``resume_step``."""
        terms = self._check_predict(model_size, tokens_per_step)
        if len(schedules) == 0:
            empty = np.zeros(0)
            return Prediction(empty, empty.copy(), empty.copy())
        s_resume = None
        if resume_from is not None:
            whole = [self._continued(s, resume_from, resume_step, f"schedule {i}") for i, s in enumerate(schedules)]
            schedules = [w for w, _ in whole]
            s_resume = resume_area(schedules[0], whole[0][1], terms.eta_ref)
        grids = [dyn.chunk_grid(s, np.array([s.total_steps - 1]), eta_ref=terms.eta_ref) for s in schedules]
        batch = dyn.stack_grids(grids)
        kern = dyn.final_kernel(batch, dyn.KAPPA)
        preds = []
        for m_terms, post in self._members:
            thetas, h = fd_thetas(post)
            loss = loss_final(m_terms, post.space, thetas, batch, kern, model_size, s_resume).T  # (C, p+1)
            pred_m = self._interval(post, loss[:, 0], log_jac(loss, h, post))
            preds.append(self._widen(pred_m, batch.s_final, m_terms, post))
        return self._mix(preds)

    # ------------------------------------------------------------------ law file
    def _state(self) -> dict[str, Any]:
        self._post()
        return {
            "version": _STATE_VERSION,
            "members": [
                {"terms": t.to_state(), "values": p.space.as_dict(p.theta), "posterior": p.to_state()}
                for t, p in self._members
            ],
            "lineage": lineage_state(self.lineage),
            "lineage_offsets": dict(self.lineage_offsets),
        }

    def _load_state(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping):
            raise ValueError("params must be a JSON object")
        if int(state.get("version", 0)) not in _READABLE_VERSIONS:
            raise ValueError(
                f"optlaw parameters version {state.get('version')!r}, expected one of {_READABLE_VERSIONS}"
            )
        members = []
        for m in state["members"]:
            terms = Terms.from_state(m["terms"])
            space = terms.space()
            post = Posterior.from_state(space, m["posterior"])
            theta = space.from_mapping(m["values"])
            if not np.allclose(theta, post.theta, rtol=1e-9, atol=0):
                raise ValueError("'values' disagree with 'posterior'")
            members.append((terms, post))
        if not members:
            raise ValueError("no fitted members")
        self._members = members
        self._terms, self.posterior = members[0]
        self.lineage = lineage_from_state(state.get("lineage"))
        self.lineage_offsets = offsets_from_state(state.get("lineage_offsets"))

