"""The plotly figures the dashboard shows: curves with the law's band, the frontier, the fit.

Each builder takes the study's trials (:func:`~optuna_optlaws._dashboard._trials.trial_curves`)
and an optional fitted law, and returns a ``plotly.graph_objects.Figure``; plotly is
imported inside the builders. Losses are in nats, steps are optimizer steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from optuna_optlaws._dashboard._trials import TrialCurve
from optuna_optlaws._errors import InputError

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from optuna_optlaws.laws import Law

CURVES_TITLE = "Opt-Law: observed vs predicted loss curves (90% band)"
FRONTIER_TITLE = "Opt-Law: frontier and predicted final loss per trial"
FIT_TITLE = "Opt-Law: fit residuals"
PARAMS_TITLE = "Opt-Law: fitted parameters"

_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)
_POINTS = 160
"""Points per predicted curve (and at most per observed curve) in a figure."""


def _color(i: int) -> str:
    return _PALETTE[i % len(_PALETTE)]


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[k : k + 2], 16) for k in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _r(values: Any) -> list[float | None]:
    """Values as a JSON-short list: 6 significant digits (1e-5 nats at losses of ~3), None
    for non-finite values; the figures are stored in the study in 2 kB chunks."""
    return [float(f"{float(v):.6g}") if math.isfinite(float(v)) else None for v in np.asarray(values).ravel()]


def _thin(n: int, keep: int = _POINTS) -> NDArray[np.int64]:
    """Indices of at most ``keep`` evenly spread points of ``n``, the last one included."""
    if n <= keep:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, keep).round().astype(np.int64))


@dataclass(frozen=True)
class _CurvePrediction:
    steps: NDArray[np.int64]
    mean: NDArray[np.float64]
    lo: NDArray[np.float64]
    hi: NDArray[np.float64]


def predict_trial(law: Law, trial: TrialCurve) -> _CurvePrediction | None:
    """The law's prediction for a trial's whole schedule (from its first report, or 5% of
    the horizon, to its last step); None when the law cannot predict it."""
    c = trial.curve
    total = c.schedule.total_steps
    start = int(c.steps[0]) if c.steps.size else max(int(0.05 * total), 1)
    start = min(max(start, 1), total - 1)
    steps = np.unique(np.linspace(start, total - 1, _POINTS).round().astype(np.int64))
    try:
        p = law.predict(c.schedule, steps, model_size=c.model_size, tokens_per_step=c.tokens_per_step)
    except (InputError, ValueError, FloatingPointError):
        return None
    return _CurvePrediction(steps, np.asarray(p.mean), np.asarray(p.lo), np.asarray(p.hi))


def curves_figure(trials: Sequence[TrialCurve], law: Law | None, note: str = "") -> go.Figure:
    """Observed loss of every trial (solid) and the law's predicted curve (dashed) with its
    central 90% band (shaded), one colour per trial."""
    import plotly.graph_objects as go

    fig = go.Figure()
    observed: list[float] = []
    for i, t in enumerate(trials):
        color = _color(i)
        group = f"trial{t.number}"
        pred = predict_trial(law, t) if law is not None else None
        if pred is not None:
            x = pred.steps.tolist()
            fig.add_trace(go.Scatter(
                x=x + x[::-1], y=_r(pred.hi) + _r(pred.lo)[::-1], fill="toself",
                fillcolor=_rgba(color, 0.15), line={"width": 0}, hoverinfo="skip",
                legendgroup=group, showlegend=False, name=f"{t.label} 90% band",
            ))
            fig.add_trace(go.Scatter(
                x=x, y=_r(pred.mean), mode="lines", line={"color": color, "dash": "dash"},
                legendgroup=group, showlegend=False, name=f"{t.label} predicted",
                hovertemplate="step %{x}<br>predicted %{y:.4f} nats<extra>" + t.label + "</extra>",
            ))
        c = t.curve
        if c.steps.size:
            keep = _thin(c.steps.size)
            ys = c.losses[keep]
            observed.extend(ys[np.isfinite(ys)].tolist())
            state = "" if t.state == "COMPLETE" else f" ({t.state.lower()})"
            fig.add_trace(go.Scatter(
                x=c.steps[keep].tolist(), y=_r(ys),
                mode="lines", line={"color": color}, legendgroup=group, name=t.label + state,
                hovertemplate="step %{x}<br>observed %{y:.4f} nats<extra>" + t.label + "</extra>",
            ))
    title = CURVES_TITLE + (f"<br><sup>{note}</sup>" if note else "")
    layout: dict[str, Any] = {
        "title": {"text": title},
        "xaxis": {"title": {"text": "optimizer step"}},
        "yaxis": {"title": {"text": "loss (nats)"}},
        "legend": {"title": {"text": "solid: observed<br>dashed: law"}},
        "margin": {"l": 60, "r": 20, "t": 70, "b": 50},
    }
    if observed:
        lo, hi = float(np.min(observed)), float(np.percentile(observed, 98))
        pad = 0.1 * max(hi - lo, 1e-3)
        layout["yaxis"]["range"] = [lo - pad, hi + pad]
    fig.update_layout(**layout)
    return fig


def predicted_final(law: Law | None, trial: TrialCurve) -> tuple[float, float, float] | None:
    """The trial's predicted final loss ``(mean, lo, hi)`` (nats): what the pruner recorded,
    else the law's prediction from the schedule alone."""
    if trial.pred_final is not None:
        return trial.pred_final
    if law is None:
        return None
    c = trial.curve
    try:
        p = law.predict(c.schedule, [c.schedule.total_steps - 1], model_size=c.model_size,
                        tokens_per_step=c.tokens_per_step)
    except (InputError, ValueError, FloatingPointError):
        return None
    return float(p.mean[0]), float(p.lo[0]), float(p.hi[0])


