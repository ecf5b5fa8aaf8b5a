"""Tests of the Opt-Law (optuna_optlaws.laws.optlaw): recovery of its own curves, held-out
accuracy on the vendored MPL data, law file round trip, conditioning, bad input."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from optuna_optlaws import InputError, Schedule
from optuna_optlaws.curves import Curve, read_curves_csv
from optuna_optlaws.laws import _optlaw_dynamics as dyn
from optuna_optlaws.laws import load_law, make_law
from optuna_optlaws.laws._fitting import Posterior
from optuna_optlaws.laws._optlaw_fit import TRANSIENT_FRACTION
from optuna_optlaws.laws._optlaw_terms import FAST_MIN_RUNS, Terms
from optuna_optlaws.laws.optlaw import OptLaw

TRAIN = ("cosine_24000", "constant_24000", "wsdcon_9")

TRUE = {
    "L0": 2.7, "A": 0.8, "B": 0.12, "alpha": 0.5, "s_w": 0.05, "phi": 0.7,
    "eps": 3.0, "beta": 0.3, "c_cut": 150.0,
}


def _law_with_terms(terms: Terms, values: dict[str, float]) -> OptLaw:
    """An OptLaw with ``terms`` holding given parameters (as if fitted), to generate curves."""
    space = terms.space()
    theta = space.from_mapping(values)
    law = OptLaw()
    post = Posterior(space=space, z=space.to_internal(theta), cov=np.eye(space.size) * 1e-12, noise=1e-4)
    law._members = [(terms, post)]
    law._terms, law.posterior = terms, post
    return law


def _law_with(values: dict[str, float], eta_ref: float = 3e-4, sizes: tuple[float, ...] = ()) -> OptLaw:
    """An OptLaw of the plain terms (no escape) holding given parameters."""
    terms = Terms(eta_ref=eta_ref, sizes=sizes, escape=False, size_form="power" if sizes else "single")
    return _law_with_terms(terms, values)


def _synthetic(law: OptLaw, schedules: dict[str, Schedule], every: int = 200) -> list[Curve]:
    out = []
    for name, s in schedules.items():
        steps = np.arange(every, s.total_steps, every)
        out.append(Curve(name, s, steps, law.predict(s, steps).mean))
    return out


SCHEDULES = {
    "cosine": Schedule.cosine(3e-4, 20000, warmup_steps=1000, final_lr=3e-5),
    "constant": Schedule.constant(3e-4, 20000, warmup_steps=1000),
    "step": Schedule.step(3e-4, 16000, warmup_steps=1000, milestones=[0.5], factors=[0.3]),
}
HELD_OUT = Schedule.wsd(3e-4, 20000, warmup_steps=1000, final_lr=3e-5, cooldown_fraction=0.2, cooldown="linear")


@pytest.fixture(scope="module")
def mpl_curves(mpl_csv: Path) -> dict[str, Curve]:
    return {c.run_id: c for c in read_curves_csv(mpl_csv)}


@pytest.fixture(scope="module")
def law_100m(mpl_curves: dict[str, Curve]) -> OptLaw:
    return OptLaw().fit([mpl_curves[f"100M_{n}"] for n in TRAIN], seed=0)


def test_dynamics_kernel_matches_recursion() -> None:
    s = Schedule.wsd(3e-4, 12000, warmup_steps=500, final_lr=3e-5, cooldown_fraction=0.3, cooldown="exp")
    steps = np.array([600, 3000, 9000, 11000, 11999])
    grid = dyn.chunk_grid(s, steps, eta_ref=3e-4, max_chunks=64)
    target = grid.eta**0.7
    w = dyn.spectrum_weights(0.5, 100.0)
    via_kernel = np.einsum("j,jom->om", w, dyn.relaxation_kernel(grid, dyn.KAPPA)) @ target
    via_loop = dyn.simulate(grid.area, target[:, None], w[None, :], dyn.KAPPA)[grid.target_chunk, 0]
    np.testing.assert_allclose(via_kernel, via_loop, rtol=1e-10)
    # the chunk areas add up to the schedule's LR area (units of 1000 steps at eta_ref)
    assert grid.s_end[-1] == pytest.approx(s.lrs().sum() / (3e-4 * 1000), rel=1e-4)
    # at a constant LR held long, the noise excess reaches its floor
    const = dyn.chunk_grid(Schedule.constant(3e-4, 400000), np.array([399999]), eta_ref=3e-4)
    floor = dyn.simulate(const.area, np.ones((const.area.size, 1)), w[None, :], dyn.KAPPA)[-1, 0]
    assert floor == pytest.approx(1.0, abs=0.02)


def test_recovers_its_own_curves() -> None:
    truth = _law_with(TRUE)
    curves = _synthetic(truth, SCHEDULES)
    fitted = OptLaw(n_random=1, loco=False).fit(curves, seed=1)
    for c in curves:  # the fit describes the loss after the warmup and the initial transient
        after = c.steps >= max(1000, TRANSIENT_FRACTION * c.schedule.total_steps)
        np.testing.assert_allclose(fitted.predict_curve(c).mean[after], c.losses[after], atol=2e-3)
    steps = np.arange(2000, HELD_OUT.total_steps, 1000)
    want = truth.predict(HELD_OUT, steps).mean
    got = fitted.predict(HELD_OUT, steps).mean
    assert np.max(np.abs(got - want)) < 5e-3
    # multiplicative noise matters: the plain (eps = 0) law is measurably different
    plain = truth.predict(HELD_OUT, steps).mean - _law_with({**TRUE, "eps": 0.0}).predict(HELD_OUT, steps).mean
    assert np.max(np.abs(plain)) > 0.02


def test_mpl_held_out_wsd_final_loss(law_100m: OptLaw, mpl_curves: dict[str, Curve]) -> None:
    # measured: +0.0010 (exponential) and +0.0037 (linear) nats; the plain mode recursion
    # and the multi-power law are 0.013-0.018 nats too low on these runs (design.md 4)
    for name in ("100M_wsd_20000_24000", "100M_wsdld_20000_24000"):
        c = mpl_curves[name]
        mean, lo, hi = law_100m.predict_curve(c)
        assert abs(mean[-1] - c.final_loss) < 0.006, name
        assert lo[-1] < mean[-1] < hi[-1]
    # training runs are described to well under 0.1% per step
    for name in TRAIN:
        c = mpl_curves[f"100M_{name}"]
        rel = np.abs(law_100m.predict_curve(c).mean - c.losses) / c.losses
        assert np.mean(rel) < 1e-3


def test_save_load_round_trip(law_100m: OptLaw, tmp_path: Path) -> None:
    path = tmp_path / "law.json"
    law_100m.save(path)
    back = load_law(path)
    assert isinstance(back, OptLaw)
    s = Schedule.wsd(3e-4, 30000, warmup_steps=2160, final_lr=3e-5, cooldown_fraction=0.25, cooldown="1-sqrt")
    a = law_100m.predict(s, [5000, 29999], model_size=1e8)
    b = back.predict(s, [5000, 29999], model_size=1e8)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-12)
    assert make_law().name == "optlaw"


def test_predict_final_agrees_with_predict(law_100m: OptLaw) -> None:
    schedules = [
        Schedule.cosine(3e-4, 24000, warmup_steps=2160, final_lr=3e-5),
        Schedule.wsd(3e-4, 50000, warmup_steps=2160, final_lr=3e-5, cooldown_fraction=0.1, cooldown="exp"),
        Schedule.step(2e-4, 30000, warmup_steps=1000),
        Schedule.from_knots([0, 2160, 8000, 8001, 14000], [0, 3e-4, 3e-4, 9e-5, 9e-5]),
    ]
    batch = law_100m.predict_final(schedules, model_size=1e8)
    for i, s in enumerate(schedules):
        one = law_100m.predict(s, model_size=1e8)
        assert batch.mean[i] == pytest.approx(one.mean[0], rel=1e-9)
        assert batch.lo[i] == pytest.approx(one.lo[0], rel=1e-6)
        assert batch.hi[i] == pytest.approx(one.hi[0], rel=1e-6)
    # ranks: a decayed schedule beats the same schedule held constant
    pair = law_100m.predict_final(
        [Schedule.constant(3e-4, 24000, warmup_steps=2160), Schedule.cosine(3e-4, 24000, warmup_steps=2160)]
    )
    assert pair.mean[1] < pair.mean[0] - 0.02


def test_observed_prefix_reduces_error(law_100m: OptLaw, mpl_curves: dict[str, Curve]) -> None:
    c = mpl_curves["100M_wsdcon_3"]  # held out; the law's worst 100M run
    later = c.steps[c.steps > 12000]
    truth = c.losses[c.steps > 12000]
    plain = law_100m.predict(c.schedule, later, model_size=c.model_size)
    t0 = time.perf_counter()
    cond = law_100m.predict(c.schedule, later, model_size=c.model_size, observed=c.prefix(12000))
    assert time.perf_counter() - t0 < 2.0  # generous: the benchmark measures the real figure
    err_plain = np.mean(np.abs(plain.mean - truth))
    err_cond = np.mean(np.abs(cond.mean - truth))
    assert err_cond < 0.5 * err_plain
    assert np.all(cond.hi - cond.lo < plain.hi - plain.lo)


def test_nan_losses_do_not_crash_the_fit() -> None:
    truth = _law_with(TRUE)
    curves = _synthetic(truth, SCHEDULES, every=400)
    bad = curves[1]
    losses = bad.losses.copy()
    losses[5], losses[-3] = np.nan, np.inf
    curves[1] = Curve(bad.run_id, bad.schedule, bad.steps, losses)
    law = OptLaw(n_random=0, loco=False).fit(curves)
    assert law.is_fitted
    assert np.all(np.isfinite(law.predict_curve(curves[0]).mean))
    with pytest.raises(InputError, match="no finite loss"):
        OptLaw(n_random=0, loco=False).fit([Curve("x", bad.schedule, bad.steps[:3], np.full(3, np.nan))])


def test_model_size_extrapolation(law_100m: OptLaw) -> None:
    s = Schedule.cosine(3e-4, 24000, warmup_steps=2160)
    law_100m.predict(s, model_size=1e8)  # the fitted size is fine
    with pytest.raises(InputError, match="model-size term is not identified"):
        law_100m.predict(s, model_size=4e8)
    with pytest.raises(InputError, match="model_size"):
        law_100m.predict_final([s], model_size=2.5e7)


def test_two_sizes_predict_a_third() -> None:
    sizes = (2.5e7, 1e8)
    truth = _law_with({**TRUE, "g_l0": 0.08, "g_a": 0.1, "g_b": -0.1, "g_alpha": 0.05}, sizes=sizes)
    curves = []
    for n in sizes:
        for name, s in SCHEDULES.items():
            steps = np.arange(1000, s.total_steps, 500)
            curves.append(Curve(f"{n:g}_{name}", s, steps, truth.predict(s, steps, model_size=n).mean, model_size=n))
    law = OptLaw(n_random=0, loco=False).fit(curves)
    assert [t.size_form for t, _ in law._members] == ["power", "entropy"]
    at_fitted = law.predict(HELD_OUT, model_size=1e8)
    assert at_fitted.mean[0] == pytest.approx(truth.predict(HELD_OUT, model_size=1e8).mean[0], abs=3e-3)
    far = law.predict(HELD_OUT, model_size=4e8)
    want = truth.predict(HELD_OUT, model_size=4e8).mean[0]
    assert far.lo[0] < want < far.hi[0]
    # extrapolating in N is less certain than predicting a fitted size
    assert far.hi[0] - far.lo[0] > at_fitted.hi[0] - at_fitted.lo[0]
    batch = law.predict_final([HELD_OUT, SCHEDULES["step"]], model_size=4e8)
    assert batch.mean[0] == pytest.approx(far.mean[0], rel=1e-9)
    assert batch.hi[0] == pytest.approx(far.hi[0], rel=1e-6)
    with pytest.raises(InputError, match="give the model_size"):
        law.predict(HELD_OUT)


def test_escape_term_only_when_peak_lr_varies() -> None:
    truth = _law_with(TRUE)
    curves = _synthetic(truth, SCHEDULES, every=500)
    assert "k_esc" not in OptLaw(n_random=0, loco=False).fit(curves).params
    hot = Schedule.cosine(6e-4, 20000, warmup_steps=1000, final_lr=3e-5)
    steps = np.arange(500, 20000, 500)
    curves.append(Curve("hot", hot, steps, truth.predict(hot, steps).mean))
    assert "k_esc" in OptLaw(n_random=0, loco=False).fit(curves).params


def test_continued_run_starts_from_its_parent() -> None:
    truth = _law_with(TRUE)
    parent_s = Schedule.constant(3e-4, 12000, warmup_steps=1000)
    steps = np.arange(1000, 12000, 250)
    parent = Curve("pre", parent_s, steps, truth.predict(parent_s, steps).mean)
    child_s = Schedule.cosine(2e-4, 6000, warmup_steps=200, final_lr=2e-5)
    child_steps = np.arange(0, 6000, 250)
    child = Curve("cont", child_s, child_steps, np.full(child_steps.size, np.nan), resume_from="pre", resume_step=8000)
    with pytest.raises(InputError, match="does not know"):
        truth.predict_curve(child)
    truth.add_lineage([parent])
    cont = truth.predict_curve(child).mean
    fresh = truth.predict(child_s, child_steps).mean
    # the continued run picks up where its parent was at step 8000, far below a fresh start
    at_resume = truth.predict(parent_s, [8000]).mean[0]
    assert cont[0] == pytest.approx(at_resume, abs=0.02)
    assert np.all(cont < fresh - 0.1)
    # fitting on a continued run uses its whole history (no crash, recovers it)
    child_obs = Curve("cont", child_s, child_steps[1:], cont[1:], resume_from="pre", resume_step=8000)
    law = OptLaw(n_random=0, loco=False).fit([parent, child_obs, _synthetic(truth, {"c": SCHEDULES["cosine"]})[0]])
    np.testing.assert_allclose(law.predict_curve(child_obs).mean, child_obs.losses, atol=3e-3)
    with pytest.raises(InputError, match="not among the curves"):
        OptLaw().fit([child_obs])


def test_escape_term_fits_a_u_shape_in_peak_lr() -> None:
    truth = _law_with_terms(Terms(eta_ref=1e-3, sizes=(), escape=True), {**TRUE, "k_esc": 1.0, "kappa_esc": 0.02})
    peaks = [1e-4, 2e-4, 4e-4, 7e-4, 1e-3]
    scheds = [Schedule.cosine(p, 20000, warmup_steps=1000, final_lr=0.1 * p) for p in peaks]
    true_final = truth.predict_final(scheds).mean
    assert 0 < int(np.argmin(true_final)) < len(peaks) - 1  # the truth is U-shaped
    steps = np.arange(1000, 20000, 500)
    curves = [Curve(f"p{p:g}", s, steps, truth.predict(s, steps).mean) for p, s in zip(peaks, scheds, strict=True)]
    law = OptLaw(n_random=1, loco=False).fit(curves[::2])  # peaks 1e-4, 4e-4, 1e-3 only
    assert law.params["k_esc"] > 0
    got = law.predict_final(scheds).mean
    assert int(np.argmin(got)) == int(np.argmin(true_final))
    np.testing.assert_allclose(got, true_final, atol=0.01)
    # past the largest fitted peak the escape excess is held, not extrapolated as eta^4
    hotter = Schedule.cosine(3e-3, 20000, warmup_steps=1000, final_lr=3e-4)
    assert law.predict_final([hotter]).mean[0] < float(np.max(true_final)) + 0.05


def test_other_batch_size_is_refused() -> None:
    truth = _law_with(TRUE)
    curves = [
        Curve(c.run_id, c.schedule, c.steps, c.losses, tokens_per_step=524288.0)
        for c in _synthetic(truth, SCHEDULES, every=1000)
    ]
    law = OptLaw(n_random=0, loco=False).fit(curves)
    law.predict(HELD_OUT, tokens_per_step=524288.0)
    with pytest.raises(InputError, match="no batch-size term"):
        law.predict(HELD_OUT, tokens_per_step=1048576.0)


def test_fit_grid_thins_logged_schedules_to_jumps_and_kinks() -> None:
    # a WSD schedule logged every 16 steps (abrupt drop at 6000, linear decay from 8000)
    wsd = Schedule.wsd(3e-4, 10000, warmup_steps=500, final_lr=3e-5, cooldown_fraction=0.2, cooldown="linear")
    ks = np.arange(0, 10000, 16)
    lrs = wsd.lr_at(ks.astype(float)) * np.where(ks < 6000, 1.0, 0.5)
    logged = Schedule.from_knots(ks, lrs)
    targets = np.array([2000, 7000, 9999])
    fine = dyn.chunk_grid(logged, targets, eta_ref=3e-4, max_chunks=128)
    thin = dyn.chunk_grid(logged, targets, eta_ref=3e-4, max_chunks=128, max_knots=0)
    assert thin.area.size < fine.area.size / 3
    np.testing.assert_allclose(thin.s_target, fine.s_target, rtol=1e-5)
    # the drop and the start and end of the decay stay chunk boundaries
    for step in (5984, 6000, 8000):
        assert step in set(thin.bounds.tolist())


def test_huber_scale_follows_the_point_noise() -> None:
    rng = np.random.default_rng(0)
    s = Schedule.cosine(3e-4, 20000, warmup_steps=1000, final_lr=3e-5)
    truth = _law_with(TRUE)
    steps = np.arange(1000, 20000, 100)
    clean = truth.predict(s, steps).mean
    for sd in (2e-4, 2e-3):
        noisy = Curve("noisy", s, steps, clean * np.exp(rng.normal(0.0, sd, steps.size)))
        law = OptLaw(n_random=0, loco=False).fit([noisy])
        assert law.fit_info["huber_delta"] == pytest.approx(1.345 * sd, rel=0.3)


def test_single_curve_gets_a_model_discrepancy() -> None:
    # one curve with a late drift the law does not describe: its time fold (fit the first
    # three quarters, predict the last) gives a model discrepancy, so wider intervals
    c = _synthetic(_law_with(TRUE), {"cosine": SCHEDULES["cosine"]})[0]
    drift = 0.03 * np.clip((c.steps - 12000) / 8000, 0.0, None) ** 2
    law = OptLaw(n_random=0).fit([Curve(c.run_id, c.schedule, c.steps, c.losses + drift)])
    assert law.posterior is not None and law.posterior.model_sd > 1e-3


def test_warmup_term_only_when_warmups_differ_and_it_learns_their_cost() -> None:
    truth = _law_with_terms(
        Terms(eta_ref=1e-3, sizes=(), escape=False, warmup=True),
        {**TRUE, "k_warm": 5.0, "s_edge": 1.0, "kappa_warm": 0.02},
    )
    warmups = [0, 200, 500, 1000, 2000]
    scheds = [Schedule.wsd(1e-3, 20000, w, cooldown_fraction=0.2, final_lr=1e-5) for w in warmups]
    true_final = truth.predict_final(scheds).mean
    # in the truth a short warmup costs loss: the final loss falls as the warmup grows
    assert np.all(np.diff(true_final) < 0) and true_final[0] - true_final[-1] > 0.015
    steps = np.arange(2000, 20000, 500)
    curves = [Curve(f"w{w}", s, steps, truth.predict(s, steps).mean) for w, s in zip(warmups, scheds, strict=True)]
    # one warmup length: the term is not fitted (not identifiable)
    assert "k_warm" not in OptLaw(n_random=0, loco=False).fit(curves[3:4]).params
    law = OptLaw(n_random=1, loco=False).fit([curves[i] for i in (0, 2, 4)])  # warmups 0, 500, 2000
    assert law.params["k_warm"] > 0
    got = law.predict_final(scheds).mean
    assert np.all(np.diff(got) < 0)
    np.testing.assert_allclose(got, true_final, atol=0.005)
    # the term survives a save and load
    again = OptLaw.from_dict(law.to_dict())
    np.testing.assert_allclose(again.predict_final(scheds).mean, got, rtol=1e-12)


FAST_TRUE = {**TRUE, "k_esc": 0.05, "kappa_esc": 0.5, "k_fast": 0.15, "kappa_fast": 3000.0, "p_fast": 0.5}


def test_fast_term_is_tried_with_the_escape_term_on_enough_runs_and_learns_a_fast_cooldown_drop() -> None:
    truth = _law_with_terms(Terms(eta_ref=1e-3, sizes=(), escape=True, fast=True), FAST_TRUE)
    scheds = {}
    for peak in (1e-3, 6e-4, 3e-4, 1.5e-4):
        scheds[f"cos_{peak:g}"] = Schedule.cosine(peak, 20000, warmup_steps=1000, final_lr=0.01 * peak)
        scheds[f"const_{peak:g}"] = Schedule.constant(peak, 20000, warmup_steps=1000)
    wsd = Schedule.wsd(1e-3, 20000, warmup_steps=1000, final_lr=1e-5, cooldown_fraction=0.1, cooldown="linear")
    steps = np.arange(1000, 20000, 500)
    curves = [Curve(n, s, steps, truth.predict(s, steps).mean) for n, s in scheds.items()]
    assert len(curves) == FAST_MIN_RUNS
    # in the truth, the fast excess is a large part of what a short cooldown removes
    t_wsd, t_const = truth.predict_final([wsd, scheds["const_0.001"]]).mean
    assert t_const - t_wsd > 0.1
    law = OptLaw(n_random=1, loco=False).fit(curves)
    assert law.params["k_fast"] > 0.05
    assert law.predict_final([wsd]).mean[0] == pytest.approx(t_wsd, abs=0.01)
    # asked not to, fewer runs, or one peak LR: the fast excess is not tried
    assert "k_fast" not in OptLaw(n_random=0, loco=False, fast_excess=False).fit(curves).params
    assert "k_fast" not in OptLaw(n_random=0, loco=False).fit(curves[:-1]).params
    one_peak = OptLaw(n_random=0, loco=False).fit(curves[:2]).params
    assert "k_fast" not in one_peak and "k_esc" not in one_peak
    # the term survives a save and load
    again = OptLaw.from_dict(law.to_dict())
    np.testing.assert_allclose(again.predict_final([wsd]).mean, law.predict_final([wsd]).mean, rtol=1e-12)


def test_fast_term_is_kept_only_when_it_predicts_left_out_runs_better() -> None:
    truth = _law_with_terms(Terms(eta_ref=1e-3, sizes=(), escape=True, fast=True), FAST_TRUE)
    steps = np.arange(1000, 20000, 500)
    curves = []
    for peak in (1e-3, 6e-4, 3e-4, 1.5e-4):
        for name, s in (("cos", Schedule.cosine(peak, 20000, warmup_steps=1000, final_lr=0.01 * peak)),
                        ("wsd", Schedule.wsd(peak, 20000, warmup_steps=1000, final_lr=0.01 * peak,
                                             cooldown_fraction=0.2))):
            curves.append(Curve(f"{name}_{peak:g}", s, steps, truth.predict(s, steps).mean))
    law = OptLaw(n_random=0).fit(curves)
    choice = law.fit_info["fast_choice"]
    assert choice["with"] < choice["without"]  # the truth has the term: leaving it out errs more
    assert "k_fast" in law.params


def test_a_law_saved_before_the_fast_term_still_loads() -> None:
    law = _law_with(TRUE)
    data = law.to_dict()
    state = data["params"]
    assert state["version"] == 3
    state["version"] = 2
    for m in state["members"]:
        del m["terms"]["fast"]
    old = OptLaw.from_dict(data)
    np.testing.assert_allclose(old.predict(HELD_OUT, [19999]).mean, law.predict(HELD_OUT, [19999]).mean, rtol=1e-12)
    state["version"] = 1
    with pytest.raises(ValueError, match="version"):
        OptLaw.from_dict(data)


def test_fit_problem_jacobian_with_the_fast_term_matches_finite_differences() -> None:
    from optuna_optlaws.laws._optlaw_fit import FitProblem

    terms = Terms(eta_ref=1e-3, sizes=(), escape=True, fast=True)
    truth = _law_with_terms(terms, FAST_TRUE)
    scheds = [Schedule.cosine(1e-3, 8000, warmup_steps=500, final_lr=1e-5),
              Schedule.wsd(4e-4, 8000, warmup_steps=500, final_lr=1e-6, cooldown_fraction=0.2)]
    curves = [Curve(f"c{i}", s, np.arange(500, 8000, 250), truth.predict(s, np.arange(500, 8000, 250)).mean * 1.01)
              for i, s in enumerate(scheds)]
    grids = [dyn.chunk_grid(c.schedule, c.steps, eta_ref=terms.eta_ref) for c in curves]
    problem = FitProblem(terms, curves, grids, np.log(np.concatenate([c.losses for c in curves])))
    theta = terms.space().from_mapping(FAST_TRUE)
    jac = problem.jacobian(theta)
    for i, name in enumerate(problem.names):
        h = 1e-6 * max(1.0, abs(theta[i]))
        up = theta.copy()
        up[i] += h
        num = (problem.residuals(up) - problem.residuals(theta)) / h
        np.testing.assert_allclose(jac[:, i], num, rtol=5e-3, atol=1e-6, err_msg=name)


def _noisy(law: OptLaw, schedules: dict[str, Schedule], seed: int) -> list[Curve]:
    """Curves of ``law`` with 0.3% multiplicative noise (seeded), every 500 steps from 1000."""
    rng = np.random.default_rng(seed)
    steps = np.arange(1000, 20000, 500)
    return [Curve(n, s, steps, law.predict(s, steps).mean * np.exp(0.003 * rng.standard_normal(steps.size)))
            for n, s in schedules.items()]


def test_a_prior_from_another_corpus_finds_the_best_peak_lr_from_two_low_lr_runs(tmp_path: Path) -> None:
    def corpus(floor: float) -> OptLaw:  # the same model and optimiser; another corpus moves the floor
        return _law_with_terms(Terms(eta_ref=1e-3, sizes=(), escape=True),
                               {**TRUE, "L0": floor, "k_esc": 1.0, "kappa_esc": 0.02})

    peaks = [1e-4, 2e-4, 4e-4, 7e-4, 1e-3]
    scheds = {f"p{p:g}": Schedule.cosine(p, 20000, warmup_steps=1000, final_lr=0.1 * p) for p in peaks}
    pretrain, finetune = corpus(2.7), corpus(3.1)
    prior = OptLaw(n_random=1, loco=False).fit(_noisy(pretrain, scheds, seed=0))
    few = _noisy(finetune, {n: scheds[n] for n in ("p0.0001", "p0.0002")}, seed=1)
    true = finetune.predict_final(list(scheds.values())).mean
    assert 0 < int(np.argmin(true)) < len(peaks) - 1

    alone = OptLaw(n_random=1, loco=False).fit(few)
    # two low-LR runs alone cannot tell where the loss turns up
    assert int(np.argmin(alone.predict_final(list(scheds.values())).mean)) != int(np.argmin(true))

    law = OptLaw(n_random=1, loco=False, prior=prior).fit(few)
    got = law.predict_final(list(scheds.values())).mean
    assert int(np.argmin(got)) == int(np.argmin(true))
    np.testing.assert_allclose(got, true, atol=0.01)
    assert law.params["L0"] == pytest.approx(3.1, abs=0.1)  # the floor is the new corpus's own
    assert law.fit_info["prior"]["sd"] == 0.2 and "L0" not in law.fit_info["prior"]["params"]
    law.save(tmp_path / "law.json")
    np.testing.assert_array_equal(load_law(tmp_path / "law.json").predict_final(list(scheds.values())).mean, got)


def test_a_transfer_prior_must_be_a_fitted_optlaw() -> None:
    with pytest.raises(InputError, match="fitted optlaw law, got multipower"):
        OptLaw(prior=make_law("multipower"))
    with pytest.raises(InputError, match="not fitted"):
        OptLaw(prior=OptLaw())
    fitted = _law_with(TRUE)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(InputError, match="prior sd"):
            OptLaw(prior=fitted, prior_sd=bad)
