"""Rebuild ``optuna_optlaws/data/mpl_luo2025.csv`` from the multi-power-law release.

Reads the per-size files of ``../shared/data/mpl_luo2025`` (MIT, Luo et al. 2025) and
writes one long curves file in this project's format. The release's files start after
warmup (step 2160); the warmup it documents (linear 0 -> 3e-4 over steps 0..2160) is
written as two schedule knots (lr, no loss) at steps 0 and 2160.

    python scripts/vendor_mpl_luo2025.py [SOURCE_DIR]
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"25": 25e6, "100": 100e6, "400": 400e6}
WARMUP_STEPS = 2160
PEAK_LR = 3e-4


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "mpl_luo2025"
    out_dir = ROOT / "optuna_optlaws" / "data"
    out = out_dir / "mpl_luo2025.csv"
    with out.open("w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["run_id", "step", "lr", "loss", "model_size"])
        for tag, n in SIZES.items():
            for f in sorted((src / f"csv_{tag}").glob("*.csv")):
                run_id = f"{tag}M_{f.stem}"
                with f.open() as fh:
                    rows = list(csv.DictReader(fh))
                w.writerow([run_id, 0, 0.0, "", int(n)])
                if int(rows[0]["step"]) != WARMUP_STEPS:
                    w.writerow([run_id, WARMUP_STEPS, PEAK_LR, "", int(n)])
                for row in rows:
                    w.writerow([run_id, row["step"], row["lr"], row["loss"], int(n)])
    shutil.copy(src / "LICENSE.upstream_MIT.txt", out_dir / "LICENSE.mpl_luo2025_MIT.txt")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
