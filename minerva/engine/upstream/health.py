"""Background checks of each replica: up or down (/health), and how busy the server says it is.

llama-server: its /slots that are processing; vLLM: its /metrics gauges of requests running and waiting.
"""

from __future__ import annotations

import asyncio

from minerva.core.errors import MinervaError
from minerva.engine.upstream.replicas import Replica
from minerva.engine.upstream.transport import UpstreamClient, no_error_details
from minerva.engine.upstream.vllm_protocol import queue_length


def busy_slots(slots: object) -> int | None:
    """How many of llama-server's /slots are processing (None when the answer is not a slot list)."""
    if not isinstance(slots, list):
        return None
    return sum(1 for slot in slots if isinstance(slot, dict) and slot.get("is_processing"))


async def check_replica(client: UpstreamClient, replica: Replica, kind: str) -> None:
    """Mark the replica up when /health answers 200, down otherwise; refresh its queue figure."""
    try:
        await client.get_text(f"{replica.url}/health")  # vLLM answers 200 with an empty body
    except MinervaError as exc:
        client.replicas.mark_down(replica, exc.message)
        return
    client.replicas.mark_up(replica)
    if kind == "llama-server":
        with no_error_details():
            slots = await client.get_json(f"{replica.url}/slots")
            busy = busy_slots(slots)
            if busy is not None:
                replica.total_slots = len(slots)  # type: ignore[arg-type]
                replica.remote_queue = max(0, busy - replica.in_flight)
    elif kind == "vllm":
        with no_error_details():
            queued = queue_length(await client.get_text(f"{replica.url}/metrics"))
            if queued is not None:
                replica.remote_queue = max(0, queued - replica.in_flight)


async def check_all(client: UpstreamClient, kind: str) -> None:
    """Check every replica of one upstream at once."""
    await asyncio.gather(*(check_replica(client, r, kind) for r in client.replicas.replicas))
