"""A torch LR scheduler that plays a :class:`~optuna_optlaws.schedules.Schedule`.

Imported only when a user asks for torch (``Schedule.to_torch``), so the law core never
needs torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

if TYPE_CHECKING:
    from optuna_optlaws.schedules import Schedule


class ScheduleLR(LRScheduler):
    """Sets every param group's LR to ``schedule.lr_at(step)``.

    After construction the optimizer holds step 0's LR; after the ``t``-th call of
    :meth:`step` it holds step ``t``'s. Call :meth:`step` once after every
    ``optimizer.step()``.
    """

    def __init__(self, optimizer: Optimizer, schedule: Schedule, last_step: int = -1) -> None:
        self.schedule = schedule
        if last_step >= 0:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        super().__init__(optimizer, last_epoch=last_step)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        lr = float(self.schedule.lr_at(np.array([float(self.last_epoch)]))[0])
        return [lr for _ in self.optimizer.param_groups]
