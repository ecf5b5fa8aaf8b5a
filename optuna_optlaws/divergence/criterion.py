""":class:`DivergenceCriterion`: will a run with this peak LR, batch size, N, D diverge?

A thin class over :mod:`._criterion` (the maths) and :mod:`._table` (the run table): fit
on runs with known outcomes, predict ``p_diverge`` for new ones, save and load as JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from optuna_optlaws._errors import InputError
from optuna_optlaws.divergence import _criterion
from optuna_optlaws.divergence._scales import B0, D0, N0
from optuna_optlaws.divergence._table import RunTable

KIND = "divergence_criterion"
FORMAT_VERSION = 3
"""Version 3: a normal scatter (sigma, tau) instead of version 2's logistic width s; version 2
added a_BB, g_long, S_c and w to version 1's plain power law. Files of versions 1 and 2 still
load (see :meth:`DivergenceCriterion.from_dict`)."""
LOGISTIC_TO_PROBIT = 1.702
"""sigmoid(x / s) is within 0.01 of Phi(x / (1.702 s)) for every x: how a version-1/2 logistic
width s is read as a normal scale."""


class DivergenceCriterion:
    """Stability law around a critical peak LR eta_crit(N, B, D[, warmup]).

    ``p_diverge = Phi((ln eta - ln eta_crit) / sqrt(sigma^2 + tau^2))`` (Phi the standard
    normal CDF) with

        eta_crit = eta_c (N/N_0)^a_N (B/B_0)^(a_B + a_BB ln(B/B_0)) (D/D_0)^a_D
                   exp(g_long / (1 + (S_c/S)^(1/w))) (1 + W)^a_W,   S = D/B,

    i.e. a power law in model size, batch size and data, a batch-size (noise-scale) term, and
    a lower critical LR for short runs (S = D/B, optimizer steps x sequence length, below
    S_c); see :mod:`optuna_optlaws.divergence._criterion`. A run is called diverged when
    ``p_diverge >= 0.5`` (its peak LR is at or above eta_crit).

    It is fitted by interval censoring: the runs of one (N, B, D[, warmup]) group differ only in
    peak LR, so they bound that group's ln eta_crit between the highest stable and the lowest
    diverged LR; ln eta_crit scatters around the formula by ``sigma`` (ln LR) within an (N, D)
    cell and by ``tau`` between cells, and the fit maximises the likelihood of the bounds.
    """

    def __init__(self, *, ridge: float = 1e-2) -> None:
        self.ridge = float(ridge)
        self.fitted: _criterion.CriterionParams | None = None
        self.uses_warmup = False
        self.fitted_on: dict[str, Any] = {}
        self.diagnostics: dict[str, float] = {}

    # ----------------------------------------------------------------- fit / predict

    def fit(self, table: RunTable) -> DivergenceCriterion:
        """Fit on a table with a ``diverged`` column; returns self."""
        if table.diverged is None:
            raise InputError("column diverged: needed for fitting (0 = stable, 1 = diverged)")
        self.uses_warmup = table.warmup_steps is not None
        self.fitted, groups = _criterion.fit_criterion(np.log(table.peak_lr), table.model_size, table.batch_size,
                                                       table.tokens, table.warmup_steps, table.diverged,
                                                       ridge=self.ridge)
        p = self.predict_proba(table)
        wrong = np.bincount(groups.of_run, weights=(p >= 0.5) != table.diverged) > 0
        self.fitted_on = {"n_runs": len(table), "n_diverged": int(table.diverged.sum()),
                          "n_groups": int(groups.lo.size), "n_cells": int(groups.cell.max()) + 1,
                          "run_ids": list(table.run_ids)}
        self.diagnostics = {"train_f1": f1_score(table.diverged, p >= 0.5),
                            "train_groups_exact": float(np.mean(~wrong)),
                            "train_accuracy": float(np.mean((p >= 0.5) == table.diverged)),
                            "train_log_loss": float(-np.mean(np.where(table.diverged, np.log(np.clip(p, 1e-12, 1)),
                                                                      np.log(np.clip(1 - p, 1e-12, 1)))))}
        return self

    def _check_fitted(self) -> _criterion.CriterionParams:
        if self.fitted is None:
            raise RuntimeError("DivergenceCriterion is not fitted")
        return self.fitted

    def _features(self, table: RunTable) -> NDArray[np.float64]:
        fitted = self._check_fitted()
        warmup = table.warmup_steps
        if self.uses_warmup and warmup is None:
            raise InputError(
                "column warmup_steps: the criterion was fitted on a table with warmup_steps and needs them to "
                "predict (add the column, or fit on a table without it)"
            )
        return _criterion.features(table.model_size, table.batch_size, table.tokens,
                                   warmup if self.uses_warmup else None, fitted.ln_s_c, fitted.w)

    def eta_crit(self, table: RunTable) -> NDArray[np.float64]:
        """The critical peak LR of each run of ``table`` (same units as ``peak_lr``)."""
        return np.exp(_criterion.log_eta_crit(self._check_fitted(), self._features(table)))

    def predict_proba(self, table: RunTable) -> NDArray[np.float64]:
        """``p_diverge`` of each run of ``table``."""
        return _criterion.probability(np.log(table.peak_lr), self._check_fitted(), self._features(table))

    def predict(self, table: RunTable) -> NDArray[np.bool_]:
        """The 0/1 decision of each run (``p_diverge >= 0.5``)."""
        return self.predict_proba(table) >= 0.5

    # ----------------------------------------------------------------- description

    @property
    def params(self) -> dict[str, float]:
        """The fitted parameters by name: eta_c (LR units), a_N, a_B, a_BB, a_D, g_long, (a_W,)
        S_c (tokens per batch row), w (ln S), sigma and tau (ln LR)."""
        fitted = self._check_fitted()
        names = _criterion.EXPONENTS[: fitted.exponents.size]
        out = {"eta_c": math.exp(fitted.ln_eta_c)}
        out.update({n: float(v) for n, v in zip(names, fitted.exponents, strict=True)})
        out.update({"S_c": math.exp(fitted.ln_s_c), "w": fitted.w, "sigma": fitted.sigma, "tau": fitted.tau})
        return out

    def formula(self) -> str:
        """The fitted law as one line of text."""
        p = self.params
        crit = (f"eta_crit = {p['eta_c']:.4g} * (N/{N0:.0e})^{p['a_N']:.3f}"
                f" * (B/{B0:g})^({p['a_B']:.3f} {p['a_BB']:+.4f} ln(B/{B0:g})) * (D/{D0:.0e})^{p['a_D']:.3f}"
                f" * exp({p['g_long']:.3f} / (1 + ({p['S_c']:.3g} / S)^{1 / p['w']:.3g}))")
        if "a_W" in p:
            crit += f" * (1 + warmup_steps)^{p['a_W']:.3f}"
        return (f"p_diverge = Phi((ln(peak_lr) - ln(eta_crit)) / {math.hypot(p['sigma'], p['tau']):.4g}), {crit};"
                " N in parameters, B in sequences per step, D in tokens, S = D/B (optimizer steps x sequence"
                f" length); diverged when peak_lr >= eta_crit; ln eta_crit scatters by {p['sigma']:.3g} within an"
                f" (N, D) cell and {p['tau']:.3g} between cells; Phi is the standard normal CDF")

    # ----------------------------------------------------------------- JSON

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description: kind, format version, parameters, formula, data, diagnostics."""
        return {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "params": self.params,
            "uses_warmup": self.uses_warmup,
            "reference": {"N0": N0, "B0": B0, "D0": D0},
            "ridge": self.ridge,
            "formula": self.formula(),
            "fitted_on": self.fitted_on,
            "diagnostics": self.diagnostics,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "criterion") -> DivergenceCriterion:
        """Rebuild a fitted criterion from :meth:`to_dict` output (format version 1, 2 or 3).

        Versions 1 and 2 stored a logistic width ``s``; it is read as the normal scale
        ``sigma = 1.702 s`` (``tau = 0``), which moves p_diverge by less than 0.01 and leaves
        every decision (p >= 0.5, i.e. peak_lr >= eta_crit) as it was.
        """
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise InputError(f"{where}: not a divergence criterion file (kind != {KIND!r})")
        version = data.get("format_version")
        if version not in (1, 2, FORMAT_VERSION):
            raise InputError(f"{where}: format_version {version!r} is not supported (this version reads "
                             f"1 to {FORMAT_VERSION})")
        ref = data.get("reference", {"N0": N0, "B0": B0, "D0": D0})
        if not isinstance(ref, dict) or (ref.get("N0"), ref.get("B0"), ref.get("D0")) != (N0, B0, D0):
            raise InputError(f"{where}: reference scales {ref} differ from this version's")
        try:
            p = dict(data["params"])
            if version == 1:  # a plain power law: no batch curvature, no run-length term
                p.update({"a_BB": 0.0, "g_long": 0.0, "S_c": 1.0, "w": 1.0})
            if version in (1, 2):  # a logistic width
                p.update({"sigma": LOGISTIC_TO_PROBIT * float(p["s"]), "tau": 0.0})
            crit = cls(ridge=float(data.get("ridge", 1e-2)))
            crit.uses_warmup = bool(data.get("uses_warmup", False))
            names = _criterion.EXPONENTS[:5] + (("a_W",) if crit.uses_warmup else ())
            crit.fitted = _criterion.CriterionParams(
                ln_eta_c=math.log(float(p["eta_c"])), exponents=np.array([float(p[n]) for n in names]),
                sigma=float(p["sigma"]), tau=float(p["tau"]), ln_s_c=math.log(float(p["S_c"])), w=float(p["w"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{where}: malformed parameters ({exc})") from None
        if not (crit.fitted.sigma > 0 and crit.fitted.tau >= 0 and crit.fitted.w > 0):
            raise InputError(f"{where}: malformed parameters (sigma, w must be > 0 and tau >= 0)")
        crit.fitted_on = dict(data.get("fitted_on", {}))
        crit.diagnostics = dict(data.get("diagnostics", {}))
        return crit

    def save(self, path: str | Path) -> None:
        """Write the JSON file."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> DivergenceCriterion:
        """Read a JSON file written by :meth:`save`."""
        from optuna_optlaws._csvio import read_input_text

        try:
            data = json.loads(read_input_text(path, "divergence criterion file"))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not JSON (line {exc.lineno}: {exc.msg})") from None
        return cls.from_dict(data, where=str(path))


def f1_score(truth: NDArray[np.bool_], decision: NDArray[np.bool_]) -> float:
    """F1 of the 'diverged' class (1.0 when there is nothing to find and nothing was flagged)."""
    tp = int(np.sum(truth & decision))
    fp = int(np.sum(~truth & decision))
    fn = int(np.sum(truth & ~decision))
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
