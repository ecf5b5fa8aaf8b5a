"""Quick held-out check of the baseline laws on the MPL curves (Luo et al. 2025 release).

For each model size, fit each law on ``{size}_cosine_24000, {size}_constant_24000,
{size}_wsdcon_9`` and print the final-step error (predicted - observed, nats) of the six
other schedules, the mean absolute error, how many observed final losses fall in the
law's 90% interval, and the fit time (seconds, this machine). With ``--prefix F`` each
held-out run's first ``F`` of its observed steps is passed as ``observed=`` (the
pruner's use), so the prediction is conditioned on it. The full benchmark is
``optlaws bench``; this is the baselines' own sanity check.

    python scripts/check_baselines_heldout.py [CURVES.csv] [--laws multipower,momentum] [--prefix 0.5]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = str(resources.files("optuna_optlaws") / "data" / "mpl_luo2025.csv")
    parser.add_argument("curves", nargs="?", default=default, help="long curves CSV (default: vendored MPL data)")
    parser.add_argument("--laws", default="multipower,momentum")
    parser.add_argument("--sizes", default="25M,100M,400M")
    parser.add_argument("--prefix", type=float, default=0.0, help="observed fraction of each held-out run")
    args = parser.parse_args()
    curves = {c.run_id: c for c in read_curves_csv(args.curves)}
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
