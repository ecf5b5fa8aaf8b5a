"""The text a trial carries about bad input that was ignored (user attribute
``optlaws_warning``): written by the pruner, by ``suggest_schedule`` and by the training
integration's ``LossReporter``, kept light to import (no law, no scipy)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

WARNING = "optlaws_warning"
"""User attribute: bad input that was ignored on this trial (text, ``"; "`` between notes)."""

MAX_WARNING_CHARS = 2000
"""The warning attribute keeps its last this many characters."""


def with_notes(stored: Any, notes: Sequence[str]) -> str | None:
    """The text of the warning attribute after ``notes`` (short texts of bad input that was
    ignored) are added to what it holds (``stored``), each once, ``"; "`` between them,
    cut to its last :data:`MAX_WARNING_CHARS` characters; ``None`` when none is new."""
    before = stored if isinstance(stored, str) else ""
    new = [n for n in notes if n not in before]
    if not new:
        return None
    text = "; ".join([before, *new] if before else new)
    return text if len(text) <= MAX_WARNING_CHARS else "..." + text[3 - MAX_WARNING_CHARS :]


def add_stored_notes(storage: Any, trial: FrozenTrial, notes: Sequence[str]) -> None:
    """:func:`add_notes` for a trial as the storage holds it (a sampler's or pruner's view)."""
    text = with_notes(trial.user_attrs.get(WARNING), notes)
    if text is not None:
        storage.set_trial_user_attr(trial._trial_id, WARNING, text)


def add_notes(trial: Any, notes: Sequence[str]) -> None:
    """Add ``notes`` to a live trial's warning attribute (:func:`with_notes`; one storage
    write, none when every note is already there)."""
    text = with_notes(trial.user_attrs.get(WARNING), notes)
    if text is not None:
        trial.set_user_attr(WARNING, text)
