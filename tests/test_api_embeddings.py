"""POST /v1/embeddings with the real all-MiniLM-L6-v2 through the openai SDK, against sentence-transformers."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest
from conftest import running_server
from tests.model_fixtures import minilm_dir  # noqa: F401 - session fixture

from minerva.settings import Settings

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

MODEL = "minilm"
SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome.",
             "Der Himmel ist blau."]


@pytest.fixture(scope="module")
def embed_server(minilm_dir, tmp_path_factory):  # noqa: F811
    """MiniLM (SafeTensors) plus the embedded SmolLM2 GGUF chat model."""
    empty = tmp_path_factory.mktemp("no-models")
    settings = Settings(models_dirs=[empty], models={MODEL: minilm_dir}, n_threads=1, n_slots=1, n_ctx=512)
    with running_server(settings) as server:
        yield server


@pytest.fixture(scope="module")
def embed_client(embed_server):
    return openai.OpenAI(base_url=embed_server.base_url, api_key="sk-test", max_retries=0, timeout=120)


def vectors(response) -> np.ndarray:
    return np.array([item.embedding for item in sorted(response.data, key=lambda d: d.index)], dtype=np.float64)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_matches_sentence_transformers(embed_client, minilm_dir):  # noqa: F811
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(minilm_dir), device="cpu").encode(SENTENCES)
    response = embed_client.embeddings.create(model=MODEL, input=SENTENCES, encoding_format="float")
    ours = vectors(response)
    assert ours.shape == (4, 384)
    assert np.all(cosine(ours, reference.astype(np.float64)) > 1 - 1e-4)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)  # the pipeline ends in Normalize


def test_response_shape_usage_and_ranking(embed_client):
    response = embed_client.embeddings.create(model=MODEL, input=SENTENCES[:3], encoding_format="float")
    assert response.object == "list" and response.model == MODEL
    assert [d.index for d in response.data] == [0, 1, 2]
    assert all(d.object == "embedding" for d in response.data)
    assert response.usage.prompt_tokens == response.usage.total_tokens > 10
    query, paraphrase, unrelated = vectors(response)
    assert cosine(query, paraphrase) > cosine(query, unrelated) + 0.2


def test_base64_decodes_to_the_same_floats(embed_server):
    body = {"model": MODEL, "input": SENTENCES[0]}
    floats = httpx.post(f"{embed_server.base_url}/embeddings", json=body, timeout=60).json()
    packed = httpx.post(f"{embed_server.base_url}/embeddings", json={**body, "encoding_format": "base64"},
                        timeout=60).json()
    decoded = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, np.array(floats["data"][0]["embedding"], dtype=np.float32), atol=1e-7)


def test_sdk_default_base64_round_trip(embed_client):
    default = vectors(embed_client.embeddings.create(model=MODEL, input=SENTENCES[1]))  # the SDK asks for base64
    explicit = vectors(embed_client.embeddings.create(model=MODEL, input=SENTENCES[1], encoding_format="float"))
    assert np.allclose(default, explicit, atol=1e-6)


def test_dimensions_truncate_then_normalise(embed_client):
    full = vectors(embed_client.embeddings.create(model=MODEL, input=SENTENCES[2], encoding_format="float"))[0]
    short = vectors(embed_client.embeddings.create(model=MODEL, input=SENTENCES[2], dimensions=64,
                                                   encoding_format="float"))[0]
    assert short.shape == (64,)
    assert abs(np.linalg.norm(short) - 1.0) < 1e-6
    assert np.allclose(short, full[:64] / np.linalg.norm(full[:64]), atol=1e-6)
    with pytest.raises(openai.BadRequestError) as info:
        embed_client.embeddings.create(model=MODEL, input="x", dimensions=385)
    assert info.value.param == "dimensions"


def test_token_id_inputs(embed_client):
    text = vectors(embed_client.embeddings.create(model=MODEL, input="hello world", encoding_format="float"))
    ids = [101, 7592, 2088, 102]  # [CLS] hello world [SEP] in MiniLM's vocabulary
    one = vectors(embed_client.embeddings.create(model=MODEL, input=ids, encoding_format="float"))
    many = vectors(embed_client.embeddings.create(model=MODEL, input=[ids, ids[:2] + ids[3:]],
                                                  encoding_format="float"))
    assert np.allclose(text, one, atol=1e-5)
    assert many.shape == (2, 384) and np.allclose(many[0], one[0], atol=1e-5)


@pytest.mark.parametrize("bad_input", ["", [], [""], [[]]])
def test_empty_input_is_400(embed_client, bad_input):
    with pytest.raises(openai.BadRequestError) as info:
        embed_client.embeddings.create(model=MODEL, input=bad_input)
    assert info.value.param == "input"


def test_over_long_input_is_context_length_exceeded(embed_client):
    with pytest.raises(openai.BadRequestError) as info:
        embed_client.embeddings.create(model=MODEL, input="word " * 600)
    assert info.value.code == "context_length_exceeded"


def test_chat_model_asked_for_embeddings_is_400(embed_client):
    with pytest.raises(openai.BadRequestError) as info:
        embed_client.embeddings.create(model="smollm2-135m-instruct", input="hello")
    assert info.value.param == "model"


def test_embedding_model_asked_for_chat_is_400(embed_server):
    response = httpx.post(f"{embed_server.base_url}/chat/completions", timeout=60,
                          json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"


def test_models_list_says_which_models_embed(embed_client):
    models = {m.id: m for m in embed_client.models.list().data}
    assert models[MODEL].model_extra["capabilities"] == ["embeddings"]
    assert "embeddings" not in models["smollm2-135m-instruct"].model_extra["capabilities"]
