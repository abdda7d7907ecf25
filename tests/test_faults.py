"""Model files that break while the server runs, and models that fail to load: the request for that
model fails cleanly (404 or a 5xx envelope), every other model goes on, and a retry really retries."""

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from minerva.engine.pool import load_engine
from minerva.settings import Settings
from tests.servers import running_server
from tests.model_fixtures import GGUFSpec, write_gguf
from tests.servers import Served

DEFAULT = "smollm2-135m-instruct"
pytestmark = pytest.mark.slow


def chat(base_url: str, model: str, max_tokens: int = 4) -> httpx.Response:
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"}]}
    return httpx.post(base_url + "/chat/completions", json=body, timeout=120)


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and "Traceback" not in response.text
    return error


def truncated_tiny_gguf(path: Path) -> Path:
    """A gguf-py GGUF whose last tensor's data is cut short (the header is intact)."""
    write_gguf(path, GGUFSpec(name="Cut"))
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 3000)
    return path


@pytest.fixture(scope="module")
def faulty(tmp_path_factory, smollm2_path):
    models = tmp_path_factory.mktemp("faulty-models")
    shutil.copy(smollm2_path, models / "victim.gguf")
    # valid GGUF header and tensor table (llama arch), but not the tensors a llama model needs
    write_gguf(models / "broken.gguf", GGUFSpec(name="Broken"))
    truncated_tiny_gguf(models / "cut.gguf")
    calls: list[str] = []

    def counting_loader(model, settings):
        calls.append(model.id)
        return load_engine(model, settings)

    settings = Settings(models_dirs=[models], n_ctx=512, n_slots=2, n_threads=1, idle_ttl_s=0)
    with running_server(settings, loader=counting_loader) as server:
        server.models_dir = models
        server.load_calls = calls
        yield server


def test_model_that_fails_to_load_is_a_503_for_it_alone_and_retried(faulty, smollm2_path):
    error = assert_envelope(chat(faulty.base_url, "broken"), 503, "model_load_failed")
    assert error["type"] == "server_error" and "broken.gguf" in error["message"]
    assert chat(faulty.base_url, DEFAULT).status_code == 200
    assert_envelope(chat(faulty.base_url, "broken"), 503, "model_load_failed")
    assert faulty.load_calls.count("broken") == 2  # the failure is not cached: a retry loads again
    # once the file is repaired (replaced atomically) the same id serves
    staging = faulty.models_dir / "broken.tmp"
    shutil.copy(smollm2_path, staging)
    os.replace(staging, faulty.models_dir / "broken.gguf")
    answer = chat(faulty.base_url, "broken")
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]


def test_truncated_tensor_data_is_refused_at_discovery(faulty):
    assert_envelope(chat(faulty.base_url, "cut"), 404, "model_not_found")
    reasons = {path.name: reason for path, reason in faulty.state.registry.failures().items()}
    assert "past the end of the file" in reasons["cut.gguf"]
    assert chat(faulty.base_url, DEFAULT).status_code == 200


def test_model_deleted_while_loaded(faulty):
    assert chat(faulty.base_url, "victim").status_code == 200
    assert faulty.state.pool.is_loaded("victim")
    (faulty.models_dir / "victim.gguf").unlink()
    assert_envelope(chat(faulty.base_url, "victim"), 404, "model_not_found")
    assert chat(faulty.base_url, DEFAULT).status_code == 200
    assert httpx.get(f"http://127.0.0.1:{faulty.port}/health").status_code == 200


def test_model_deleted_before_first_load(faulty, smollm2_path):
    shutil.copy(smollm2_path, faulty.models_dir / "fleeting.gguf")
    assert "fleeting" in {m["id"] for m in httpx.get(faulty.base_url + "/models").json()["data"]}
    (faulty.models_dir / "fleeting.gguf").unlink()
    assert_envelope(chat(faulty.base_url, "fleeting"), 404, "model_not_found")


# Truncation runs the server as a subprocess: llama.cpp maps the weights, so a bug here can end the
# process with SIGBUS, which must not take the test run down with it.

@pytest.fixture
def served_copy(tmp_path, smollm2_path):
    shutil.copy(smollm2_path, tmp_path / "victim.gguf")
    server = Served(tmp_path, grace_s=2)
    yield server, tmp_path / "victim.gguf"
    server.stop()


def halve(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def test_model_truncated_while_idle(served_copy):
    server, path = served_copy
    base = f"http://127.0.0.1:{server.port}/v1"
    assert chat(base, "victim").status_code == 200
    halve(path)  # the header survives; half of the tensor data does not
    response = chat(base, "victim")
    assert response.status_code in (404, 503), response.text
    assert_envelope(response, response.status_code,
                    "model_not_found" if response.status_code == 404 else "model_load_failed")
    assert chat(base, DEFAULT).status_code == 200
    assert server.proc.poll() is None


def test_model_truncated_during_generation(served_copy):
    server, path = served_copy
    base = f"http://127.0.0.1:{server.port}/v1"
    body = {"model": "victim", "prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "max_tokens": 400, "temperature": 0,
            "stream": True}
    lines: list[str] = []
    try:
        with httpx.stream("POST", base + "/completions", json=body, timeout=120) as response:
            for line in response.iter_lines():
                lines.append(line)
                if sum(item.startswith("data: {") for item in lines) == 3:
                    halve(path)  # counting goes on for hundreds of tokens: the generation is mid-way
    except httpx.HTTPError:
        pass  # a cut stream is acceptable; a dead server is not
    time.sleep(0.5)
    assert server.proc.poll() is None, f"server died with status {server.proc.poll()}"
    assert chat(base, DEFAULT).status_code == 200
