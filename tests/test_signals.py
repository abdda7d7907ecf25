"""SIGTERM drains in-flight requests up to the grace deadline then exits 0; SIGINT twice exits at once.

The server runs as a real subprocess (`python -m minerva.cli serve`) on the embedded SmolLM2.
"""

import json
import signal
import threading
import time

import httpx
import pytest

from tests.servers import Served

MODEL = "smollm2-135m-instruct"
pytestmark = pytest.mark.slow


@pytest.fixture
def serve(tmp_path):
    started: list[Served] = []

    def start(grace_s: float) -> Served:
        server = Served(tmp_path, grace_s)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def stream_in_thread(server: Served, max_tokens: int) -> tuple[threading.Event, dict]:
    """Start a streaming completion (greedy counting, so it does not stop early); set the event at the
    first token. The result dict gets the lines received and any error."""
    first = threading.Event()
    result: dict = {"lines": [], "error": None}
    body = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "max_tokens": max_tokens, "temperature": 0,
            "stream": True}

    def run() -> None:
        try:
            with httpx.stream("POST", f"http://127.0.0.1:{server.port}/v1/completions", json=body,
                              timeout=120) as response:
                result["status"] = response.status_code
                for line in response.iter_lines():
                    result["lines"].append(line)
                    if line.startswith("data: {") and json.loads(line[6:])["choices"][0].get("text"):
                        first.set()
        except httpx.HTTPError as exc:
            result["error"] = exc
        finally:
            first.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    result["thread"] = thread
    return first, result


def test_sigterm_finishes_in_flight_then_exits_0(serve):
    server = serve(grace_s=120)
    first, result = stream_in_thread(server, max_tokens=12)
    assert first.wait(90) and result["error"] is None, server.output()
    server.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while server.accepts() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.accepts(), "still accepting connections after SIGTERM"
    assert server.proc.wait(120) == 0, server.output()
    result["thread"].join(10)
    data = [line for line in result["lines"] if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]", result["lines"][-3:]
    finish = [json.loads(line[6:])["choices"][0]["finish_reason"] for line in data[:-1]]
    assert finish[-1] == "length"  # the whole budget was generated after the signal


def test_sigterm_cuts_requests_at_the_grace_deadline(serve):
    server = serve(grace_s=1)
    first, result = stream_in_thread(server, max_tokens=900)  # would take well over 10 s
    assert first.wait(90), server.output()
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0, server.output()
    assert time.monotonic() - signalled < 10
    result["thread"].join(10)
    assert "data: [DONE]" not in result["lines"]
    assert "timeout graceful shutdown exceeded" in server.output()


def test_second_sigint_exits_at_once(serve):
    server = serve(grace_s=60)
    first, result = stream_in_thread(server, max_tokens=900)
    assert first.wait(90), server.output()
    server.proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert server.proc.poll() is None  # the first interrupt waits for the request
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGINT)
    code = server.proc.wait(10)
    assert time.monotonic() - signalled < 3
    assert code == 128 + signal.SIGINT, server.output()
    assert "second interrupt" in server.output()
