"""Run-to-run noise of a final loss, measured on runs that repeat a schedule.

Train one LR schedule twice (another seed, another data order) and the two final losses
differ: on the tiny LM by 0.01-0.02 nats (studies/tiny_lm/noise.md). No law of the
schedule can predict that part, so :class:`~optuna_optlaws.OptLawsPruner` uses it as a
floor on its interval's spread (``final_noise``). This module measures it where runs
repeat a schedule exactly (the same LR at every step, model size, tokens per step and,
for a continued run, the same parent and resume step): the pooled standard deviation of
their final losses around each repeated schedule's mean (the "pure error" of a
regression with replicates), with ``sum(runs - 1)`` degrees of freedom.

A set of repeats whose final losses are all exactly equal says the runs were not
independent (the same seed on a deterministic machine): it is reported and left out, as
it carries no information about seed noise.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import numpy as np

from optuna_optlaws.schedules import Schedule


@dataclass(frozen=True)
class RepeatNoise:
    """The pooled run-to-run standard deviation of a final loss (nats), from ``sets`` of
    runs that repeat a schedule (run labels, each set's in input order)."""

    sd: float
    """Pooled standard deviation (nats): ``sqrt(sum of squared deviations from each set's
    mean / df)``; NaN when ``df`` is 0."""
    df: int
    """Degrees of freedom: the number of runs in ``sets`` minus the number of sets (0: no
    schedule was repeated by runs that differ)."""
    sets: tuple[tuple[str, ...], ...]
    """The runs that repeat a schedule and differ in their final loss, one tuple per schedule."""
    identical: tuple[tuple[str, ...], ...] = ()
    """Repeats whose final losses are all exactly equal (not independent runs): left out."""

    @property
    def runs(self) -> int:
        """Runs behind the estimate."""
        return sum(len(s) for s in self.sets)

    def interval(self, level: float = 0.9) -> tuple[float, float]:
        """Two-sided ``level`` confidence interval of the standard deviation (nats), from the
        chi-square distribution of ``df * sd**2 / sigma**2`` (normal noise); NaNs when
        ``df`` is 0."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"level={level!r} must lie in (0, 1)")
        if self.df == 0:
            return math.nan, math.nan
        from scipy import stats  # lazy: scipy.stats costs a third of a second to import

        tail = 0.5 * (1.0 - level)
        ss = self.df * self.sd**2
        return (
            math.sqrt(ss / float(stats.chi2.ppf(1.0 - tail, self.df))),
            math.sqrt(ss / float(stats.chi2.ppf(tail, self.df))),
        )


def repeat_key(
    schedule: Schedule,
    model_size: float | None,
    tokens_per_step: float | None,
    resume_from: str | None = None,
    resume_step: int | None = None,
) -> Hashable:
    """What runs that repeat one schedule share (see the module docstring)."""
    return (schedule.to_json(), model_size, tokens_per_step, resume_from, resume_step)


def repeat_noise(runs: Iterable[tuple[str, Hashable, float]]) -> RepeatNoise:
    """The pooled run-to-run noise of ``runs``, given as ``(label, key, final loss in
    nats)``, where runs with equal ``key`` (:func:`repeat_key`) repeat one schedule; runs
    with a non-finite final loss are left out. ``df`` is 0 when no two runs with a finite
    final loss share a key, or every such set is :attr:`RepeatNoise.identical`."""
    by_key: dict[Hashable, list[tuple[str, float]]] = {}
    for label, key, final in runs:
        if math.isfinite(final):
            by_key.setdefault(key, []).append((label, float(final)))
    ss, df = 0.0, 0
    sets: list[tuple[str, ...]] = []
    identical: list[tuple[str, ...]] = []
    for members in by_key.values():
        if len(members) < 2:
            continue
        labels = tuple(label for label, _ in members)
        finals = np.array([v for _, v in members])
        if np.all(finals == finals[0]):
            identical.append(labels)
            continue
        ss += float(np.sum((finals - finals.mean()) ** 2))
        df += finals.size - 1
        sets.append(labels)
    return RepeatNoise(math.sqrt(ss / df) if df else math.nan, df, tuple(sets), tuple(identical))
