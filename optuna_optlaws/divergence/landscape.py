""":class:`LandscapeLaw`: final loss vs (peak LR, batch size, N, D), to choose peak LR and batch.

A thin class over :mod:`._landscape` (the law and its robust fit). Fit it on the final
losses of non-diverged runs over several (N, D) cells; it then predicts the loss of any
(peak LR, batch size) at a new (N, D) and names the best one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from optuna_optlaws._errors import InputError
from optuna_optlaws.divergence import _landscape
from optuna_optlaws.divergence._scales import D0, N0

KIND = "landscape_law"
FORMAT_VERSION = 1
_LEVEL_NAMES = ("E", "A", "alpha", "C", "beta")


def _arr(x: ArrayLike) -> NDArray[np.float64]:
    return np.atleast_1d(np.asarray(x, dtype=np.float64))


class LandscapeLaw:
    """U-shaped law of final loss in ln(peak LR) and ln(batch size), optimum a power law in N, D.

    See :mod:`optuna_optlaws.divergence._landscape` for the formula. ``f_scale`` is the
    scale (relative loss) of the soft-L1 robust fit. ``window`` keeps, in each (N, D) cell,
    only the runs whose loss is within ``(1 + window)`` of the cell's best run: the law is a
    model of the basin around the optimum, and runs far up its walls (near the stability
    edge, or at a hopeless batch size) would otherwise set its shape. None keeps every run.
    """

    def __init__(self, *, f_scale: float = 0.01, window: float | None = 0.03) -> None:
        self.f_scale = float(f_scale)
        self.window = None if window is None else float(window)
        self.theta: NDArray[np.float64] | None = None
        self.phi: NDArray[np.float64] | None = None
        self.cells: list[tuple[float, float, float]] = []  # (N, D, fitted optimum loss)

    def fit(self, peak_lr: ArrayLike, batch_size: ArrayLike, model_size: ArrayLike, tokens: ArrayLike,
            loss: ArrayLike) -> LandscapeLaw:
        """Fit on runs' final losses (nats); pass non-diverged runs only. Returns self."""
        lr, bs, n, d, y = (_arr(v) for v in (peak_lr, batch_size, model_size, tokens, loss))
        if not (lr.size == bs.size == n.size == d.size == y.size) or lr.size == 0:
            raise InputError("LandscapeLaw.fit: peak_lr, batch_size, model_size, tokens, loss must be equal, non-empty")
        ok = np.isfinite(y) & (y > 0) & (lr > 0) & (bs > 0) & (n > 0) & (d > 0)
        if not ok.all():
            raise InputError(f"LandscapeLaw.fit: {int((~ok).sum())} runs with non-positive or non-finite values")
        keys, cell = np.unique(np.column_stack([n, d]), axis=0, return_inverse=True)
        cell = cell.ravel().astype(np.int64)
        if self.window is not None:
            best = np.full(len(keys), np.inf)
            np.minimum.at(best, cell, y)
            keep = y <= (1.0 + self.window) * best[cell]
            lr, bs, n, d, y, cell = lr[keep], bs[keep], n[keep], d[keep], y[keep], cell[keep]
        self.theta, log_levels, _ = _landscape.fit_shape(lr, bs, n, d, y, cell, f_scale=self.f_scale)
        levels = np.exp(log_levels)
        self.cells = [(float(k[0]), float(k[1]), float(v)) for k, v in zip(keys, levels, strict=True)]
        self.phi = _landscape.fit_level(keys[:, 0], keys[:, 1], levels) if len(keys) >= 3 else None
        return self

    def _theta(self) -> NDArray[np.float64]:
        if self.theta is None:
            raise RuntimeError("LandscapeLaw is not fitted")
        return self.theta

    def excess(self, peak_lr: ArrayLike, batch_size: ArrayLike, model_size: ArrayLike,
               tokens: ArrayLike) -> NDArray[np.float64]:
        """Predicted relative excess loss over the (N, D) optimum, ``L / L_opt - 1`` (>= 0)."""
        lr, bs, n, d = np.broadcast_arrays(*(_arr(v) for v in (peak_lr, batch_size, model_size, tokens)))
        return np.expm1(_landscape.shape(self._theta(), lr, bs, n, d))

    def level(self, model_size: ArrayLike, tokens: ArrayLike) -> NDArray[np.float64]:
        """Predicted loss (nats) at the optimum of (N, D): the fitted level of a training cell, else the
        level law."""
        n, d = np.broadcast_arrays(_arr(model_size), _arr(tokens))
        out = np.empty(n.shape)
        for i, (ni, di) in enumerate(zip(n, d, strict=True)):
            seen = [lv for (cn, cd, lv) in self.cells if math.isclose(cn, ni) and math.isclose(cd, di)]
            if seen:
                out[i] = seen[0]
            elif self.phi is not None:
                out[i] = float(_landscape.level(self.phi, np.array([ni]), np.array([di]))[0])
            else:
                raise InputError(f"LandscapeLaw: fitted on fewer than 3 (N, D) cells, cannot predict the level at "
                                 f"N={ni:g}, D={di:g}")
        return out

    def predict(self, peak_lr: ArrayLike, batch_size: ArrayLike, model_size: ArrayLike,
                tokens: ArrayLike) -> NDArray[np.float64]:
        """Predicted final loss (nats) of each run."""
        lr, bs, n, d = np.broadcast_arrays(*(_arr(v) for v in (peak_lr, batch_size, model_size, tokens)))
        return self.level(n, d) * (1.0 + self.excess(lr, bs, n, d))

    def optimum(self, model_size: float, tokens: float) -> tuple[float, float]:
        """The law's best (peak LR, batch size in sequences) at N parameters and D tokens."""
        return _landscape.optimum(self._theta(), float(model_size), float(tokens))

    @property
    def params(self) -> dict[str, float]:
        """Interpretable parameters: eta_0, a_N, a_D, kappa, B_0, b_N, b_D, h_eta, p, q, h_B, p_B, q_B
        (and the level law E, A, alpha, C, beta when fitted)."""
        th = self._theta()
        out: dict[str, float] = {}
        for name, v in zip(_landscape.SHAPE_NAMES, th, strict=True):
            if name.startswith("ln_"):
                out[name[3:]] = math.exp(float(v))
            else:
                out[name] = float(v)
        if self.phi is not None:
            out.update({k: math.exp(float(v)) for k, v in zip(_LEVEL_NAMES, self.phi, strict=True)})
        return out

    def formula(self) -> str:
        """The fitted law as text."""
        p = self.params
        text = (f"eta_opt = {p['eta0']:.3g} (N/{N0:.0e})^{p['a_N']:.3f} (D/{D0:.0e})^{p['a_D']:.3f} "
                f"(B/B_opt)^{p['kappa']:.3f}; B_opt = {p['B0']:.4g} (N/{N0:.0e})^{p['b_N']:.3f} "
                f"(D/{D0:.0e})^{p['b_D']:.3f} sequences; log L = log L_opt(N, D) + {p['h_eta']:.3g} "
                f"g(ln eta/eta_opt; p={p['p']:.3g}, q={p['q']:.3g}) + {p['h_B']:.3g} g(ln B/B_opt; "
                f"p={p['p_B']:.3g}, q={p['q_B']:.3g}), g(x;p,q) = ((q e^(px) + p e^(-qx))/(p+q) - 1)/(pq)")
        if "E" in p:
            text += (f"; L_opt = {p['E']:.4g} + {p['A']:.4g} (N/{N0:.0e})^-{p['alpha']:.3f} + "
                     f"{p['C']:.4g} (D/{D0:.0e})^-{p['beta']:.3f} nats")
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description of the fitted law."""
        return {"kind": KIND, "format_version": FORMAT_VERSION, "params": self.params, "formula": self.formula(),
                "theta": [float(v) for v in self._theta()],
                "phi": None if self.phi is None else [float(v) for v in self.phi],
                "cells": [list(c) for c in self.cells], "f_scale": self.f_scale, "window": self.window}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LandscapeLaw:
        """Rebuild from :meth:`to_dict` output."""
        if data.get("kind") != KIND or data.get("format_version") != FORMAT_VERSION:
            raise InputError(f"not a {KIND} of format version {FORMAT_VERSION}")
        window = data.get("window")
        law = cls(f_scale=float(data.get("f_scale", 0.01)), window=None if window is None else float(window))
        law.theta = np.asarray(data["theta"], dtype=np.float64)
        law.phi = None if data.get("phi") is None else np.asarray(data["phi"], dtype=np.float64)
        law.cells = [(float(a), float(b), float(c)) for a, b, c in data.get("cells", [])]
        return law
