"""The shared fitting harness: schedule features, multi-start robust least squares, the
Laplace posterior, predictive intervals and prefix conditioning."""

from __future__ import annotations

import numpy as np
import pytest

from optuna_optlaws._errors import InputError
from optuna_optlaws.curves import Curve
from optuna_optlaws.laws._base import Prediction
from optuna_optlaws.laws._features import check_steps, observations, schedule_features
from optuna_optlaws.laws._fitting import (
    FitResult,
    Param,
    ParamPrior,
    ParamSpace,
    Posterior,
    condition_on_prefix,
    fit_least_squares,
    on_bounds,
    predictive,
)
from optuna_optlaws.schedules import Schedule

# ---------------------------------------------------------------------- features


def test_features_area_and_changes() -> None:
    s = Schedule.wsd(1e-3, 1000, warmup_steps=100, final_lr=1e-4, cooldown_fraction=0.2)
    f = schedule_features(s)
    eta = s.lrs()
    np.testing.assert_allclose(f.eta, eta)
    np.testing.assert_allclose(f.s1, np.cumsum(eta))
    assert f.warmup_end == 100
    assert f.peak_lr == pytest.approx(1e-3)
    assert f.warmup_area == pytest.approx(eta[:100].sum())
    # the LR changes every warmup step and every cooldown step, nowhere on the plateau
    assert set(f.change_steps.tolist()) == set(range(1, 101)) | set(range(801, 1000))
    k, d = f.lr_drops()
    assert k.min() == 801 and np.all(d > 0)
    np.testing.assert_allclose(f.area_between([0, 500, 900], [999, 600, 800]),
                               [eta.sum(), eta[500:601].sum(), 0.0])
    assert schedule_features(s) is f  # cached


def test_features_extend_past_horizon_at_last_lr() -> None:
    s = Schedule.linear(1e-3, 100, final_lr=1e-4)
    f = schedule_features(s, 150)
    assert f.n == 150
    np.testing.assert_allclose(f.eta[100:], s.lr_at([100])[0])


def test_check_steps() -> None:
    s = Schedule.constant(1e-3, 50)
    assert check_steps(None, s).tolist() == [49]
    assert check_steps([3, 4.0], s).tolist() == [3, 4]
    for bad in ([-1], [1.5], [np.nan]):
        with pytest.raises(InputError, match="steps"):
            check_steps(bad, s, where="here")


def test_observations_drop_diverged_points() -> None:
    s = Schedule.constant(1e-3, 10)
    a = Curve("a", s, np.arange(5), np.array([3.0, np.nan, 2.5, np.inf, 2.0]))
    b = Curve("b", s, np.arange(3), np.array([4.0, 3.0, -np.inf]))
    obs = observations([a, b])
    assert obs.size == 5
    assert obs.steps.tolist() == [0, 2, 4, 0, 1]
    assert obs.curve_index.tolist() == [0, 0, 0, 1, 1]
    assert [o.stop - o.start for o in obs.slices()] == [3, 2]
    with pytest.raises(InputError, match="no finite loss"):
        observations([Curve("c", s, np.arange(2), np.array([np.nan, np.inf]))])
    with pytest.raises(InputError, match="no curves"):
        observations([])


# ---------------------------------------------------------------------- parameters


def test_param_space_round_trip_and_bounds() -> None:
    space = ParamSpace([Param("a", 0.0, 10.0), Param("b", 1e-3, 1e3, log=True)])
    theta = np.array([2.5, 0.7])
    z = space.to_internal(theta)
    assert z[1] == pytest.approx(np.log(0.7))
    np.testing.assert_allclose(space.to_natural(z), theta, rtol=1e-15)
    lo, hi = space.bounds_internal()
    np.testing.assert_allclose(lo, [0.0, np.log(1e-3)])
    assert np.all(space.clip_internal(np.array([-5.0, 100.0])) <= hi)
    with pytest.raises(ValueError, match="init range"):
        Param("c").init_range()


# ---------------------------------------------------------------------- fitting

