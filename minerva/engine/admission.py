"""Queue admission: the one rule that decides when a model has too many requests waiting."""

from __future__ import annotations

from minerva.core.errors import QueueFullError


def refuse_when_full(waiting: int, free_slots: int, queue_limit: int) -> None:
    """Raise QueueFullError once `queue_limit` requests already wait beyond the free slots.

    A burst may arrive before the worker has moved it into free slots: those requests do not queue.
    Checked before a response starts (so the client gets a 429, not an error inside a stream) and
    again by the worker when a sequence is submitted.
    """
    if waiting - free_slots >= queue_limit:
        raise QueueFullError(f"{waiting} requests are already waiting for this model; retry later.")
