"""What the routes share, hung off the app by create_app, and the typed accessor routes read it through."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from minerva.dialects.openai_responses.store import ResponseStore
from minerva.engine.pool import EnginePool
from minerva.metrics import ServerMetrics
from minerva.registry import ModelRegistry
from minerva.settings import Settings


@dataclass
class ServerState:
    """Settings, the registry, the loaded engines and this server's metrics."""

    settings: Settings
    registry: ModelRegistry
    pool: EnginePool
    metrics: ServerMetrics = field(init=False)
    models_body: tuple[object, bytes] | None = None  # /v1/models JSON, keyed by registry version and loaded set
    responses_store: ResponseStore = field(init=False)  # stored /v1/responses objects

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(self.pool)  # one registry per app, never the global one
        self.responses_store = ResponseStore(self.settings.responses_store_size)


def server_state(request: Request) -> ServerState:
    """The state of the app serving this request."""
    return request.app.state.minerva