def frontier_figure(trials: Sequence[TrialCurve], law: Law | None) -> go.Figure:
    """Per trial: its final loss (complete) or last reported loss (pruned, marked with the
    pruner's reason), its predicted final loss with the 90% interval, and the frontier:
    the best final loss reached by the trials so far."""
    import plotly.graph_objects as go

    fig = go.Figure()
    numbers = [t.number for t in trials]
    preds = [predicted_final(law, t) for t in trials]
    have = [i for i, p in enumerate(preds) if p is not None]
    if have:
        mean = np.array([preds[i][0] for i in have])  # type: ignore[index]
        lo = np.array([preds[i][1] for i in have])  # type: ignore[index]
        hi = np.array([preds[i][2] for i in have])  # type: ignore[index]
        fig.add_trace(go.Scatter(
            x=[numbers[i] for i in have], y=_r(mean), mode="markers", name="predicted final (90% interval)",
            marker={"symbol": "diamond-open", "size": 9, "color": "#1f77b4"},
            error_y={"type": "data", "symmetric": False, "array": _r(hi - mean),
                     "arrayminus": _r(mean - lo), "color": "#1f77b4"},
            hovertemplate="trial %{x}<br>predicted final %{y:.4f} nats<extra></extra>",
        ))
    done = [t for t in trials if t.state == "COMPLETE" and t.value is not None]
    if done:
        fig.add_trace(go.Scatter(
            x=[t.number for t in done], y=[t.value for t in done], mode="markers", name="final loss (complete)",
            marker={"symbol": "circle", "size": 10, "color": "#2ca02c"},
            hovertemplate="trial %{x}<br>final %{y:.4f} nats<extra></extra>",
        ))
        best, frontier = math.inf, []
        for n in numbers:
            for t in done:
                if t.number == n:
                    best = min(best, float(t.value))  # type: ignore[arg-type]
            frontier.append(best if math.isfinite(best) else None)
        fig.add_trace(go.Scatter(
            x=numbers, y=frontier, mode="lines", line={"shape": "hv", "color": "#2ca02c", "dash": "dot"},
            name=f"frontier (best final {best:.4f})", hoverinfo="skip",
        ))
    pruned = [t for t in trials if t.state == "PRUNED" and math.isfinite(t.last_loss)]
    if pruned:
        fig.add_trace(go.Scatter(
            x=[t.number for t in pruned], y=[t.last_loss for t in pruned], mode="markers",
            name="pruned (last reported loss)", marker={"symbol": "x", "size": 11, "color": "#d62728"},
            text=[f"pruned at step {t.curve.last_step}: {t.prune_reason or 'no reason recorded'}" for t in pruned],
            hovertemplate="trial %{x}<br>last loss %{y:.4f} nats<br>%{text}<extra></extra>",
        ))
    fig.update_layout(
        title={"text": FRONTIER_TITLE},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "left", "x": 0.0},
        margin={"l": 60, "r": 20, "t": 90, "b": 50},
        xaxis={"title": {"text": "trial number"}},
        yaxis={"title": {"text": "loss (nats)"}},
    )
    return fig


