"""Quick held-out check of the baseline laws on the MPL curves (Luo et al. 2025 release).

For each model size, fit each law on ``{size}_cosine_24000, {size}_constant_24000,
{size}_wsdcon_9`` and print the final-step error (predicted - observed, nats) of the six
other schedules, the mean absolute error, how many observed final losses fall in the
law's 90% interval, and the fit time (seconds, this machine). With ``--prefix F`` each
held-out run's first ``F`` of its observed steps is passed as ``observed=`` (the
pruner's use), so the prediction is conditioned on it. The full benchmark is
``optlaws bench``; this is the baselines' own sanity check.

    python scripts/check_baselines_heldout.py [CURVES.csv] [--laws multipower,momentum] [--prefix 0.5]
    python scripts/check_baselines_heldout.py --official

``--official`` instead evaluates the multi-power parameters the authors' release code
publishes (``src/config.py`` of github.com/Morphorxz/dlt25-final, a copy of the release)
on the same split: their Huber cost on the training runs and their held-out final errors,
with this package's formula (paper: warmup only through ``S_W``) and with the release
code's variant (LR increases of the warmup also summed into LD), against our own fit.
"""

from __future__ import annotations

import argparse
import time
from importlib import resources

import numpy as np

from optuna_optlaws.curves import read_curves_csv
from optuna_optlaws.laws import make_law

TRAIN = ("cosine_24000", "constant_24000", "wsdcon_9")
HELD = ("constant_72000", "cosine_72000", "wsd_20000_24000", "wsdld_20000_24000", "wsdcon_3", "wsdcon_18")


OFFICIAL_MPL = {  # [L0, A, alpha, B, C, beta, gamma] from the release code's src/config.py
    "25M": [3.04045406, 0.52468604, 0.50786857, 363.78751622, 2.06560812, 0.58279013, 0.64142257],
    "100M": [2.6514477, 0.60115152, 0.45295811, 437.9464276, 2.13245612, 0.59785199, 0.65523644],
    "400M": [2.37474466, 0.65421216, 0.42878731, 523.42464371, 2.02462735, 0.59350493, 0.63472457],
}


def _release_variant(theta: np.ndarray, eta: np.ndarray, s1: np.ndarray, t: int) -> float:
    """The release code's multi-power loss at step ``t``: LD summed over k = 1..t, warmup included."""
    L0, A, alpha, B, C, beta, gamma = theta
    k = np.arange(1, t + 1)
    x = np.maximum(eta[k], 1e-300) ** (-gamma) * (s1[t] - s1[k - 1])
    ld = np.sum((eta[k - 1] - eta[k]) * (1 - (C * x + 1) ** (-beta)))
    return float(L0 + A * s1[t] ** (-alpha) - B * ld)


def official(curves: dict, sizes: list[str]) -> None:
    for size in sizes:
        _official_size(curves, size)


def _official_size(curves: dict, size: str) -> None:
    from scipy.special import huber

    from optuna_optlaws.laws._features import features_for
    from optuna_optlaws.laws._fitting import Posterior
    from optuna_optlaws.laws.multipower import MultiPowerLaw

    train = [curves[f"{size}_{s}"] for s in TRAIN]
    ours = MultiPowerLaw()
    ours.loco = False
    ours.fit(train)
    theta = np.array(OFFICIAL_MPL[size])
    off = MultiPowerLaw()
    off.posterior = Posterior(off.space, off.space.to_internal(theta), np.eye(7), 0.0)

    def cost(fn: object) -> float:
        tot = 0.0
        for c in train:
            f = features_for(c.schedule, c.steps)
            pred = np.array([fn(f, int(t)) for t in c.steps])  # type: ignore[operator]
            tot += float(huber(1e-3, np.log(c.losses) - np.log(pred)).sum())
        return tot

    def ours_at(f: object, t: int) -> float:
        return float(ours._predict_loss(ours.posterior.theta, f, np.array([t]))[0])  # type: ignore[union-attr,arg-type]

    def off_at(f: object, t: int) -> float:
        return float(off._predict_loss(theta, f, np.array([t]))[0])  # type: ignore[arg-type]

    def rel_at(f: object, t: int) -> float:
        return _release_variant(theta, f.eta, f.s1, t)  # type: ignore[attr-defined]

    print(f"{size}: Huber cost on the training runs: our fit {cost(ours_at):.3e}, published params "
          f"{cost(off_at):.3e} (paper formula) / {cost(rel_at):.3e} (release variant)")
    for h in HELD:
        c = curves[f"{size}_{h}"]
        f = features_for(c.schedule, c.steps[-1:])
        t = c.last_step
        print(f"  {h:18s} our fit {ours_at(f, t) - c.final_loss:+.4f}  published, paper formula "
              f"{off_at(f, t) - c.final_loss:+.4f}  published, release variant {rel_at(f, t) - c.final_loss:+.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = str(resources.files("optuna_optlaws") / "data" / "mpl_luo2025.csv")
    parser.add_argument("curves", nargs="?", default=default, help="long curves CSV (default: vendored MPL data)")
    parser.add_argument("--laws", default="multipower,momentum")
    parser.add_argument("--sizes", default="25M,100M,400M")
    parser.add_argument("--prefix", type=float, default=0.0, help="observed fraction of each held-out run")
    parser.add_argument("--official", action="store_true", help="evaluate the authors' published MPL parameters")
    args = parser.parse_args()
    curves = {c.run_id: c for c in read_curves_csv(args.curves)}
    if args.official:
        official(curves, args.sizes.split(","))
        return
    print(f"{'law':10s} {'size':5s} {'fit_s':>6s} " + " ".join(f"{h:>17s}" for h in HELD) + "  mean|err|  in90%")
    for name in args.laws.split(","):
        for size in args.sizes.split(","):
            train = [curves[f"{size}_{s}"] for s in TRAIN]
            t0 = time.perf_counter()
            law = make_law(name).fit(train)
            dt = time.perf_counter() - t0
            errs, inside = [], 0
            for h in HELD:
                c = curves[f"{size}_{h}"]
                observed = c.prefix(int(args.prefix * c.last_step)) if args.prefix > 0 else None
                p = law.predict(c.schedule, [c.last_step], model_size=c.model_size, observed=observed)
                errs.append(float(p.mean[0] - c.final_loss))
                inside += int(p.lo[0] <= c.final_loss <= p.hi[0])
            print(f"{name:10s} {size:5s} {dt:6.1f} " + " ".join(f"{e:+17.4f}" for e in errs)
                  + f"  {np.mean(np.abs(errs)):9.4f}  {inside}/{len(HELD)}")


if __name__ == "__main__":
    main()
