"""Training-loop glue for PyTorch: a trial's schedule as a torch LR scheduler, and a
reporter that sends losses to Optuna and stops pruned trials.

The only module of the package that imports torch at the top::

    import optuna
    from optuna_optlaws import suggest_schedule
    from optuna_optlaws.torch import LossReporter, scheduler_for

    def objective(trial: optuna.Trial) -> float:
        suggest_schedule(trial, total_steps=1000, peak_lr=(1e-4, 1e-2))
        opt = torch.optim.AdamW(model.parameters())
        sched = scheduler_for(trial, opt)      # LR of step t after the t-th sched.step()
        reporter = LossReporter(trial, every=25)
        for step in range(1000):
            loss = train_step(...)             # one optimizer.step()
            sched.step()
            reporter.step(loss, step)          # reports, may raise optuna.TrialPruned
        return final_eval()

Steps are optimizer steps, 0-based: ``step`` is the index of the optimizer step just taken
(its LR was ``schedule.lr_at(step)``), and the loss passed with it is the loss measured
after that step.
"""

from __future__ import annotations

import logging
import math
import numbers
import warnings
from typing import TYPE_CHECKING, Any

import torch

from optuna_optlaws._trial_notes import add_notes
from optuna_optlaws.schedules import Schedule

if TYPE_CHECKING:
    import optuna
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler

__all__ = ["LossReporter", "scheduler_for"]

_log = logging.getLogger(__name__)  # what optuna.logging.get_logger(__name__) returns, without importing optuna


def _trial_schedule(trial: optuna.trial.BaseTrial) -> Schedule | None:
    from optuna_optlaws import get_schedule

    return get_schedule(trial)


def scheduler_for(
    trial_or_schedule: optuna.trial.BaseTrial | Schedule,
    optimizer: Optimizer,
    last_step: int = -1,
    *,
    scale: float = 1.0,
) -> LRScheduler:
    """A torch LR scheduler that plays the schedule of a trial (the one attached by
    ``suggest_schedule`` / ``set_schedule``) or a :class:`Schedule` given directly.

    The optimizer gets the schedule's LR: step 0's right away, step ``t``'s after the
    ``t``-th ``scheduler.step()`` (call it once after each ``optimizer.step()``). The param
    group built with the largest LR plays the schedule and the others keep their ratio to
    it (layer-wise LR decay); groups built with one LR all get the schedule's. Its
    ``state_dict()`` goes in a checkpoint that ``torch.load`` reads with
    ``weights_only=True``. ``scale`` multiplies every LR: a second optimizer of the trial
    (embeddings under AdamW, matrices under another) plays the same schedule at
    ``scale`` times its LR, ``scale`` suggested as an ordinary parameter.
    ``last_step`` resumes a run that has taken optimizer steps ``0..last_step``: the
    optimizer then holds step ``last_step + 1``'s LR (torch's ``last_epoch`` convention).
    Raises ``ValueError`` when the trial has no schedule attached."""
    if isinstance(trial_or_schedule, Schedule):
        return trial_or_schedule.to_torch(optimizer, last_step=last_step, scale=scale)
    schedule = _trial_schedule(trial_or_schedule)
    if schedule is None:
        raise ValueError(
            f"trial {getattr(trial_or_schedule, 'number', '?')} has no schedule attached; "
            "call optuna_optlaws.suggest_schedule(trial, ...) or set_schedule(trial, schedule) first"
        )
    return schedule.to_torch(optimizer, last_step=last_step, scale=scale)


def _as_float(loss: Any) -> float:
    if isinstance(loss, torch.Tensor):
        return float(loss.detach().float().mean().item())
    return float(loss)


def _non_finite_without_sync(loss: Any) -> bool:
    """Whether ``loss`` is NaN or inf, when that can be told without waiting for a device:
    a number (Python's or numpy's) or a CPU tensor (``False`` for a tensor on an accelerator)."""
    if isinstance(loss, torch.Tensor):
        return loss.device.type == "cpu" and not bool(torch.isfinite(loss.detach()).all())
    return isinstance(loss, numbers.Real) and not math.isfinite(float(loss))  # numpy scalars too


