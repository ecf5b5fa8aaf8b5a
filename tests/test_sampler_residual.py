"""The GP on a law's residuals (optuna_optlaws._residual_gp) on known errors."""

from __future__ import annotations

import numpy as np

from optuna_optlaws._residual_gp import FEATURE_NAMES, fit_residuals, schedule_descriptors
from optuna_optlaws.schedules import Schedule


def test_features_tell_families_apart() -> None:
    total = 1000
    x = schedule_descriptors(
        [
            Schedule.constant(1e-3, total),
            Schedule.cosine(1e-3, total, warmup_steps=100),
            Schedule.wsd(1e-3, total, cooldown_fraction=0.2),
            Schedule.constant(1e-2, 2 * total),
        ]
    )
    f = {name: x[:, i] for i, name in enumerate(FEATURE_NAMES)}
    np.testing.assert_allclose(f["log_peak_lr"], np.log([1e-3, 1e-3, 1e-3, 1e-2]))
    np.testing.assert_allclose(f["log_total_steps"], np.log([total, total, total, 2 * total]))
    assert f["area_fraction"][0] == 1.0 and 0.4 < f["area_fraction"][1] < 0.6 and 0.85 < f["area_fraction"][2] < 0.95
    assert f["tail_lr"][0] == 1.0 and f["tail_lr"][1] < 0.05 and f["tail_lr"][2] < 0.3
    assert f["stable_fraction"][0] == 1.0 and 0.75 < f["stable_fraction"][2] < 0.85 and f["stable_fraction"][1] < 0.3
    assert abs(f["warmup_fraction"][1] - 0.1) < 0.01 and f["warmup_fraction"][0] == 0.0


def test_gp_learns_a_bias_on_part_of_the_space_and_is_unsure_away_from_data() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((30, 2))
    bias = np.where(x[:, 0] > 0.5, 0.08, 0.0)  # the law is 0.08 nats optimistic on one half
    r = bias + rng.normal(0.0, 0.005, x.shape[0])
    probe = np.array([[0.9, 0.5], [0.1, 0.5], [0.9, 5.0]])
    law_sd = np.full(x.shape[0], 0.03)
    model = fit_residuals(x, r, np.zeros(x.shape[0]), law_sd, probe)
    assert model is not None
    mu, sd = model.predict(probe, np.full(3, 0.03))
    assert abs(mu[0] - 0.08) < 0.02 and abs(mu[1]) < 0.02
    assert sd[0] < 0.02 and sd[1] < 0.02
    # far from every observation the GP falls back to its prior, the law's own sigma
    # times the fitted factor, so it scales with what the law says there
    assert sd[2] > 3 * sd[0]
    _, sd_wide = model.predict(probe, np.array([0.03, 0.03, 0.3]))
    np.testing.assert_allclose(sd_wide[2], 10 * sd[2], rtol=1e-6)


def test_too_few_observations_give_no_model() -> None:
    x = np.zeros((2, 3))
    assert fit_residuals(x, np.zeros(2), np.zeros(2), np.ones(2), x) is None
    r = np.array([0.0, np.nan, np.nan, 0.1])
    assert fit_residuals(np.zeros((4, 3)), r, np.zeros(4), np.ones(4), x) is None


def test_running_schedules_are_believed_not_explored_again() -> None:
    """``pending``: the GP's mean is unchanged, its standard deviation shrinks near the
    pending schedules (to about the fitted noise at them) and nowhere grows, and it equals
    the posterior with the pending runs added as observations at their predicted values
    (the kriging believer, by brute force)."""
    rng = np.random.default_rng(1)
    x, cands = rng.uniform(size=(10, 3)), rng.uniform(size=(20, 3))
    law_sd, cand_sd = rng.uniform(0.01, 0.05, 10), rng.uniform(0.01, 0.05, 20)
    model = fit_residuals(x, 0.02 * np.sin(4 * x[:, 0]), np.zeros(10), law_sd, cands)
    assert model is not None
    pending, pending_sd = cands[:3], cand_sd[:3]
    mu0, sd0 = model.predict(cands, cand_sd)
    mu1, sd1 = model.predict(cands, cand_sd, (pending, pending_sd))
    np.testing.assert_array_equal(mu1, mu0)
    assert np.all(sd1 <= sd0 + 1e-12) and np.all(sd1[:3] < sd0[:3])
    assert np.all(sd1[:3] <= model.noise * 1.01)
    # brute force: the observations' covariance (from its Cholesky factor) and the pending
    # runs' with the fitted noise, one block matrix
    a = np.vstack([model.x, (pending - model.lo) / model.span])
    s = np.concatenate([model.scale, model.factor * pending_sd])

    def k(z1: np.ndarray, s1: np.ndarray, z2: np.ndarray, s2: np.ndarray) -> np.ndarray:
        d2 = ((z1[:, None, :] - z2[None, :, :]) ** 2).sum(-1)
        return s1[:, None] * s2[None, :] * np.exp(-0.5 * d2 / model.length**2)

    cov = k(a, s, a, s) + model.noise**2 * np.eye(13)
    cov[:10, :10] = model.chol @ model.chol.T
    zc, sc = (cands - model.lo) / model.span, model.factor * cand_sd
    kc = k(zc, sc, a, s)
    var = sc**2 - np.einsum("ij,jk,ik->i", kc, np.linalg.inv(cov), kc)
    np.testing.assert_allclose(sd1, np.sqrt(np.maximum(var, 0.0)), atol=1e-9)
