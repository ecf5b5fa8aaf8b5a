"""Screenshot the Opt-Law figures in a real optuna-dashboard, for people to see what they get.

Replays the vendored MPL runs of one model size (``optuna_optlaws/data/mpl_luo2025.csv``)
as trials of one SQLite study under :class:`~optuna_optlaws.OptLawsPruner`, publishes the
figures with :func:`~optuna_optlaws.dashboard.publish_dashboard`, starts the real
``optuna-dashboard`` server on a loopback port, opens it in headless Chromium and saves
screenshots of the study page (the figures) and of the trial table (sortable
``optlaws_pred_final``) into ``--out`` (default ``studies/dashboard``), with a README::

    python -m optuna_optlaws.benchmarks.dashboard_screenshot [--law optlaw] [--model-size 4e8]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

DEFAULT_OUT = Path("studies/dashboard")


def build_study(storage_url: str, law: str, model_size: float) -> tuple[int, str, float]:
    """Replay the MPL runs of ``model_size`` into a new study under OptLawsPruner(law=law),
    best final loss first (a display demo: the pruner gets its frontier early; the pruner
    benchmark over random orders is ``optlaws replay``), and publish the figures; returns
    (study id, study name, seconds)."""
    import optuna

    from optuna_optlaws import OptLawsPruner
    from optuna_optlaws.benchmarks.replay import group_curves, replay_order
    from optuna_optlaws.curves import read_curves_csv
    from optuna_optlaws.dashboard import publish_dashboard

    path = resources.files("optuna_optlaws") / "data" / "mpl_luo2025.csv"
    curves = [c for c in read_curves_csv(str(path)) if c.model_size == model_size]
    if not curves:
        raise SystemExit(f"no MPL run has model_size {model_size:g}")
    group = group_curves(curves, ["model_size"])[0]
    name = f"mpl-{model_size / 1e6:g}M-{law}"
    start = time.perf_counter()
    order = sorted(range(len(group.curves)), key=lambda i: group.curves[i].final_loss)
    replay_order(group, order, OptLawsPruner(law=law), storage=storage_url, study_name=name, run_param="run")
    study = optuna.load_study(study_name=name, storage=storage_url)
    publish_dashboard(study)
    return study._study_id, name, time.perf_counter() - start


def screenshot(storage_url: str, study_id: int, out: Path) -> list[Path]:
    """Open the study in optuna-dashboard (headless Chromium) and save two screenshots."""
    from optuna_optlaws._dashboard._browser import (
        dashboard_server,
        headless_chromium,
        open_and_wait,
        save_screenshot,
        study_url,
    )
    from optuna_optlaws._dashboard._figures import CURVES_TITLE, FIT_TITLE, FRONTIER_TITLE, PARAMS_TITLE

    shots = []
    with dashboard_server(storage_url) as base, headless_chromium(width=1500, height=2900) as driver:
        url = study_url(base, study_id)
        open_and_wait(driver, url, [CURVES_TITLE, FRONTIER_TITLE, FIT_TITLE, PARAMS_TITLE], min_plots=6)
        time.sleep(1.0)  # let plotly finish its last layout pass
        shots.append(save_screenshot(driver, out / "study_page.png"))
        open_and_wait(driver, url + "/smartSelection", ["optlaws_pred_final"])
        time.sleep(1.0)
        shots.append(save_screenshot(driver, out / "trial_table.png"))
    return shots


def main(argv: Sequence[str] | None = None) -> int:
    """Build the study, take the screenshots, write the README; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--law", default="optlaw", help="law of the OptLawsPruner (default optlaw)")
    parser.add_argument("--model-size", type=float, default=4e8, help="MPL model size to replay (2.5e7, 1e8, 4e8)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the PNGs and README.md")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="optlaws-dash-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'study.db'}"
        study_id, name, seconds = build_study(url, args.law, args.model_size)
        shots = screenshot(url, study_id, args.out)
    command = "python -m optuna_optlaws.benchmarks.dashboard_screenshot " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    (args.out / "README.md").write_text(
        f"""# Opt-Law figures in optuna-dashboard

Written by the command below; do not edit by hand.

```
{command.strip()}
```

The {args.model_size / 1e6:g}M runs of the vendored MPL curves (Luo et al. 2025) replayed as trials of
the study `{name}` under `OptLawsPruner(law={args.law!r})` ({seconds:.1f} s to replay and publish), in
order of final loss, best first: a demo of the display, where the pruner has its frontier early; the
pruner benchmark over random trial orders is `optlaws replay` (see `studies/replay/`). The run id is
recorded as the trial parameter `run`. The figures are written by
`optuna_optlaws.dashboard.publish_dashboard`, then shown by the real `optuna-dashboard` server in
headless Chromium.

- `study_page.png`: the study page, with the four Opt-Law cards (observed vs predicted curves with the
  90% band, the frontier with predicted finals and pruned trials, fit residuals, fitted parameters).
- `trial_table.png`: the trial table, with the pruner's numeric user attributes
  (`optlaws_pred_final`, `optlaws_pred_lo`, `optlaws_pred_hi`) as sortable columns.
"""
    )
    for shot in shots:
        print(f"wrote {shot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
