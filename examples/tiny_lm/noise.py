"""How noisy is the tiny LM's final loss? Retrain nearby schedules and other seeds.

For each peak LR, trains a cosine schedule (warmup 30 steps, final LR = peak / 10) with
training seeds 0, 1, 2, and with seed 0 and warmup 32 and 34 steps (a change that should
barely matter). Writes ``studies/tiny_lm/noise.md`` (written by this script) with the
final validation losses and their spreads: differences between trials smaller than these
are not evidence.

Usage (repository root; ~10 runs, ~3-10 minutes)::

    nice -n 10 python examples/tiny_lm/noise.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

from optuna_optlaws import Schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tinylm import TinyLMConfig, train

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--peaks", default="3e-3,1e-2", help="comma-separated peak LRs")
    ap.add_argument("--out", type=Path, default=ROOT / "studies" / "tiny_lm" / "noise.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = TinyLMConfig()
    lines = [
        "# Noise of the tiny LM's final loss (generated)",
        "",
        "Written by `examples/tiny_lm/noise.py`; do not edit by hand.",
        f"Command: `{' '.join(['python examples/tiny_lm/noise.py', *argv])}`",
        "",
        f"Cosine schedules of {args.steps} steps, final LR = peak/10; final validation loss (nats/byte).",
        "",
        "| peak lr | seed 0, warmup 30 | seeds 1, 2 (warmup 30) | warmup 32, 34 (seed 0) | seed std "
        "| max-min (warmup) |",
        "|---|---|---|---|---|---|",
    ]
    for peak in (float(p) for p in args.peaks.split(",")):
        def final(warmup: int, seed: int, peak: float = peak) -> float:
            res = train(Schedule.cosine(peak, args.steps, warmup, final_lr=peak / 10), replace(cfg, seed=seed))
            assert not isinstance(res, tuple)
            print(f"peak {peak:g} warmup {warmup} seed {seed}: {res.final_loss:.4f}", flush=True)
            return res.final_loss

        base = final(30, 0)
        seeds = [final(30, s) for s in (1, 2)]
        warm = [final(w, 0) for w in (32, 34)]
        sd = statistics.stdev([base, *seeds])
        spread = max(base, *warm) - min(base, *warm)
        lines.append(
            f"| {peak:g} | {base:.4f} | {', '.join(f'{v:.4f}' for v in seeds)} | "
            f"{', '.join(f'{v:.4f}' for v in warm)} | {sd:.4f} | {spread:.4f} |"
        )
    lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