_EXP_SPACE = ParamSpace([
    Param("c", -10.0, 10.0, init=(-1.0, 1.0)),
    Param("a", 1e-3, 100.0, log=True, init=(0.1, 10.0)),
    Param("k", 1e-4, 10.0, log=True, init=(0.01, 1.0)),
])
_X = np.linspace(0.0, 20.0, 80)


def _exp_model(theta: np.ndarray) -> np.ndarray:
    c, a, k = theta
    return np.asarray(c + a * np.exp(-k * _X))


def test_fit_recovers_parameters_deterministically() -> None:
    rng = np.random.default_rng(3)
    true = np.array([1.0, 3.0, 0.25])
    y = _exp_model(true) + rng.normal(0, 0.01, _X.size)
    y[[10, 40]] += 1.0  # outliers: the Huber loss must shrug them off

    def res(th: np.ndarray) -> np.ndarray:
        return y - _exp_model(th)

    fits = [fit_least_squares(_EXP_SPACE, res, n_random=4, seed=7, huber_delta=0.02) for _ in range(2)]
    np.testing.assert_allclose(fits[0].theta, true, rtol=0.03)
    np.testing.assert_array_equal(fits[0].theta, fits[1].theta)
    assert fits[0].starts == 4
    # the posterior's standard deviations are of the right order (true errors ~ few sd)
    sd = fits[0].posterior.std_natural()
    assert np.all(np.abs(fits[0].theta - true) < 5 * sd + 1e-9)
    assert fits[0].info()["n_obs"] == _X.size


def test_fit_reports_parameters_pressed_against_a_bound() -> None:
    """An optimum beyond a bound is reported (side and bound value, natural units); one
    inside the bounds is not."""
    rng = np.random.default_rng(5)
    noise = rng.normal(0, 0.01, _X.size)

    def fit_to(true: np.ndarray) -> dict[str, dict[str, object]]:
        y = _exp_model(true) + noise

        def res(th: np.ndarray) -> np.ndarray:
            return y - _exp_model(th)

        return fit_least_squares(_EXP_SPACE, res, n_random=3, seed=1, huber_delta=0.05).info()["at_bounds"]

    assert fit_to(np.array([1.0, 3.0, 0.25])) == {}
    # an amplitude of 300 is past a's upper bound (100): the fit stops on it
    assert fit_to(np.array([1.0, 300.0, 0.25])) == {"a": {"side": "upper", "bound": 100.0}}


def test_on_bounds_within_a_fraction_of_the_range() -> None:
    space = ParamSpace([Param("a", 0.0, 10.0), Param("b", 1e-3, 1e3, log=True), Param("c", -2.0, 2.0)])
    z = space.to_internal(np.array([9.95, 1.0, -1.9999]))
    assert on_bounds(space, z) == {
        "a": {"side": "upper", "bound": 10.0},
        "c": {"side": "lower", "bound": -2.0},
    }
    # b at 1.001e-3: within 1% of its log range of its lower bound; 0.5 is not near either
    assert on_bounds(space, space.to_internal(np.array([5.0, 1.001e-3, 0.5]))) == {
        "b": {"side": "lower", "bound": 1e-3}
    }


def test_fit_with_analytic_jacobian_matches_finite_differences() -> None:
    rng = np.random.default_rng(0)
    true = np.array([0.5, 2.0, 0.4])
    y = _exp_model(true) + rng.normal(0, 0.005, _X.size)

    def res(th: np.ndarray) -> np.ndarray:
        return y - _exp_model(th)

    def jac(th: np.ndarray) -> np.ndarray:
        _, a, k = th
        e = np.exp(-k * _X)
        return -np.stack([np.ones_like(_X), e, -a * _X * e], axis=1)

    fd = fit_least_squares(_EXP_SPACE, res, starts=[[0.0, 1.0, 0.1]], n_random=0)
    an = fit_least_squares(_EXP_SPACE, res, jacobian=jac, starts=[[0.0, 1.0, 0.1]], n_random=0)
    np.testing.assert_allclose(an.theta, fd.theta, rtol=1e-5)
    np.testing.assert_allclose(an.posterior.cov, fd.posterior.cov, rtol=1e-3)


