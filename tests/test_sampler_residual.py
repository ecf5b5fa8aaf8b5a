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
