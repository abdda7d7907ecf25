"""`minerva demo`: format detection, the OpenAI response format and the registry, in one run."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table

from minerva.api.app import create_app
from minerva.formats.detect import read_model_info
from minerva.settings import Settings


async def _asgi_get(app: Any, path: str) -> tuple[int, Any]:
    """GET one path from the app in-process (no socket, no HTTP client: the runtime install has none)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"minerva-demo")], "client": ("127.0.0.1", 0), "server": ("minerva-demo", 80)}
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


def run_demo(settings: Settings) -> int:
    """Print the three demonstrations; returns a process exit code."""
    console = Console()
    app = create_app(settings)
    registry = app.state.minerva.registry
    models = registry.list()

    console.rule("[bold]1. Format detection (headers only, no weights loaded)")
    table = Table()
    for column in ("model", "format", "quantization", "tensors", "params", "arch", "context", "read time"):
        table.add_column(column)
    for model in models:
        started = time.perf_counter()
        info = read_model_info(model.info.path)
        elapsed_ms = (time.perf_counter() - started) * 1000
        table.add_row(model.id, info.format, info.quantization or "-", str(info.tensor_count),
                      f"{info.parameter_count:,}", info.architecture or "-", str(info.context_length or "-"),
                      f"{elapsed_ms:.1f} ms")
    console.print(table)
    for path, reason in registry.failures().items():
        console.print(f"[yellow]skipped {path}[/yellow]: {reason}")

    console.rule("[bold]2. The OpenAI response format: GET /v1/models")
    _, listing = asyncio.run(_asgi_get(app, "/v1/models"))
    console.print(Syntax(json.dumps(listing, indent=2), "json"))
    if models:
        first = models[0].id
        _, one = asyncio.run(_asgi_get(app, f"/v1/models/{first}"))
        size = len(json.dumps(one))
        console.print(Panel(f"GET /v1/models/{first}: {size} bytes of JSON", expand=False))
    status, missing = asyncio.run(_asgi_get(app, "/v1/models/no-such-model"))
    console.print(f"GET /v1/models/no-such-model → {status}")
    console.print(Syntax(json.dumps(missing, indent=2), "json"))

    console.rule("[bold]3. The multi-model registry")
    console.print(f"{len(models)} model(s) registered from: default model, "
                  f"{len(settings.models)} explicit registration(s), directories "
                  f"{[str(d) for d in settings.models_dirs]}")
    for model in models:
        console.print(f"  {model.id:40s} ← {model.source:8s} {model.info.path}")
    return 0
