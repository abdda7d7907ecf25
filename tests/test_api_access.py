"""API keys, body limit, request ids and CORS, on the real server stack (scripted engine)."""

import httpx
import openai
import pytest

from minerva.settings import Settings
from tests.servers import running_server
from tests.scripted_engine import Script, scripted_loader


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    settings = Settings(models_dirs=[tmp_path_factory.mktemp("empty")], api_keys=["sk-one", "sk-two"],
                        max_body_bytes=4096, cors_origins=["http://app.example"])
    with running_server(settings, loader=scripted_loader(lambda p, c: Script([b"hi"]))) as server:
        yield server


def test_keys_required_on_v1_but_not_health(locked):
    with pytest.raises(openai.AuthenticationError) as raised:
        openai.OpenAI(base_url=locked.base_url, api_key="wrong", max_retries=0).models.list()
    assert raised.value.body["type"] == "authentication_error"
    assert httpx.get(locked.base_url + "/models").status_code == 401
    assert httpx.get(f"http://127.0.0.1:{locked.port}/health").status_code == 200
    for key in ("sk-one", "sk-two"):
        client = openai.OpenAI(base_url=locked.base_url, api_key=key, max_retries=0)
        assert client.chat.completions.create(model="smollm2-135m-instruct",
                                              messages=[{"role": "user", "content": "x"}]).choices


def test_x_api_key_is_accepted_like_bearer(locked):
    """Anthropic clients send the key as x-api-key; a wrong one is refused the same way."""
    assert httpx.get(locked.base_url + "/models", headers={"x-api-key": "sk-two"}).status_code == 200
    wrong = httpx.get(locked.base_url + "/models", headers={"x-api-key": "sk-nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    other_scheme = httpx.get(locked.base_url + "/models", headers={"authorization": "Basic abc", "x-api-key": "sk-one"})
    assert other_scheme.status_code == 200  # a non-Bearer Authorization does not hide the x-api-key


def test_body_over_limit_is_413(locked):
    headers = {"authorization": "Bearer sk-one"}
    big = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "x" * 10_000}]}
    response = httpx.post(locked.base_url + "/chat/completions", json=big, headers=headers)
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"

    def chunked():
        for _ in range(10):
            yield b" " * 1000

    streamed = httpx.post(locked.base_url + "/chat/completions", content=chunked(),
                          headers={**headers, "content-type": "application/json"})
    assert streamed.status_code == 413


def test_request_id_is_returned_and_echoed(locked):
    headers = {"authorization": "Bearer sk-one"}
    response = httpx.get(locked.base_url + "/models", headers=headers)
    assert response.headers["x-request-id"].startswith("req_")
    mine = httpx.get(locked.base_url + "/models", headers={**headers, "x-request-id": "abc123"})
    assert mine.headers["x-request-id"] == "abc123"


def test_cors_only_for_configured_origins(locked):
    preflight = {"origin": "http://app.example", "access-control-request-method": "POST"}
    ok = httpx.options(locked.base_url + "/chat/completions", headers=preflight)
    assert ok.headers.get("access-control-allow-origin") == "http://app.example"
    other = httpx.options(locked.base_url + "/chat/completions", headers={**preflight, "origin": "http://evil"})
    assert other.headers.get("access-control-allow-origin") is None


def test_model_names_never_reach_the_file_system(locked):
    client = openai.OpenAI(base_url=locked.base_url, api_key="sk-one", max_retries=0)
    for name in ("../../etc/passwd", "/etc/passwd", "..", "~/x.gguf"):
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=name, messages=[{"role": "user", "content": "x"}])
        # the SDK refuses '..' path segments itself, so retrieve goes through httpx
        response = httpx.get(f"{locked.base_url}/models/{name}", headers={"authorization": "Bearer sk-one"})
        assert response.status_code == 404 and "error" in response.json()