def _residuals(law: Law, t: TrialCurve) -> tuple[NDArray[np.int64], NDArray[np.float64], float] | None:
    c = t.curve
    ok = c.finite & (c.steps >= 1)
    if not ok.any():
        return None
    steps = c.steps[ok]
    try:
        p = law.predict(c.schedule, steps, model_size=c.model_size, tokens_per_step=c.tokens_per_step)
    except (InputError, ValueError, FloatingPointError):
        return None
    y = c.losses[ok]
    inside = float(np.mean((y >= p.lo) & (y <= p.hi)))
    return steps, y - np.asarray(p.mean), inside


def fit_figure(trials: Sequence[TrialCurve], law: Law | None, note: str = "") -> go.Figure:
    """The law's fit: residuals (observed minus predicted, nats) along each trial's reports."""
    import plotly.graph_objects as go

    fig = go.Figure()
    if law is not None:
        for i, t in enumerate(trials):
            res = _residuals(law, t)
            if res is None:
                continue
            steps, r, _ = res
            keep = _thin(steps.size)
            fig.add_trace(go.Scatter(
                x=steps[keep].tolist(), y=_r(r[keep]), mode="lines", line={"color": _color(i)},
                name=t.label, hovertemplate="step %{x}<br>residual %{y:.4f} nats<extra>" + t.label + "</extra>",
            ))
    title = FIT_TITLE + f"<br><sup>{note or ('law ' + repr(law.name) if law is not None else 'no law')}</sup>"
    fig.update_layout(
        title={"text": title},
        xaxis={"title": {"text": "optimizer step"}},
        yaxis={"title": {"text": "observed - predicted (nats)"}, "zeroline": True, "zerolinecolor": "#444"},
    )
    return fig


def params_figure(trials: Sequence[TrialCurve], law: Law | None, note: str = "") -> go.Figure:
    """A table of the fit: law, data, RMSE, share of reported losses inside the 90% band,
    fit time, and each parameter with its standard error (and the bound it sits on, if
    any: the fit wanted past it)."""
    import plotly.graph_objects as go

    rows: list[tuple[str, str]] = []
    if law is not None:
        inside_all: list[float] = []
        weights: list[int] = []
        for t in trials:
            res = _residuals(law, t)
            if res is not None:
                inside_all.append(res[2])
                weights.append(res[0].size)
        info = law.fit_info
        rows.append(("law", law.name))
        rows.append(("fitted on", f"{len(law.fitted_on)} runs, {info.get('n_obs', '?')} points"))
        if "rmse_log_loss" in info:
            rows.append(("RMSE (log loss)", f"{float(info['rmse_log_loss']):.2e}"))
        if weights:
            coverage = float(np.average(inside_all, weights=weights))
            rows.append(("reported losses inside the 90% band", f"{100 * coverage:.0f}%"))
        if "seconds" in info:
            rows.append(("fit time", f"{float(info['seconds']):.2f} s"))
        stds = info.get("param_std", {}) or {}
        params = info.get("params", {}) or {}
        at_bounds = info.get("at_bounds", {}) or {}
        for k, v in params.items():
            sd = stds.get(k)
            text = f"{float(v):.4g}" + (f" ± {float(sd):.2g}" if isinstance(sd, (int, float)) else "")
            where = at_bounds.get(k)
            if isinstance(where, dict) and isinstance(where.get("bound"), (int, float)):
                text += f" (on its {where.get('side')} bound {float(where['bound']):g})"
            rows.append((f"parameter {k}", text))
    else:
        rows.append(("law", "none fitted"))
    if note:
        rows.append(("source", note))
    fig = go.Figure(go.Table(
        header={"values": ["<b>fit</b>", "<b>value</b>"], "align": "left"},
        cells={"values": [[r[0] for r in rows], [r[1] for r in rows]], "align": "left"},
        columnwidth=[0.5, 0.5],
    ))
    fig.update_layout(title={"text": PARAMS_TITLE}, margin={"l": 20, "r": 20, "t": 60, "b": 20})
    return fig
