"""Replicas of one upstream: which is up, how loaded, and which served a session last (prefix-cache affinity)."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

logger = logging.getLogger(__name__)

AFFINITY_SESSIONS = 10_000  # session keys remembered, least recently used forgotten
AFFINITY_SLACK = 2  # a session stays on its replica unless that one has this many more requests than the least loaded


@dataclass
class Replica:
    """One server of an upstream, with live counters (mutated on the event loop only)."""

    url: str  # the server root
    healthy: bool = True
    in_flight: int = 0  # requests this minerva has open on it
    remote_queue: int = 0  # work the server reports beyond ours (waiting requests, others' busy slots)
    total_slots: int = 0  # what the server reports it runs at once (0: unknown)
    last_error: str = ""
    down_since: float = 0.0

    @property
    def load(self) -> int:
        """What balancing compares: our open requests plus the server's own queue."""
        return self.in_flight + self.remote_queue


class ReplicaSet:
    """Chooses a replica per request: least loaded among the healthy, the session's last one when close."""

    def __init__(self, name: str, urls: tuple[str, ...]):
        self.name = name
        self.replicas = [Replica(url) for url in urls]
        self._affinity: OrderedDict[str, Replica] = OrderedDict()
        self._turn = 0  # rotates ties so equal replicas share the work

    def pick(self, session_key: str | None = None, exclude: tuple[Replica, ...] = ()) -> Replica | None:
        """The replica for the next request; None when every one is excluded. Down replicas are tried last."""
        candidates = [r for r in self.replicas if r not in exclude]
        if not candidates:
            return None
        healthy = [r for r in candidates if r.healthy] or candidates
        self._turn += 1
        order = {id(r): (r.load, (i + self._turn) % len(self.replicas)) for i, r in enumerate(self.replicas)}
        best = min(healthy, key=lambda r: order[id(r)])
        last = self._affinity.get(session_key) if session_key else None
        if last is not None and last in healthy and last.load <= best.load + AFFINITY_SLACK:
            return last
        return best

    def served(self, replica: Replica, session_key: str | None) -> None:
        """A request finished well on `replica`: remember it for the session."""
        if session_key:
            self._affinity[session_key] = replica
            self._affinity.move_to_end(session_key)
            while len(self._affinity) > AFFINITY_SESSIONS:
                self._affinity.popitem(last=False)

    def mark_down(self, replica: Replica, reason: str) -> None:
        """Take a replica out until a health check finds it up."""
        if replica.healthy:
            logger.warning("upstream %s: replica %s taken out: %s", self.name, replica.url, reason)
            replica.down_since = time.monotonic()
        replica.healthy = False
        replica.last_error = reason

    def mark_up(self, replica: Replica) -> None:
        """Put a replica back in rotation."""
        if not replica.healthy:
            logger.info("upstream %s: replica %s is back", self.name, replica.url)
        replica.healthy = True
        replica.last_error = ""

    def healthy_count(self) -> int:
        """Replicas in rotation now."""
        return sum(r.healthy for r in self.replicas)
