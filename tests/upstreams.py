"""Upstream servers for the upstream-engine tests: llama-server on the embedded model, and tiny fakes for faults."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from tests.servers import ROOT, free_port

CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def llama_server_binary() -> Path:
    """llama-server built from the vendored llama.cpp by the bench helper (cached after the first build)."""
    out = subprocess.run(["bash", str(ROOT / "bench" / "build_llama_server.sh")], check=True,
                         capture_output=True, text=True).stdout
    return Path(out.strip().splitlines()[-1])


class LlamaServer:
    """A llama-server process on loopback serving one model under an alias; can be killed and started again."""

    def __init__(self, binary: Path, model: Path, log_dir: Path, alias: str = "smollm2-remote", slots: int = 2):
        self.port = free_port()
        self.command = [str(binary), "-m", str(model), "--alias", alias, "--host", "127.0.0.1", "--port",
                        str(self.port), "-t", "1", "-c", str(1024 * slots), "-np", str(slots), "--metrics"]
        self.log_path = log_dir / f"llama-server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The server's OpenAI base URL."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LlamaServer:
        """Start and wait until /health answers 200."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - the process holds it
        self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError("llama-server did not start:\n" + self.log_path.read_text()[-2000:])

    def kill(self) -> None:
        """Kill the process now (no graceful shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def metric(self, name: str) -> float:
        """One of the server's Prometheus counters (e.g. llamacpp:prompt_tokens_total)."""
        for line in httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise KeyError(name)

    def processing(self) -> int:
        """Slots generating now."""
        return sum(s["is_processing"] for s in httpx.get(f"http://127.0.0.1:{self.port}/slots", timeout=5).json())


class LoopbackHTTP:
    """A threaded http.server on a free loopback port, for the duration of a with-block."""

    def serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        """Bind the server that answers with `handler` (started by entering the block)."""
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The server's OpenAI base URL."""
        return f"http://127.0.0.1:{self.server.server_port}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeUpstream(LoopbackHTTP):
    """A llama-server lookalike whose /completion misbehaves as told: hang, stall, garbage, or an error status.

    modes: "ok" (tokens 'a' forever, one per `token_gap_s`, ending after `n_tokens`), "hang" (no answer),
    "stall" (one token, then nothing), "garbage" (not JSON), "status:NNN" (that status with an error body).
    """

    def __init__(self, mode: str, n_tokens: int = 3, token_gap_s: float = 0.0):
        self.mode = mode
        self.n_tokens = n_tokens
        self.token_gap_s = token_gap_s
        self.release = threading.Event()  # set at stop: hanging handlers return
        self.disconnected = threading.Event()  # a client closed a streaming request
        self.completions = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args) -> None:
                pass

            def _json(self, data: object, status: int = 200) -> None:
                body = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.startswith("/v1/models"):
                    self._json({"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "llamacpp",
                                                            "meta": {"n_ctx_train": 2048, "n_vocab": 100}}]})
                elif self.path.startswith("/props"):
                    self._json({"chat_template": CHATML, "bos_token": "", "eos_token": "<|im_end|>", "total_slots": 1,
                                "default_generation_settings": {"n_ctx": 2048}})
                elif self.path.startswith("/health"):
                    self._json({"status": "ok"})
                else:
                    self._json({"error": {"message": "no such route"}}, 404)

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.path == "/tokenize":
                    self._json({"tokens": [ord(c) % 100 for c in body.get("content", "")][:2000] or [1]})
                elif self.path == "/detokenize":
                    self._json({"content": "?"})
                elif self.path == "/completion":
                    fake.completions += 1
                    self._completion()
                else:
                    self._json({"error": {"message": "no such route"}}, 404)

            def _completion(self) -> None:
                if fake.mode == "hang":
                    fake.release.wait()
                    return
                if fake.mode.startswith("status:"):
                    self._json({"error": {"code": 1, "message": "the fake refuses", "type": "server_error"}},
                               int(fake.mode.split(":")[1]))
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    if fake.mode == "garbage":
                        self.wfile.write(b"data: {this is not json\n\n")
                        return
                    for i in range(fake.n_tokens):
                        chunk = {"content": "a", "tokens": [97], "stop": False}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                        if fake.mode == "stall":
                            fake.release.wait()
                            return
                        if fake.release.wait(fake.token_gap_s):
                            return
                    end = {"content": "", "tokens": [], "stop": True, "stop_type": "limit",
                           "tokens_predicted": fake.n_tokens, "tokens_evaluated": 3}
                    self.wfile.write(f"data: {json.dumps(end)}\n\n".encode())
                except OSError:
                    fake.disconnected.set()

        self.serve(Handler)

    def __exit__(self, *exc) -> None:
        self.release.set()
        super().__exit__(*exc)


@contextlib.contextmanager
def llama_servers(binary: Path, model: Path, log_dir: Path, count: int) -> Iterator[list[LlamaServer]]:
    """`count` llama-servers on the model, killed at the end."""
    servers = [LlamaServer(binary, model, log_dir) for _ in range(count)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.kill()
