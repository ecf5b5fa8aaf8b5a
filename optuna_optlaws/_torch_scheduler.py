"""A torch LR scheduler that plays a :class:`~optuna_optlaws.schedules.Schedule`.

Imported only when a user asks for torch (``Schedule.to_torch``), so the law core never
needs torch.
"""

from __future__ import annotations

import logging
import warnings
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

if TYPE_CHECKING:
    from optuna_optlaws.schedules import Schedule

_log = logging.getLogger(__name__)  # what optuna.logging.get_logger(__name__) returns, without importing optuna

OVERSTEP_MESSAGE = (
    "ScheduleLR.step() was called more than once after each of two optimizer steps in a row, so the "
    "schedule plays faster than training: schedules are in optimizer steps; call scheduler.step() once "
    "after each optimizer.step() (with accelerate, do not pass the scheduler to accelerator.prepare, "
    "call scheduler.step() after each optimizer step yourself)"
)
"""The one-line warning of a scheduler stepped several times per optimizer step."""

UNDERSTEP_MESSAGE = (
    "ScheduleLR: the optimizer stepped three times in a row without a scheduler.step() between, so the "
    "schedule plays slower than training: schedules are in optimizer steps; call scheduler.step() after "
    "each optimizer.step() (Lightning: \"interval\": \"step\" in configure_optimizers' lr_scheduler)"
)
"""The one-line warning of a scheduler stepped less than once per optimizer step."""


