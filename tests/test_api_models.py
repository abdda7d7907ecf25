"""GET /v1/models and /v1/models/{id} through the openai SDK, and the error envelope."""

import json
import shutil

import httpx
import openai
import pytest

from minerva.settings import Settings
from tests.servers import running_server


@pytest.fixture(scope="module")
def models_server(tmp_path_factory, smollm2_path):
    directory = tmp_path_factory.mktemp("models")
    shutil.copy(smollm2_path, directory / "Copy-Of-Smol.gguf")
    (directory / "corrupt.gguf").write_bytes(b"GGUF" + b"\x00" * 10)
    settings = Settings(models_dirs=[directory], models={"org/smol": smollm2_path})
    with running_server(settings) as server:
        server.models_dir = directory
        yield server


@pytest.fixture(scope="module")
def sdk(models_server):
    return openai.OpenAI(base_url=models_server.base_url, api_key="x", max_retries=0)


def test_list_has_metadata(sdk):
    models = {m.id: m for m in sdk.models.list()}
    assert set(models) == {"org/smol", "copy-of-smol"}  # the default's path is the explicit one
    smol = models["org/smol"].model_dump()
    assert smol["object"] == "model" and smol["owned_by"] == "local"
    assert smol["quantization"] == "Q4_1"
    assert smol["format"] == "gguf"
    assert smol["tensor_count"] == 272
    assert smol["file_size_mb"] == round(smol["file_size_mb"], 2) > 90
    assert smol["context_length"] == 8192
    assert smol["architecture"] == "llama"
    assert smol["loaded"] is False
    assert isinstance(smol["created"], int)
    assert len(json.dumps(smol)) < 1024


def test_retrieve_id_with_slash(sdk):
    model = sdk.models.retrieve("org/smol")
    assert model.id == "org/smol"


def test_unknown_model_is_404_envelope(sdk, models_server):
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.models.retrieve("nope")
    body = raised.value.body
    assert body == {"message": "The model 'nope' does not exist.", "type": "invalid_request_error",
                    "param": "model", "code": "model_not_found"}


def test_new_file_appears_and_removed_disappears(sdk, models_server, smollm2_path):
    added = models_server.models_dir / "Added.gguf"
    shutil.copy(smollm2_path, added)
    assert "added" in {m.id for m in sdk.models.list()}
    added.unlink()
    assert "added" not in {m.id for m in sdk.models.list()}


def test_validation_errors_are_400_envelopes(models_server):
    url = models_server.base_url + "/chat/completions"
    response = httpx.post(url, json={"model": "org/smol", "messages": [{"role": "user", "content": "hi"}],
                                     "temperature": "hot"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "temperature"
    bad_json = httpx.post(url, content=b"{nope", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["type"] == "invalid_request_error"
    missing = httpx.get(models_server.base_url + "/nothing-here")
    assert missing.status_code == 404 and "error" in missing.json()


def test_health(models_server):
    assert httpx.get(f"http://127.0.0.1:{models_server.port}/health").json()["status"] == "ok"
