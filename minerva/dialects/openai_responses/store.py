"""A bounded in-memory store of responses, for GET, DELETE and previous_response_id (least recently used goes)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from minerva.core.requests import Message

DEFAULT_CAPACITY = 256


@dataclass(frozen=True)
class StoredResponse:
    """A finished response object and the conversation a follow-up continues (instructions excluded)."""

    response: dict
    conversation: tuple[Message, ...]


class ResponseStore:
    """At most `capacity` responses by id; storing one more evicts the least recently used."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        self.capacity = capacity
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, response_id: str, stored: StoredResponse) -> None:
        """Keep a response, evicting the oldest beyond capacity."""
        with self._lock:
            self._items[response_id] = stored
            self._items.move_to_end(response_id)
            while len(self._items) > max(self.capacity, 0):
                self._items.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse | None:
        """A stored response (now the most recently used), or None."""
        with self._lock:
            stored = self._items.get(response_id)
            if stored is not None:
                self._items.move_to_end(response_id)
            return stored

    def delete(self, response_id: str) -> bool:
        """Forget a response; whether it was there."""
        with self._lock:
            return self._items.pop(response_id, None) is not None

    def __len__(self) -> int:
        return len(self._items)
