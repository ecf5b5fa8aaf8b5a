"""Tests of optuna_optlaws.divergence: online detection, the fitted criterion, its CLI."""

from __future__ import annotations

import importlib.resources

import numpy as np
import pytest

from optuna_optlaws.curves import read_curves_csv
from optuna_optlaws.divergence.online import DivergenceSignal, detect_divergence

# ----------------------------------------------------------------------------- synthetic curves


def _healthy(n: int, *, every: int, noise: float, seed: int, bump: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A power-law training curve in nats (10.8 at step 0 down to ~3), multiplicative noise,
    optionally with a warmup bump (+8% over ~10 reports early on)."""
    rng = np.random.default_rng(seed)
    steps = np.arange(n, dtype=np.int64) * every
    base = 2.6 + 8.2 * (1.0 + steps / 200.0) ** -0.6
    if bump:
        centre = 0.08 * steps[-1]
        base = base * (1.0 + 0.08 * np.exp(-0.5 * ((steps - centre) / (0.015 * steps[-1])) ** 2))
    return steps, base * (1.0 + noise * rng.standard_normal(n))


def _diverging(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """A healthy curve that starts to diverge at report 300; returns (steps, losses, onset step)."""
    steps, y = _healthy(500, every=20, noise=0.01, seed=seed)
    onset = 300
    t = np.arange(500) - onset
    if kind == "explode":
        y = np.where(t > 0, y * np.exp(0.08 * np.clip(t, 0, None)), y)
    elif kind == "drift":
        y = np.where(t > 0, y * (1.0 + 0.004 * np.clip(t, 0, None)), y)
    elif kind == "nan":
        y = np.where(t > 0, y * np.exp(0.05 * np.clip(t, 0, None)), y)
        y[onset + 40 :] = np.nan
    return steps, y, int(steps[onset])


# ----------------------------------------------------------------------------- online detection


def test_nan_and_inf_are_caught_at_once() -> None:
    steps, y = _healthy(200, every=10, noise=0.01, seed=0)
    y[57] = np.nan
    sig = detect_divergence(steps, y)
    assert isinstance(sig, DivergenceSignal)
    assert sig.step == int(steps[57]) and sig.rule == "nonfinite" and "NaN" in sig.reason
    y2 = y.copy()
    y2[57] = 3.0
    y2[12] = np.inf
    sig2 = detect_divergence(steps, y2)
    assert sig2 is not None and sig2.step == int(steps[12]) and "infinite" in sig2.reason


def test_spike_is_caught_on_the_spiking_report() -> None:
    steps, y = _healthy(300, every=10, noise=0.01, seed=1)
    y[250] = 3.5 * y[249]
    sig = detect_divergence(steps, y)
    assert sig is not None and sig.rule == "spike" and sig.step == int(steps[250])


def test_sustained_rise_is_caught() -> None:
    steps, y = _healthy(300, every=10, noise=0.0, seed=2)
    y[200:] = y[199] * (1.0 + 0.025 * np.arange(1, 101))  # +2.5% per report, no dip
    sig = detect_divergence(steps, y)
    assert sig is not None
    assert int(steps[200]) <= sig.step <= int(steps[215])


@pytest.mark.parametrize("kind", ["explode", "drift", "nan"])
def test_diverging_curves_are_caught_after_onset(kind: str) -> None:
    steps, y, onset = _diverging(kind, seed=3)
    sig = detect_divergence(steps, y)
    assert sig is not None and sig.step > onset
    # detection comes no later than the loss doubling (or going NaN)
    blown = (~np.isfinite(y)) | (y >= 2.0 * np.nanmin(y[steps <= onset]))
    blown &= steps > onset
    if blown.any():
        assert sig.step <= int(steps[int(np.argmax(blown))])


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("every,noise", [(1, 0.015), (20, 0.01), (128, 0.003)])
def test_no_false_alarm_on_noisy_healthy_curves(seed: int, every: int, noise: float) -> None:
    steps, y = _healthy(3000 if every == 1 else 400, every=every, noise=noise, seed=seed, bump=seed % 2 == 1)
    assert detect_divergence(steps, y) is None


def test_no_false_alarm_on_vendored_mpl_curves() -> None:
    path = importlib.resources.files("optuna_optlaws") / "data" / "mpl_luo2025.csv"
    curves = read_curves_csv(str(path))
    runs = list(curves.values()) if isinstance(curves, dict) else list(curves)
    assert len(runs) >= 20
    for c in runs:
        assert c.steps.size > 50
        assert detect_divergence(c.steps, c.losses) is None, c.run_id


def test_detection_is_causal_prefix_consistent() -> None:
    steps, y, _ = _diverging("drift", seed=4)
    full = detect_divergence(steps, y)
    assert full is not None
    i = int(np.searchsorted(steps, full.step))
    assert detect_divergence(steps[:i], y[:i]) is None
    again = detect_divergence(steps[: i + 1], y[: i + 1])
    assert again == full


def test_unsorted_and_empty_input() -> None:
    assert detect_divergence(np.zeros(0, dtype=np.int64), np.zeros(0)) is None
    steps, y = _healthy(100, every=10, noise=0.0, seed=5)
    y[80] = np.nan
    perm = np.random.default_rng(0).permutation(100)
    sig = detect_divergence(steps[perm], y[perm])
    assert sig is not None and sig.step == int(steps[80])
    with pytest.raises(ValueError):
        detect_divergence(steps, y[:-1])