def test_fit_raises_when_no_start_is_finite() -> None:
    def res(th: np.ndarray) -> np.ndarray:
        return np.full(5, np.nan)

    with pytest.raises(InputError, match="no starting point"):
        fit_least_squares(_EXP_SPACE, res, n_random=2)


_LINE_SPACE = ParamSpace((Param("a", -10.0, 10.0, init=(-1.0, 1.0)), Param("b", 1e-3, 1e3, log=True, init=(0.1, 10.0))))
"""``y = a + b x`` with the slope ``b`` optimised as its log."""


def _line_fit(x: np.ndarray, noise: float, prior: ParamPrior | None, *, jac: bool = False) -> FitResult:
    y = 1.0 + 2.0 * x + noise * np.random.default_rng(0).standard_normal(x.size)

    def res(th: np.ndarray) -> np.ndarray:
        return y - (th[0] + th[1] * x)

    def jacobian(th: np.ndarray) -> np.ndarray:
        return -np.stack([np.ones_like(x), x], axis=1)

    return fit_least_squares(
        _LINE_SPACE, res, jacobian=jacobian if jac else None, starts=[(0.0, 1.0)], n_random=2,
        huber_delta=1.345 * noise, prior=prior, prior_scale=noise,
    )


@pytest.mark.parametrize("jac", [False, True])
def test_a_prior_pins_a_parameter_the_data_leave_open(jac: bool) -> None:
    x = np.array([0.0, 0.01, 0.02, 0.03])  # too short a range to see the slope through the noise
    free = _line_fit(x, 0.05, None, jac=jac)
    assert np.sqrt(free.posterior.cov[1, 1]) > 0.3  # log-slope unknown to well over 30%
    pinned = _line_fit(x, 0.05, ParamPrior({"b": 2.0}, 0.05), jac=jac)
    assert pinned.theta[1] == pytest.approx(2.0, rel=0.1)
    assert np.sqrt(pinned.posterior.cov[1, 1]) < 0.05  # the prior's precision is in the posterior
    # the residual spread is the data's alone, not diluted by the prior's residuals
    assert pinned.n_obs == x.size
    assert pinned.posterior.noise == pytest.approx(free.posterior.noise, rel=0.5)


def test_a_prior_the_data_contradict_gives_way() -> None:
    x = np.linspace(0.0, 1.0, 50)
    fit = _line_fit(x, 0.01, ParamPrior({"b": 20.0}, 0.1))  # ten times the true slope
    assert fit.theta[1] == pytest.approx(2.0, rel=0.02)


def test_a_prior_on_no_fitted_parameter_changes_nothing() -> None:
    x = np.linspace(0.0, 1.0, 20)
    np.testing.assert_array_equal(_line_fit(x, 0.01, ParamPrior({"c": 5.0}, 0.1)).theta, _line_fit(x, 0.01, None).theta)
    with pytest.raises(ValueError, match="prior sd"):
        ParamPrior({"b": 1.0}, 0.0)


def test_laplace_interval_of_the_mean_is_calibrated() -> None:
    # straight line y = c + b x: over repeated noisy data sets, the 90% interval of the
    # law's mean (noise=False) must cover the true mean about 90% of the time
    space = ParamSpace([Param("c", -10, 10, init=(-5, 5)), Param("b", -10, 10, init=(-5, 5))])
    x = np.linspace(0, 1, 30)
    x_new = np.array([0.5, 1.5])
    rng = np.random.default_rng(11)
    hits = np.zeros(2)
    reps = 150
    for _ in range(reps):
        y = 1.0 + 2.0 * x + rng.normal(0, 0.1, x.size)
        fit = fit_least_squares(space, lambda th, y=y: y - th[0] - th[1] * x, starts=[[0, 0]], n_random=0,
                                huber_delta=10.0)
        p = predictive(fit.posterior, lambda th: th[0] + th[1] * x_new, noise=False)
        lo, hi = np.log(p.lo), np.log(p.hi)  # predict_log is the linear model itself here
        truth = 1.0 + 2.0 * x_new
        hits += (lo <= truth) & (truth <= hi)
    cover = hits / reps
    assert np.all(cover > 0.8) and np.all(cover < 0.98), cover


