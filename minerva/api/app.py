"""The FastAPI application factory: all server state hangs off create_app(settings)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from minerva import __version__
from minerva.api.errors import Dialect, ErrorEnvelopes, install_error_handlers
from minerva.api.middleware import ApiKeyMiddleware, BodyLimitMiddleware, RequestContextMiddleware
from minerva.api.routes_admin import router as admin_router
from minerva.api.routes_engine import router as engine_router
from minerva.api.routes_metrics import router as metrics_router
from minerva.api.routes_web import router as web_router
from minerva.api.state import ServerState
from minerva.default_model import default_model_path
from minerva.discovery import store_locations
from minerva.engine.pool import EngineLoader, EnginePool, load_engine
from minerva.registry import ModelRegistry
from minerva.settings import Settings

logger = logging.getLogger(__name__)

DIALECTS = ("minerva.dialects.openai.routes", "minerva.dialects.openai_responses.routes",
            "minerva.dialects.anthropic.routes", "minerva.dialects.ollama.routes")
"""The client APIs served, one registry: each module's DIALECT has its router and error envelope."""

UPLOAD_PATHS = ("/v1/files",)
"""Paths whose bodies are files: limited by max_upload_bytes and spooled to disk, not held in memory."""


def load_dialects() -> tuple[Dialect, ...]:
    """Every dialect in DIALECTS."""
    return tuple(importlib.import_module(name).DIALECT for name in DIALECTS)


def build_registry(settings: Settings) -> ModelRegistry:
    """The registry the settings describe (directories, explicit models, the embedded default, other tools' stores)."""
    default = default_model_path() if settings.include_default_model else None
    stores = store_locations(settings.discover, settings.discover_paths, os.environ, Path.home())
    upstreams = None
    if settings.upstreams:  # imported only then: the upstream client (httpx) is not needed otherwise
        from minerva.engine.upstream.catalogue import UpstreamCatalogue
        from minerva.engine.upstream.config import upstream_config

        upstreams = UpstreamCatalogue(upstream_config(name, table.model_dump()) for name, table in settings.upstreams.items())
    return ModelRegistry(settings.models_dirs, settings.models, default, discovery=stores, upstreams=upstreams)


def create_app(settings: Settings | None = None, *, loader: EngineLoader = load_engine,
               finetune_trainer: str | None = None) -> FastAPI:
    """A ready-to-serve app; `loader` builds engines and `finetune_trainer` trains jobs (tests may pass fakes)."""
    settings = settings or Settings()
    state = ServerState(settings, build_registry(settings), EnginePool(settings, loader),
                        finetune_trainer=finetune_trainer)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        reaper = asyncio.create_task(state.pool.run_reaper(lambda: {m.id for m in state.registry.list()}))
        upstreams = state.registry.upstreams
        if upstreams is not None:  # discover their models before serving, then keep them checked
            await upstreams.refresh()
        upstream_checks = asyncio.create_task(upstreams.run()) if upstreams is not None else None
        if state.has_fine_tuning_data():  # recover interrupted jobs, serve the fine-tuned models again
            state.fine_tuning()
        try:
            yield
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            if upstream_checks is not None:
                upstream_checks.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await upstream_checks
                await upstreams.close()
            await state.close_fine_tuning()
            await state.pool.close()

    app = FastAPI(title="minerva", version=__version__, lifespan=lifespan)
    app.state.minerva = state
    dialects = load_dialects()
    envelopes = ErrorEnvelopes.of(dialects)
    install_error_handlers(app, envelopes)
    # Added last runs first: request context wraps everything, then auth, then the body limit.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, envelopes=envelopes,
                       upload_paths=UPLOAD_PATHS, max_upload_bytes=settings.max_upload_bytes)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["x-request-id"])
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys, envelopes=envelopes)
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics)
    for dialect in dialects:
        app.include_router(dialect.router)
    app.include_router(metrics_router)
    app.include_router(admin_router)
    app.include_router(engine_router)
    app.include_router(web_router)

    def openapi_without_422() -> dict:
        # Validation errors are answered as 400 in the OpenAI envelope (documented per route), never 422.
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi_without_422  # type: ignore[method-assign]

    @app.get("/health")
    async def health() -> dict:
        """Liveness: the server answers."""
        return {"status": "ok", "models_loaded": len(state.pool.loaded())}

    return app