class LossReporter:
    """Reports a training run's loss to Optuna every ``every`` optimizer steps, and raises
    ``optuna.TrialPruned`` as soon as the trial's pruner says so.

    Call :meth:`step` after every optimizer step with the loss (nats; a float or a torch
    scalar) and the 0-based step index. It reports ``trial.report(loss, step)`` when
    ``(step + 1) % every == 0`` (so after ``every``, ``2 * every``, ... steps) and at the
    last step of the run (``total_steps - 1``; ``total_steps`` defaults to the trial's
    attached schedule's), then asks ``trial.should_prune()`` (except after the last step:
    the run is finished, pruning it would save nothing). A non-finite loss (a float, or
    a tensor on the CPU) is reported at once, whatever the step, so a diverging run is
    seen immediately (Optuna stores it as NaN/inf and a schedule-aware pruner prunes it);
    a tensor on an accelerator is read only at the steps a report is due (reading it
    waits for the device), so its NaN is reported at the next of them.

    In a multi-objective study, where Optuna keeps no intermediate values, the first
    report warns and logs that nothing is reported, and training goes on.

    A step at or past ``total_steps`` is reported like the last step (no prune check
    follows it), and warns and logs once per reporter: it usually is a
    1-based step counter (HF Trainer's ``state.global_step``, Lightning's
    ``trainer.global_step`` after the optimizer step), which makes ``every`` miss its
    steps and the pruner never act; pass that counter minus 1.

    :attr:`last_reported` holds the last ``(step, loss)`` sent, :attr:`n_reports` how many.

    Under ``torch.distributed`` wrap the trial in optuna-integration's
    ``TorchDistributedTrial`` on every rank (``suggest_schedule`` and ``scheduler_for`` take
    it: the schedule is stored from rank 0 and played on all) and pass every rank the same
    loss (all-reduced): reporting and the pruning decision are collective, so every rank
    must report at the same steps and stops at the same one.
    """

    def __init__(
        self,
        trial: optuna.trial.BaseTrial,
        every: int = 1,
        *,
        total_steps: int | None = None,
        check_prune: bool = True,
    ) -> None:
        if int(every) < 1:
            raise ValueError(f"LossReporter every={every!r} must be a positive number of steps")
        self.trial = trial
        self.every = int(every)
        if total_steps is None:
            sched = _trial_schedule(trial)
            total_steps = sched.total_steps if sched is not None else None
        self.total_steps = total_steps
        self.check_prune = check_prune
        self.last_reported: tuple[int, float] | None = None
        self.n_reports = 0
        self._warned_past_end = False
        self._unsupported = False
        """Whether the trial refused a report (a multi-objective study keeps none)."""

    def is_last(self, step: int) -> bool:
        """Whether ``step`` is the run's last optimizer step (``total_steps - 1``)."""
        return self.total_steps is not None and step >= self.total_steps - 1

    def due(self, step: int) -> bool:
        """Whether :meth:`step` reports at this 0-based optimizer step."""
        return (step + 1) % self.every == 0 or self.is_last(step)

    def step(self, loss: Any, step: int) -> bool:
        """Report ``loss`` at optimizer ``step`` if due; raise ``optuna.TrialPruned`` when
        the pruner says to stop. Returns whether a report was made. ``loss`` is only
        converted to a float (a device sync for a CUDA tensor) when a report is due."""
        step = int(step)
        if self._unsupported:
            return False
        if self.total_steps is not None and step >= self.total_steps and not self._warned_past_end:
            self._warned_past_end = True
            message = (
                f"LossReporter: step {step} is past the run's last step {self.total_steps - 1}: steps are "
                "0-based optimizer steps (HF Trainer: pass state.global_step - 1; Lightning: "
                "trainer.global_step - 1 in on_train_batch_end)"
            )
            warnings.warn(message, stacklevel=2)
            _log.warning(message)
            note = f"step {step} reported past the schedule's last step {self.total_steps - 1} (a 1-based step?)"
            try:
                add_notes(self.trial, [note])
            except Exception as exc:  # noting it must never stop the training
                _log.warning(f"LossReporter: could not record the note on the trial ({exc})")
        if self.due(step) or _non_finite_without_sync(loss):
            value = _as_float(loss)
        else:
            return False
        try:
            self.trial.report(value, step)
        except NotImplementedError:  # Optuna keeps no intermediate values in a multi-objective study
            self._unsupported = True
            message = (
                "LossReporter: this trial's study has several objectives, where Optuna keeps no intermediate "
                "values: losses are not reported, so no law sees this run's curve and no pruner stops it"
            )
            warnings.warn(message, stacklevel=2)
            _log.warning(message)
            return False
        self.last_reported = (step, value)
        self.n_reports += 1
        if self.is_last(step):
            return True  # the run is over: pruning now would save nothing and lose its result
        if self.check_prune and self.trial.should_prune():
            import optuna

            raise optuna.TrialPruned(f"pruned at optimizer step {step} (loss {value:.4g})")
        return True
