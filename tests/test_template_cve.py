"""CVE-2024-34359: a chat template inside a real GGUF that tries to run a shell command is refused
with a 400 through the API, and the command never runs."""

import time
from pathlib import Path

import httpx
import jinja2
import pytest

from minerva.settings import Settings
from tests.servers import running_server
from tests.model_fixtures import GGUFSpec, write_gguf
from tests.scripted_engine import Script, scripted_loader


def cve_payload(marker: Path, match: str = '"warning" in x.__name__') -> str:
    """The published CVE-2024-34359 template, with the command aimed at `marker`."""
    return ("{% for x in ().__class__.__base__.__subclasses__() %}{% if " + match + " %}"
            "{{x()._module.__builtins__['__import__']('os').popen(\"touch " + str(marker) + "\")}}"
            "{%endif%}{% endfor %}")


def wait_for(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return path.exists()


def test_payload_is_live_outside_a_sandbox(tmp_path):
    """Control: rendered by a plain jinja2 Environment (as the vulnerable server did) it runs."""
    marker = tmp_path / "control"
    # The published loop calls every class with "warning" in its name; once numpy is imported its
    # suppress_warnings class comes first and breaks the loop, so the control picks the intended class.
    jinja2.Environment().from_string(cve_payload(marker, 'x.__name__ == "catch_warnings"')).render()
    assert wait_for(marker, 10)


@pytest.fixture
def hostile(tmp_path):
    marker = tmp_path / "pwned"
    models = tmp_path / "models"
    models.mkdir()
    gguf_path = write_gguf(models / "hostile.gguf", GGUFSpec(name="Hostile", chat_template=cve_payload(marker)))
    settings = Settings(models_dirs=[tmp_path / "none"], models={"hostile": gguf_path}, include_default_model=False)
    loader = scripted_loader(lambda prompt, call: Script([b"fine"]))
    with running_server(settings, loader=loader) as server:
        yield server, marker


def test_hostile_template_in_a_real_gguf_is_refused(hostile):
    server, marker = hostile
    listed = httpx.get(server.base_url + "/models/hostile").json()
    assert listed["id"] == "hostile" and listed["format"] == "gguf"
    assert server.state.registry.get("hostile").info.chat_template == cve_payload(marker)
    body = {"model": "hostile", "messages": [{"role": "user", "content": "hello"}]}
    for stream in (False, True):
        response = httpx.post(server.base_url + "/chat/completions", json={**body, "stream": stream}, timeout=30)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "chat_template_unsafe"
        assert "Traceback" not in response.text
    assert not wait_for(marker, 2)
    # the model itself still serves requests that do not use its template
    done = httpx.post(server.base_url + "/completions", json={"model": "hostile", "prompt": "x"}, timeout=30)
    assert done.status_code == 200 and done.json()["choices"][0]["text"] == "fine"
    assert not marker.exists()
