"""Schedule families: shapes, knots, JSON round trip, bad parameters, torch playback."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optuna_optlaws import InputError, Schedule

PEAK = 3e-4
FINAL = 3e-5
TOTAL = 1000
WARM = 100


def at(s: Schedule, t: float) -> float:
    return float(s.lr_at(np.array([t]))[0])


ALL_FAMILIES = [
    Schedule.constant(PEAK, TOTAL, warmup_steps=WARM),
    Schedule.cosine(PEAK, TOTAL, warmup_steps=WARM, final_lr=FINAL),
    Schedule.linear(PEAK, TOTAL, warmup_steps=WARM, final_lr=FINAL),
    Schedule.wsd(PEAK, TOTAL, warmup_steps=WARM, final_lr=FINAL, cooldown_fraction=0.2, cooldown="linear"),
    Schedule.wsd(PEAK, TOTAL, warmup_steps=WARM, final_lr=FINAL, cooldown_fraction=0.3, cooldown="exp"),
    Schedule.wsd(PEAK, TOTAL, warmup_steps=WARM, final_lr=FINAL, cooldown_fraction=0.1, cooldown="1-sqrt"),
    Schedule.wsd(PEAK, TOTAL, warmup_steps=WARM, final_lr=FINAL, cooldown_fraction=0.5, cooldown="cosine"),
    Schedule.step(PEAK, TOTAL, warmup_steps=WARM),
    Schedule.step(PEAK, TOTAL, milestones=[0.25, 0.5, 0.75], factors=[0.5, 0.2, 0.1]),
    Schedule.inverse_sqrt(PEAK, TOTAL, warmup_steps=WARM),
    Schedule.inverse_sqrt(PEAK, TOTAL, timescale=50),
    Schedule.from_knots([0, 50, 500, 999], [0.0, PEAK, PEAK, FINAL]),
]


@pytest.mark.parametrize("sched", [s for s in ALL_FAMILIES if s.warmup_steps > 0], ids=lambda s: s.family)
def test_warmup_is_linear_from_zero_to_peak(sched: Schedule) -> None:
    assert at(sched, 0) == 0.0
    assert at(sched, WARM / 2) == pytest.approx(PEAK / 2)
    assert at(sched, WARM - 1) == pytest.approx(PEAK * (WARM - 1) / WARM)
    assert at(sched, WARM) == pytest.approx(PEAK)
    assert sched.peak_lr == PEAK
    assert sched.lrs().max() == pytest.approx(PEAK)


def test_constant_holds_peak() -> None:
    s = Schedule.constant(PEAK, TOTAL, warmup_steps=WARM)
    lrs = s.lrs()
    assert lrs.shape == (TOTAL,)
    np.testing.assert_allclose(lrs[WARM:], PEAK)
    assert s.final_lr == PEAK
    no_warm = Schedule.constant(PEAK, TOTAL)
    assert at(no_warm, 0) == PEAK


@pytest.mark.parametrize("family", ["cosine", "linear"])
def test_cosine_and_linear_reach_final_lr(family: str) -> None:
    s = getattr(Schedule, family)(PEAK, TOTAL, warmup_steps=WARM, final_lr=FINAL)
    mid = WARM + (TOTAL - WARM) / 2
    assert at(s, mid) == pytest.approx((PEAK + FINAL) / 2)
    assert at(s, TOTAL) == pytest.approx(FINAL)
    decay = s.lrs()[WARM:]
    assert np.all(np.diff(decay) <= 1e-18)
    assert s.final_lr > FINAL  # the last trained step is one short of the end
    quarter = WARM + (TOTAL - WARM) / 4
    expected = FINAL + (PEAK - FINAL) * (0.5 * (1 + math.cos(math.pi / 4)) if family == "cosine" else 0.75)
    assert at(s, quarter) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("shape", "q", "expected"),
    [
        ("linear", 0.5, (PEAK + FINAL) / 2),
        ("exp", 0.5, math.sqrt(PEAK * FINAL)),
        ("1-sqrt", 0.25, FINAL + (PEAK - FINAL) * 0.5),
        ("cosine", 0.5, (PEAK + FINAL) / 2),
    ],
)
def test_wsd_cooldown_start_and_shape(shape: str, q: float, expected: float) -> None:
    s = Schedule.wsd(PEAK, TOTAL, warmup_steps=WARM, final_lr=FINAL, cooldown_fraction=0.2, cooldown=shape)
    start = 800
    assert at(s, WARM) == pytest.approx(PEAK)
    assert at(s, start - 1) == pytest.approx(PEAK)
    assert at(s, start) == pytest.approx(PEAK)
    assert at(s, start + 1) < PEAK
    assert at(s, start + q * 200) == pytest.approx(expected)
    assert at(s, TOTAL) == pytest.approx(FINAL)
    assert start in s.breakpoints()
    assert np.all(np.diff(s.lrs()[start:]) <= 1e-18)


def test_wsd_cooldown_never_starts_before_warmup_end() -> None:
    s = Schedule.wsd(PEAK, TOTAL, warmup_steps=WARM, final_lr=0.0, cooldown_fraction=1.0)
    assert at(s, WARM) == pytest.approx(PEAK)
    assert at(s, (WARM + TOTAL) / 2) == pytest.approx(PEAK / 2)


def test_step_milestones_default_8_1_1() -> None:
    s = Schedule.step(PEAK, TOTAL)
    assert at(s, 799) == PEAK
    assert at(s, 800) == pytest.approx(PEAK / math.sqrt(10))
    assert at(s, 899) == pytest.approx(PEAK / math.sqrt(10))
    assert at(s, 900) == pytest.approx(PEAK / 10)
    assert at(s, 999) == pytest.approx(PEAK / 10)
    assert {800.0, 900.0} <= set(s.breakpoints().tolist())


def test_step_custom_factors_multiply() -> None:
    s = Schedule.step(PEAK, TOTAL, milestones=[0.25, 0.5, 0.75], factors=[0.5, 0.2, 0.1])
    assert at(s, 249) == PEAK
    assert at(s, 250) == pytest.approx(PEAK * 0.5)
    assert at(s, 500) == pytest.approx(PEAK * 0.1)
    assert at(s, 750) == pytest.approx(PEAK * 0.01)


def test_inverse_sqrt_shape() -> None:
    s = Schedule.inverse_sqrt(PEAK, TOTAL, warmup_steps=WARM)
    assert s.params["timescale"] == WARM
    assert at(s, WARM) == pytest.approx(PEAK)
    assert at(s, WARM + 3 * WARM) == pytest.approx(PEAK / 2)
    assert at(s, 2 * WARM) == pytest.approx(PEAK * math.sqrt(WARM / (2 * WARM)))
    s2 = Schedule.inverse_sqrt(PEAK, TOTAL, timescale=50)
    assert at(s2, 0) == PEAK
    assert at(s2, 150) == pytest.approx(PEAK / 2)


def test_from_knots_interpolates_and_holds() -> None:
    s = Schedule.from_knots([100, 10, 50], [1e-4, 2e-4, 4e-4])  # unsorted input
    assert s.total_steps == 101
    assert at(s, 0) == pytest.approx(2e-4)  # held before the first knot
    assert at(s, 30) == pytest.approx(3e-4)
    assert at(s, 75) == pytest.approx(2.5e-4)
    assert at(s, 100) == pytest.approx(1e-4)
    assert at(s, 1e6) == pytest.approx(1e-4)  # clamped after the last
    assert set(s.breakpoints().tolist()) >= {10.0, 50.0, 100.0}


def test_from_knots_jump_later_value_wins() -> None:
    s = Schedule.from_knots([0, 10, 10, 20], [1e-3, 1e-3, 1e-4, 1e-4])
    assert at(s, 9) == pytest.approx(1e-3)
    assert at(s, 10) == pytest.approx(1e-4)
    assert at(s, 15) == pytest.approx(1e-4)


def test_truncated_prefix_and_extension() -> None:
    s = Schedule.cosine(PEAK, TOTAL, warmup_steps=WARM, final_lr=FINAL)
    short = s.truncated(500)
    assert short.total_steps == 500
    np.testing.assert_allclose(short.lrs(), s.lrs()[:500], rtol=1e-6, atol=1e-12)
    knots = Schedule.from_knots([0, 10, 20], [0.0, 1.0, 0.5])
    longer = knots.truncated(40)
    assert longer.total_steps == 40
    assert at(longer, 35) == pytest.approx(0.5)


@pytest.mark.parametrize("sched", ALL_FAMILIES, ids=lambda s: s.family)
def test_json_round_trip(sched: Schedule) -> None:
    back = Schedule.from_json(sched.to_json())
    assert back == sched
    assert back.family == sched.family
    assert back.total_steps == sched.total_steps
    np.testing.assert_array_equal(back.lrs(), sched.lrs())
    assert hash(back) == hash(sched)
    assert Schedule.from_dict(sched.to_dict()) == sched


def test_a_logged_schedule_is_serialised_once() -> None:
    """A schedule is hashed and compared by its JSON (dict keys, caches), and a logged one
    with a knot per step is megabytes of it: it is written once per schedule, the same
    text every time, and a changed copy gets its own."""
    import dataclasses

    steps = np.arange(20_000)
    logged = Schedule.from_knots(steps, Schedule.cosine(3e-3, 20_000, 200).lr_at(steps))
    text = logged.to_json()
    assert logged.to_json() is text and len(text) > 100_000
    again = Schedule.from_json(text)
    assert again == logged and hash(again) == hash(logged) and {logged: 1}[again] == 1
    shorter = dataclasses.replace(logged, total_steps=10_000)
    assert shorter.to_json() != text and shorter != logged


@pytest.mark.parametrize(
    "build",
    [
        lambda: Schedule.constant(-1e-3, 100),
        lambda: Schedule.constant(float("nan"), 100),
        lambda: Schedule.constant(1e-3, 0),
        lambda: Schedule.constant(1e-3, 100.5),
        lambda: Schedule.constant(1e-3, 100, warmup_steps=200),
        lambda: Schedule.constant(1e-3, 100, warmup_steps=-1),
        lambda: Schedule.cosine(1e-3, 100, final_lr=-1e-4),
        lambda: Schedule.wsd(1e-3, 100, cooldown="zigzag"),
        lambda: Schedule.wsd(1e-3, 100, cooldown_fraction=1.5),
        lambda: Schedule.wsd(1e-3, 100, cooldown="exp", final_lr=0.0),
        lambda: Schedule.step(1e-3, 100, milestones=[0.9, 0.8]),
        lambda: Schedule.step(1e-3, 100, milestones=[0.5, 1.0]),
        lambda: Schedule.step(1e-3, 100, milestones=[0.5], factors=[0.1, 0.1]),
        lambda: Schedule.step(1e-3, 100, milestones=[0.5], factors=[-0.1]),
        lambda: Schedule.inverse_sqrt(1e-3, 100, timescale=0),
        lambda: Schedule.from_knots([], []),
        lambda: Schedule.from_knots([0, 1], [1e-3]),
        lambda: Schedule.from_knots([0, -1], [1e-3, 1e-3]),
        lambda: Schedule.from_knots([0, float("nan")], [1e-3, 1e-3]),
        lambda: Schedule.from_knots([0, 1], [1e-3, -1e-3]),
        lambda: Schedule.from_json("{not json"),
        lambda: Schedule.from_json('{"family": "cosine"}'),
        lambda: Schedule.from_json('{"family": "spiral", "total_steps": 10, "params": {}}'),
        lambda: Schedule.from_json('{"format_version": 99, "family": "constant", "total_steps": 10, '
                                   '"params": {"peak_lr": 1e-3}}'),
        lambda: Schedule.from_json('{"family": "constant", "total_steps": 10, "params": {"peak_lr": 1e-3, "x": 1}}'),
    ],
)
def test_bad_parameters_raise_input_error(build: object) -> None:
    with pytest.raises(InputError) as info:
        build()  # type: ignore[operator]
    assert "\n" not in str(info.value)


def test_lrs_of_a_million_steps() -> None:
    s = Schedule.wsd(PEAK, 10**6, warmup_steps=2000, final_lr=FINAL, cooldown_fraction=0.2, cooldown="1-sqrt")
    lrs = s.lrs()
    assert lrs.shape == (10**6,)
    assert lrs.dtype == np.float64
    assert np.all(np.isfinite(lrs))
    idx = np.array([0, 1999, 2000, 799_999, 800_000, 900_000, 999_999])
    np.testing.assert_allclose(lrs[idx], s.lr_at(idx.astype(float)))
    assert lrs[0] == 0.0 and lrs[500_000] == PEAK
    knots = Schedule.from_knots([0, 10**6 - 1], [PEAK, FINAL])
    assert knots.lrs().shape == (10**6,)


@pytest.mark.parametrize(
    "sched",
    [
        Schedule.cosine(1e-3, 60, warmup_steps=10, final_lr=1e-4),
        Schedule.wsd(1e-3, 60, warmup_steps=5, final_lr=1e-5, cooldown_fraction=0.3, cooldown="exp"),
        Schedule.step(1e-3, 60, warmup_steps=5),
        Schedule.from_knots([0, 20, 40, 59], [0.0, 1e-3, 1e-3, 0.0]),
    ],
    ids=lambda s: s.family,
)
def test_to_torch_plays_the_schedule_step_for_step(sched: Schedule) -> None:
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([param], lr=123.0)
    scheduler = sched.to_torch(opt)
    seen = []
    for _ in range(sched.total_steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        param.sum().backward()
        opt.step()
        scheduler.step()
    np.testing.assert_allclose(seen, sched.lrs(), rtol=1e-12, atol=0)