def test_predictive_delta_and_draws_agree() -> None:
    space = ParamSpace([Param("a", 0.1, 10, log=True), Param("b", -1, 1)])
    post = Posterior(space, space.to_internal(np.array([2.0, 0.1])), np.diag([0.01**2, 0.005**2]), 0.002)
    xs = np.linspace(0, 3, 7)

    def f(th: np.ndarray) -> np.ndarray:
        return np.asarray(np.log(th[0]) + th[1] * xs)

    d = predictive(post, f, method="delta")
    s = predictive(post, f, method="draws", n_draws=4000, seed=1)
    np.testing.assert_allclose(d.mean, s.mean)
    np.testing.assert_allclose(np.log(d.hi / d.mean), np.log(s.hi / s.mean), rtol=0.1)
    assert np.all(d.lo < d.mean) and np.all(d.mean < d.hi)
    with pytest.raises(ValueError, match="method"):
        predictive(post, f, method="nope")


# ---------------------------------------------------------------------- prefix conditioning


def _flat_prediction(steps: np.ndarray, level: float = 3.0, half: float = 0.05) -> Prediction:
    m = np.full(steps.size, level)
    return Prediction(m, m * np.exp(-half), m * np.exp(half))


def test_condition_on_prefix_shifts_and_shrinks() -> None:
    targets = np.array([1000, 1100, 5000, 100000])
    prior = _flat_prediction(targets)
    ps = np.arange(0, 1001, 50)
    obs = np.full(ps.size, 3.0 * np.exp(0.02))  # the run sits 2% above the law
    post = condition_on_prefix(prior, targets, ps, obs, np.full(ps.size, 3.0), noise=0.001)
    shift = np.log(post.mean / prior.mean)
    assert shift[0] == pytest.approx(0.02, rel=1e-6)  # at the last observed step: full offset
    assert 0.02 > shift[1] > shift[2] > shift[3] >= 0  # fading with distance
    width = np.log(post.hi / post.lo)
    prior_width = np.log(prior.hi / prior.lo)
    assert width[0] < 0.2 * prior_width[0]  # near the prefix: much surer
    assert np.all(np.diff(width) >= 0) and width[-1] <= prior_width[-1] + 1e-12
    assert width[-1] > 0.99 * prior_width[-1]  # far away: back to the law's own interval


def test_condition_on_prefix_ignores_diverged_points_and_empty_prefix() -> None:
    targets = np.array([2000])
    prior = _flat_prediction(targets)
    ps = np.array([100, 200, 300])
    same = condition_on_prefix(prior, targets, ps, np.array([np.nan, np.inf, np.nan]), np.full(3, 3.0), noise=0.001)
    assert same is prior
    part = condition_on_prefix(prior, targets, ps, np.array([3.0, np.nan, 3.0]), np.full(3, 3.0), noise=0.001)
    assert np.all(np.isfinite(part.mean)) and part.mean[0] == pytest.approx(3.0)


def test_leave_one_curve_out_discrepancy_flags_a_misspecified_law() -> None:
    # two "curves" (halves of x); a straight line fitted to a parabola errs on the left-out
    # half by much more than the noise, a straight line fitted to a line does not
    space = ParamSpace([Param("a", -10, 10, init=(-1, 1)), Param("b", -10, 10, init=(-1, 1))])
    x = np.linspace(0, 1, 40)
    groups = (x > 0.5).astype(np.int64)
    eps = np.random.default_rng(0).normal(0, 0.01, x.size)
    sds = []
    for y in (1 + 2 * x + eps, 1 + 2 * x + 0.5 * x**2 + eps):
        fit = fit_least_squares(space, lambda th, y=y: y - th[0] - th[1] * x, starts=[[0, 0]], groups=groups,
                                loco=True, huber_delta=1.0)
        sds.append(fit.posterior.model_sd)
        p = predictive(fit.posterior, lambda th: th[0] + th[1] * np.array([1.0]), noise=True)
        assert np.log(p.hi[0] / p.mean[0]) == pytest.approx(
            1.645 * np.sqrt(fit.posterior.noise**2 + fit.posterior.model_sd**2 + 0.0), rel=0.3)
    assert sds[0] < 0.01 < 0.05 < sds[1]
