"""A torch LR scheduler that plays a :class:`~optuna_optlaws.schedules.Schedule`.

Imported only when a user asks for torch (``Schedule.to_torch``), so the law core never
needs torch.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

if TYPE_CHECKING:
    from optuna_optlaws.schedules import Schedule


class ScheduleLR(LRScheduler):
    """Plays ``schedule`` on an optimizer: the param group with the largest initial LR
    gets ``schedule.lr_at(step)``, and every other group keeps its ratio to that group
    (a group built with a tenth of the LR, for layer-wise LR decay or for embeddings,
    gets a tenth of the schedule's LR at every step). When all groups start with the same
    LR, as they do by default, each gets the schedule's LR exactly. ``scale`` multiplies
    every group's LR (a second optimizer that plays the schedule at another LR).

    After construction the optimizer holds step 0's LR; after the ``t``-th call of
    :meth:`step` it holds step ``t``'s. Call :meth:`step` once after every
    ``optimizer.step()``.

    :meth:`state_dict` holds only numbers and the schedule's JSON, so a checkpoint that
    contains it loads with ``torch.load``'s default ``weights_only=True``;
    :meth:`load_state_dict` sets the optimizer to the saved step's LRs (whichever of the
    optimizer and the scheduler was loaded first) and warns when the checkpoint was saved
    under another schedule.
    """

    def __init__(self, optimizer: Optimizer, schedule: Schedule, last_step: int = -1, scale: float = 1.0) -> None:
        self.schedule = schedule
        if last_step >= 0:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        initial = [float(group.get("initial_lr", group["lr"])) for group in optimizer.param_groups]
        top = max(initial, default=0.0)
        self.group_scales = [scale * (lr / top if top > 0 else 1.0) for lr in initial]
        super().__init__(optimizer, last_epoch=last_step)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        lr = float(self.schedule.lr_at(np.array([float(self.last_epoch)]))[0])
        return [lr * scale for scale in self.group_scales]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["schedule"] = self.schedule.to_json()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        saved = state.pop("schedule", None)
        if isinstance(saved, str) and saved != self.schedule.to_json():
            warnings.warn(
                "ScheduleLR.load_state_dict: the checkpoint was saved under another schedule; "
                "going on with this one from the checkpoint's step",
                stacklevel=2,
            )
        super().load_state_dict(state)
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=False):
            if isinstance(group["lr"], torch.Tensor):  # a tensor LR (capturable, fused) stays one
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._last_lr = [float(group["lr"]) for group in self.optimizer.param_groups]