class _StepRate:
    """Counts optimizer steps (a post-step hook on the optimizer) against scheduler steps,
    to catch a scheduler stepped several times per optimizer step: accelerate's
    ``AcceleratedScheduler`` steps it ``num_processes`` times per optimizer step, a loop
    may step it once per micro-batch; and one stepped less than once per optimizer step
    (Lightning's default ``"interval": "epoch"`` steps it once an epoch). A single extra
    scheduler step is normal (a step
    that AMP's ``GradScaler`` skipped on inf gradients), so only an extra step after each
    of two optimizer steps in a row warns, and only once the optimizer has stepped (a
    scheduler stepped alone to plot its LR curve does not warn). Per process: never in
    a checkpoint."""

    def __init__(self) -> None:
        self.optimizer_steps = 0
        """``optimizer.step()`` calls seen since the scheduler was built."""
        self.since_optimizer_step = 0
        """``scheduler.step()`` calls since the last ``optimizer.step()``."""
        self.over_in_a_row = 0
        """Optimizer steps in a row after which the scheduler was stepped more than once."""
        self.under_in_a_row = 0
        """Optimizer steps in a row with no scheduler step since the previous one."""
        self.warned = False
        self.warned_under = False

    def optimizer_stepped(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        """The optimizer's step post-hook."""
        if self.since_optimizer_step < 2:
            self.over_in_a_row = 0
        skipped = self.optimizer_steps > 0 and self.since_optimizer_step == 0
        self.under_in_a_row = self.under_in_a_row + 1 if skipped else 0
        self.optimizer_steps += 1
        self.since_optimizer_step = 0
        if self.under_in_a_row >= 2 and not self.warned_under:
            self.warned_under = True
            warnings.warn(UNDERSTEP_MESSAGE, stacklevel=3)
            _log.warning(UNDERSTEP_MESSAGE)

    def scheduler_stepped(self) -> bool:
        """Counts a ``scheduler.step()``; whether it is the first one to warn about."""
        self.since_optimizer_step += 1
        if self.optimizer_steps == 0 or self.since_optimizer_step != 2:
            return False
        self.over_in_a_row += 1
        if self.over_in_a_row < 2 or self.warned:
            return False
        self.warned = True
        return True

    def watch(self, owner: object, optimizer: Optimizer) -> None:
        """Hooks :meth:`optimizer_stepped` on ``optimizer`` until ``owner`` is collected (not
        on a wrapper that never ran ``Optimizer.__init__``: then nothing is counted and
        nothing warns)."""
        try:
            handle = optimizer.register_step_post_hook(self.optimizer_stepped)
        except AttributeError:
            return
        weakref.finalize(owner, handle.remove)


class ScheduleLR(LRScheduler):
    """Plays ``schedule`` on an optimizer: the param group with the largest initial LR
    gets ``schedule.lr_at(step)``, and every other group keeps its ratio to that group
    (a group built with a tenth of the LR, for layer-wise LR decay or for embeddings,
    gets a tenth of the schedule's LR at every step). When all groups start with the same
    LR, as they do by default, each gets the schedule's LR exactly. A group added to the
    optimizer later (unfreezing layers) keeps the ratio of the LR it was added with to
    that largest initial LR. ``scale`` multiplies every group's LR (a second optimizer
    that plays the schedule at another LR).

    After construction the optimizer holds step 0's LR; after the ``t``-th call of
    :meth:`step` it holds step ``t``'s. Call :meth:`step` once after every
    ``optimizer.step()``.

    :meth:`state_dict` holds only numbers and the schedule's JSON, so a checkpoint that
    contains it loads with ``torch.load``'s default ``weights_only=True``;
    :meth:`load_state_dict` sets the optimizer to the saved step's LRs (whichever of the
    optimizer and the scheduler was loaded first) and, when the checkpoint was saved
    under another schedule, warns and logs it (on the ``optuna_optlaws`` logger: HF
    Trainer loads ``scheduler.pt`` under ``warnings.catch_warnings``, which hides the
    warning).

    The stepping is never changed, but a scheduler stepped more than once after each of two
    optimizer steps in a row (accelerate's ``AcceleratedScheduler`` with several processes
    steps it ``num_processes`` times per optimizer step) warns and logs once: the schedule
    would play that many times too fast; so does an optimizer that steps three times in a
    row without a scheduler step between (Lightning's default ``"interval": "epoch"``):
    the schedule would play too slowly.
    """

    def __init__(self, optimizer: Optimizer, schedule: Schedule, last_step: int = -1, scale: float = 1.0) -> None:
        self.schedule = schedule
        if last_step >= 0:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        initial = [float(group.get("initial_lr", group["lr"])) for group in optimizer.param_groups]
        self.top_initial_lr = max(initial, default=0.0)
        """The largest initial LR of the groups at construction (the one the schedule plays)."""
        self.scale = float(scale)
        self.group_scales = [self._group_scale(lr) for lr in initial]
        super().__init__(optimizer, last_epoch=last_step)
        self._step_rate = _StepRate()  # after super().__init__: its initial step() is not counted
        self._step_rate.watch(self, optimizer)

    def step(self, epoch: int | None = None) -> None:
        rate: _StepRate | None = self.__dict__.get("_step_rate")
        if rate is not None and rate.scheduler_stepped():
            warnings.warn(OVERSTEP_MESSAGE, stacklevel=2)
            _log.warning(OVERSTEP_MESSAGE)
        super().step(epoch)

    def _group_scale(self, initial_lr: float) -> float:
        top = self.top_initial_lr
        return self.scale * (initial_lr / top if top > 0 else 1.0)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        groups = self.optimizer.param_groups
        for group in groups[len(self.group_scales) :]:  # added since (unfreezing layers): ratio as if built with
            group.setdefault("initial_lr", group["lr"])
            self.group_scales.append(self._group_scale(float(group["initial_lr"])))
        lr = float(self.schedule.lr_at(np.array([float(self.last_epoch)]))[0])
        return [lr * scale for scale in self.group_scales[: len(groups)]]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.pop("_step_rate", None)  # per process, and not a type torch.load(weights_only=True) reads
        state["schedule"] = self.schedule.to_json()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        state.pop("_step_rate", None)
        saved = state.pop("schedule", None)
        if isinstance(saved, str) and saved != self.schedule.to_json():
            message = (
                "ScheduleLR.load_state_dict: the checkpoint was saved under another schedule (another "
                "trial's, in a shared output directory?); going on with this one from the checkpoint's "
                f"step {state.get('last_epoch', '?')}"
            )
            warnings.warn(message, stacklevel=2)
            _log.warning(message)
        super().load_state_dict(state)
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=False):
            if isinstance(group["lr"], torch.Tensor):  # a tensor LR (capturable, fused) stays one
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._last_lr = [float(group["lr"]) for group in self.optimizer.param_groups]

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A pickled or deep-copied optimizer comes back without its hooks: hook the copy.
        self.__dict__.update(state)
        rate = state.get("_step_rate")
        if isinstance(rate, _StepRate):
            rate.watch(self, self.optimizer)
