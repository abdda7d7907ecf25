"""Real minerva servers for tests: in-process uvicorn on a thread, or a `minerva serve` subprocess."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import uvicorn

from minerva.api.app import create_app
from minerva.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


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


class Served:
    """A `minerva serve` subprocess on loopback."""

    def __init__(self, tmp_path: Path, grace_s: float, slots: int = 2, **settings: object):
        self.port = free_port()
        env = {**os.environ, "MINERVA_SHUTDOWN_GRACE_S": str(grace_s), "MINERVA_N_THREADS": "1",
               **{f"MINERVA_{name.upper()}": str(value) for name, value in settings.items()}}
        self.log = open(tmp_path / "server.log", "w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "minerva.cli", "serve", "--port", str(self.port), "--models-dir", str(tmp_path),
             "--ctx-size", "1024", "--slots", str(slots)],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not start:\n" + self.output())

    def output(self) -> str:
        self.log.flush()
        return (Path(self.log.name)).read_text()

    def accepts(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()
