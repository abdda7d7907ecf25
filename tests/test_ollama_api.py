"""Ollama's native API (/api/…) through the official `ollama` Python client: on the real SmolLM2 (list, show,
ps, chat streamed and not, tools, a `format` schema, generate, keep_alive), on MiniLM (embed, embeddings), and on
a scripted engine for what a small model cannot show on demand (tool calls, thinking, fill-in-the-middle, the
sampling options the engine receives, a failure mid-stream); NDJSON framing checked byte by byte."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import jsonschema
import numpy as np
import ollama
import pytest

from minerva.core.errors import InvalidRequestError
from minerva.dialects.ollama.keep_alive import FOREVER, keep_alive_seconds
from minerva.engine.base import GenerationRequest
from minerva.settings import Settings
from tests.model_fixtures import CHATML_TEMPLATE, GGUFSpec, default_vocab, minilm_dir, write_gguf  # noqa: F401
from tests.scripted_engine import Script, ScriptedEngine
from tests.servers import running_server

MODEL = "smollm2-135m-instruct"
GREEDY = {"temperature": 0}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                   "required": ["city"]}}}
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150}},
          "required": ["name", "age"], "additionalProperties": False}


def host_of(server) -> str:
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def client(default_server) -> ollama.Client:
    """The ollama client on the default server (OLLAMA_HOST would be this root)."""
    return ollama.Client(host=host_of(default_server), timeout=300)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def ndjson_objects(response: httpx.Response) -> list[dict]:
    """The body of a streamed response, checked byte by byte: one JSON object per `\\n`-terminated line."""
    assert response.headers["content-type"] == "application/x-ndjson"
    raw = response.read()
    assert raw.endswith(b"\n") and not raw.startswith(b"data:")
    lines = raw.split(b"\n")[:-1]
    objects = []
    for line in lines:
        assert line and not line.endswith(b"\r"), raw
        value = json.loads(line)
        assert isinstance(value, dict), line
        objects.append(value)
    return objects


# ------------------------------------------------------------------------------------------ the real SmolLM2


def test_version_is_numeric_and_new_enough_for_copilot(default_server):
    version = httpx.get(f"{host_of(default_server)}/api/version").json()["version"]
    assert tuple(int(part) for part in version.split(".")) >= (0, 6, 4)
    assert httpx.head(f"{host_of(default_server)}/api/version").status_code == 200


def test_list_names_the_model_with_its_tag_and_details(client):
    models = client.list().models
    assert [m.model for m in models] == [f"{MODEL}:latest"]
    entry = models[0]
    assert entry.size > 50_000_000 and len(entry.digest) == 64 and entry.modified_at.tzinfo is not None
    assert entry.details.format == "gguf" and entry.details.family == "llama"
    assert entry.details.parameter_size == "134.52M" and entry.details.quantization_level == "Q4_1"


def test_show_gives_what_copilot_and_continue_read(default_server, client):
    for name in (MODEL, f"{MODEL}:latest"):
        shown = client.show(name)
        info = shown.modelinfo
        assert info["general.architecture"] == "llama" and info["llama.context_length"] == 8192
        assert info["general.basename"] == "smollm2" and info["general.parameter_count"] == 134515008
        assert info["tokenizer.ggml.tokens"] == [] and "general.name" not in info  # as Ollama shows them
        assert shown.capabilities == ["completion", "tools"]  # no FIM tokens, no reasoning markers
        assert "<|im_start|>" in shown.template and shown.details.family == "llama"
        assert shown.parameters.split() == ["num_ctx", "2048"]  # the context a request gets here
    legacy = httpx.post(f"{host_of(default_server)}/api/show", json={"name": MODEL, "verbose": True}).json()
    assert len(legacy["tensors"]) == 272 and legacy["tensors"][0].keys() == {"name", "type", "shape"}


def test_chat_whole_and_streamed_agree(client):
    kwargs = dict(model=MODEL, messages=user("Name a colour."), options={**GREEDY, "num_predict": 12})
    whole = client.chat(**kwargs)
    assert whole.done and whole.done_reason in ("stop", "length") and whole.message.role == "assistant"
    assert whole.message.content.strip() and whole.model == MODEL
    assert 0 < whole.eval_count <= 12 and whole.prompt_eval_count > 5
    assert whole.load_duration + whole.prompt_eval_duration + whole.eval_duration <= whole.total_duration
    assert whole.prompt_eval_duration > 0 and whole.eval_duration > 0
    chunks = list(client.chat(stream=True, **kwargs))
    assert all(not c.done for c in chunks[:-1]) and chunks[-1].done and chunks[-1].message.content == ""
    assert "".join(c.message.content for c in chunks) == whole.message.content
    assert chunks[-1].eval_count == whole.eval_count and chunks[-1].done_reason == whole.done_reason


def test_ndjson_framing_byte_by_byte(default_server):
    body = {"model": MODEL, "messages": user("Say hello."), "options": {**GREEDY, "num_predict": 6}}
    with httpx.stream("POST", f"{host_of(default_server)}/api/chat", json=body, timeout=120) as response:
        assert response.status_code == 200
        objects = ndjson_objects(response)
    assert len(objects) >= 2 and [o["done"] for o in objects] == [False] * (len(objects) - 1) + [True]
    assert objects[-1]["done_reason"] == "length" and objects[-1]["eval_count"] == 6
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_duration"):
        assert isinstance(objects[-1][key], int) and objects[-1][key] > 0, key
    whole = httpx.post(f"{host_of(default_server)}/api/chat", json={**body, "stream": False}, timeout=120)
    assert whole.headers["content-type"] == "application/json" and whole.content.count(b"\n") == 0
    assert whole.json()["message"]["content"] == "".join(o["message"]["content"] for o in objects)


def test_generate_through_the_template_and_raw(client):
    options = {**GREEDY, "num_predict": 16}
    templated = client.generate(model=MODEL, prompt="What is the capital of France?", system="Answer briefly.",
                                options=options)
    chatted = client.chat(model=MODEL, options=options, messages=[
        {"role": "system", "content": "Answer briefly."}, *user("What is the capital of France?")])
    assert templated.done and templated.response.strip() and templated.response == chatted.message.content
    assert templated.prompt_eval_count == chatted.prompt_eval_count  # the same prompt, through the template
    raw = client.generate(model=MODEL, prompt="The capital of France is", raw=True,
                          options={**GREEDY, "num_predict": 4})
    assert raw.response.strip() and raw.prompt_eval_count < templated.prompt_eval_count  # no template around it
    parts = list(client.generate(model=MODEL, prompt="The capital of France is", raw=True, stream=True,
                                 options={**GREEDY, "num_predict": 4}))
    assert "".join(p.response for p in parts) == raw.response and parts[-1].done_reason == "length"


def test_format_schema_is_enforced(client):
    for stream in (False, True):
        kwargs = dict(model=MODEL, messages=user("Describe a person as JSON."), format=PERSON,
                      options={**GREEDY, "num_predict": 80})
        if stream:
            text = "".join(c.message.content for c in client.chat(stream=True, **kwargs))
        else:
            text = client.chat(**kwargs).message.content
        jsonschema.validate(json.loads(text), PERSON)
    json_object = client.generate(model=MODEL, prompt="Give me a JSON object with a greeting.", format="json",
                                  options={**GREEDY, "num_predict": 48})
    assert isinstance(json.loads(json_object.response), dict)


def test_tools_answer_in_ollamas_shape(client):
    response = client.chat(model=MODEL, messages=user("What is the weather in Paris? Use the tool."),
                           tools=[WEATHER], options={**GREEDY, "num_predict": 96})
    calls = response.message.tool_calls or []
    if calls:  # greedy SmolLM2 may answer or call: a call has object arguments that validate
        assert calls[0].function.name == "get_weather" and isinstance(calls[0].function.arguments, dict)
        jsonschema.validate(dict(calls[0].function.arguments), WEATHER["function"]["parameters"])
        assert response.done_reason == "stop"
    else:
        assert response.message.content.strip()


def test_logprobs_one_per_generated_token(client):
    response = client.chat(model=MODEL, messages=user("Hi"), logprobs=True, top_logprobs=2,
                           options={**GREEDY, "num_predict": 5})
    assert len(response.logprobs) == response.eval_count == 5
    first = response.logprobs[0]
    assert len(first.top_logprobs) == 2 and first.top_logprobs[0].logprob >= first.top_logprobs[1].logprob
    assert response.message.content.startswith(first.token)
    chunks = list(client.chat(model=MODEL, messages=user("Hi"), logprobs=True, top_logprobs=2, stream=True,
                              options={**GREEDY, "num_predict": 5}))
    assert [entry.token for c in chunks for entry in c.logprobs or ()] == [e.token for e in response.logprobs]


@pytest.mark.parametrize(("value", "seconds"), [
    (None, None), (300, 300.0), (0, 0.0), ("0", 0.0), ("5m", 300.0), ("30s", 30.0), ("1h", 3600.0),
    ("1h30m", 5400.0), ("250ms", 0.25), ("1.5h", 5400.0), ("10", 10.0), (-1, FOREVER), ("-1m", FOREVER),
    ("-5", FOREVER)])
def test_keep_alive_durations(value, seconds):
    assert keep_alive_seconds(value) == seconds


@pytest.mark.parametrize("value", ["five minutes", "m", "", "5x", "1h-3m", "5 m"])
def test_keep_alive_refuses_what_is_no_duration(value):
    with pytest.raises(InvalidRequestError):
        keep_alive_seconds(value)


def test_keep_alive_load_ps_and_unload(client):
    loaded = client.chat(model=MODEL, messages=[], keep_alive="30s")
    assert loaded.done and loaded.done_reason == "load"
    [entry] = client.ps().models
    assert entry.model == f"{MODEL}:latest" and entry.size_vram == 0 and entry.context_length == 2048
    assert timedelta(0) < entry.expires_at - datetime.now(timezone.utc) <= timedelta(seconds=30)
    client.generate(model=MODEL, prompt="Hi", keep_alive=-1, options={"num_predict": 1})
    assert client.ps().models[0].expires_at.year > datetime.now().year + 100  # never unloads for idleness
    answered = client.chat(model=MODEL, messages=user("Hi"), keep_alive=0, options={"num_predict": 2})
    assert answered.done and client.ps().models == []
    client.generate(model=MODEL, keep_alive="5m")
    assert [m.model for m in client.ps().models] == [f"{MODEL}:latest"]
    unloaded = client.generate(model=MODEL, keep_alive=0)
    assert unloaded.done_reason == "unload" and client.ps().models == []


def test_errors_are_ollamas_envelope(default_server, client):
    host = host_of(default_server)
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="nope:7b", messages=user("Hi"))
    assert missing.value.status_code == 404 and missing.value.error == "model 'nope:7b' not found"
    for path, body in [("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": 3}]}),
                       ("/api/chat", {"model": MODEL, "messages": user("x"), "options": {"temperature": -1}}),
                       ("/api/chat", {"model": MODEL, "messages": user("x"), "format": "xml"}),
                       ("/api/chat", {"model": MODEL, "messages": user("x"), "keep_alive": "five minutes"}),
                       ("/api/chat", {"model": MODEL, "messages": user("x"), "think": True}),
                       ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}),
                       ("/api/generate", {"model": MODEL, "prompt": "def f(", "suffix": "return 1"}),
                       ("/api/generate", {"model": MODEL, "prompt": "x", "template": "{{ .Prompt }}"}),
                       ("/api/show", {}),
                       ("/api/embed", {"model": MODEL, "input": "x"})]:
        response = httpx.post(host + path, json=body, timeout=60)
        assert response.status_code == 400, (path, body, response.text)
        assert set(response.json()) == {"error"} and response.json()["error"], response.text
    assert httpx.post(host + "/api/chat", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    for method, path in [("POST", "/api/pull"), ("POST", "/api/push"), ("POST", "/api/create"),
                         ("POST", "/api/copy"), ("DELETE", "/api/delete")]:
        body = {"source": MODEL, "destination": "x"} if path == "/api/copy" else {"model": MODEL}
        response = httpx.request(method, host + path, json=body)
        assert response.status_code == 501 and "minerva" in response.json()["error"], (path, response.text)
    with pytest.raises(ollama.ResponseError) as unknown:
        client.show("nope")
    assert unknown.value.status_code == 404


# ------------------------------------------------------------------------------------------ MiniLM embeddings


@pytest.fixture(scope="module")
def embed_client(minilm_dir, tmp_path_factory):  # noqa: F811
    pytest.importorskip("torch")
    settings = Settings(models_dirs=[tmp_path_factory.mktemp("no-models")], models={"minilm": minilm_dir},
                        n_threads=1, n_slots=1, n_ctx=512)
    with running_server(settings) as server:
        yield ollama.Client(host=host_of(server), timeout=300), server


def test_embed_and_the_older_embeddings(embed_client):
    client, server = embed_client
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."]
    embedded = client.embed(model="minilm", input=texts)
    vectors = np.array(embedded.embeddings)
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedded.prompt_eval_count > 3 and embedded.total_duration >= embedded.load_duration > 0
    openai_vectors = httpx.post(f"{host_of(server)}/v1/embeddings", json={"model": "minilm", "input": texts}).json()
    reference = np.array([item["embedding"] for item in openai_vectors["data"]])
    assert np.allclose(vectors, reference, atol=1e-5)
    similar = vectors @ vectors.T
    assert similar[0, 1] > similar[0, 2]
    one = client.embeddings(model="minilm", prompt=texts[0]).embedding
    assert np.allclose(one, vectors[0], atol=1e-5)  # MiniLM's pipeline normalises already
    short = np.array(client.embed(model="minilm", input=texts[0], dimensions=64).embeddings)
    assert short.shape == (1, 64) and np.isclose(np.linalg.norm(short), 1.0)
    long_text = "word " * 2000
    assert len(client.embed(model="minilm", input=long_text).embeddings[0]) == 384  # cut to the context
    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(model="minilm", input=long_text, truncate=False)
    assert refused.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as not_chat:
        client.chat(model="minilm", messages=user("Hi"))
    assert not_chat.value.status_code == 400 and not_chat.value.error == '"minilm" does not support chat'
    assert client.embed(model="minilm", input="").embeddings == []  # an empty input only loads the model
    assert client.embed(model="minilm", input="Hi", keep_alive=0).embeddings and client.ps().models == []


# ------------------------------------------------------------------------------------------ a scripted engine

QWEN3_TEMPLATE = Path(__file__).parent / "data" / "templates" / "qwen3.jinja"
THINKER = "qwen3-tiny"
CODER = "coder-tiny"
FIM_MARKERS = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")
MARKER_BASE = 0xE000  # private-use code points: the scripted engine's ids for the FIM marker tokens


def _call(name: str, arguments: dict) -> bytes:
    return b"<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}).encode() + b"\n</tool_call>"


def _pieces(text: bytes, size: int = 4) -> list[bytes]:
    return [text[i: i + size] for i in range(0, len(text), size)]


SCRIPTS = {
    "#call": lambda: Script(_pieces(_call("get_weather", {"city": "Paris"}))),
    "#two-calls": lambda: Script(_pieces(_call("get_weather", {"city": "Paris"}) + b"\n"
                                         + _call("get_weather", {"city": "Rome"}))),
    "#cut-call": lambda: Script(_pieces(b'<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa')),
    "#think": lambda: Script(_pieces(b"<think>\nThe user greets.\n</think>\n\nHello there!")),
    "#stop": lambda: Script([b"Hello", b" STOP", b" more"]),
    "#separators": lambda: Script(["a\u2028b".encode(), "\x85c\u2029".encode()]),
    "#fail": lambda: Script([b"a", b"b", b"c"], fail_after=2, failure=InvalidRequestError("grammar dead end")),
}


def choose(prompt: str, call: int) -> Script:
    for marker in sorted(SCRIPTS, key=len, reverse=True):
        if marker in prompt:
            return SCRIPTS[marker]()
    return Script([b"ok"])


@dataclass
class RecordingEngine(ScriptedEngine):
    """The scripted engine, keeping each GenerationRequest; `markers` read as one token each (FIM tokens)."""

    markers: tuple[str, ...] = ()
    requests: list[GenerationRequest] = field(default_factory=list)

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        ids, position = [], 0
        while position < len(text):
            marker = next((m for m in self.markers if parse_special and text.startswith(m, position)), None)
            if marker is not None:
                ids.append(MARKER_BASE + self.markers.index(marker))
                position += len(marker)
            else:
                ids.append(ord(text[position]))
                position += 1
        return ids

    def generate(self, request: GenerationRequest):
        self.requests.append(request)
        return super().generate(request)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    write_gguf(models / f"{THINKER}.gguf", GGUFSpec(name="Qwen3 Tiny", chat_template=QWEN3_TEMPLATE.read_text()))
    write_gguf(models / f"{CODER}.gguf", GGUFSpec(name="Coder Tiny", chat_template=CHATML_TEMPLATE,
                                                  vocab=[*default_vocab(300), *FIM_MARKERS]))
    engines: dict[str, RecordingEngine] = {}

    def load(model, settings) -> RecordingEngine:
        engines[model.id] = RecordingEngine(model.info, choose, markers=FIM_MARKERS if model.id == CODER else ())
        return engines[model.id]

    settings = Settings(models_dirs=[models], include_default_model=False, keepalive_interval_s=0.05)
    with running_server(settings, loader=load) as server:
        server.engines = engines
        yield server


@pytest.fixture(scope="module")
def scripted_client(scripted) -> ollama.Client:
    return ollama.Client(host=host_of(scripted), timeout=60)


def test_tool_calls_whole_with_object_arguments(scripted, scripted_client):
    for stream in (False, True):
        if stream:
            chunks = list(scripted_client.chat(model=THINKER, messages=user("#two-calls"), tools=[WEATHER],
                                               stream=True))
            calls = [call for c in chunks for call in c.message.tool_calls or ()]
            assert sum(1 for c in chunks if c.message.tool_calls) == 2  # each call arrives whole, in one chunk
            assert chunks[-1].done_reason == "stop"
        else:
            response = scripted_client.chat(model=THINKER, messages=user("#two-calls"), tools=[WEATHER])
            calls = response.message.tool_calls
            assert response.done_reason == "stop" and response.message.content == ""
        assert [(c.function.name, c.function.arguments) for c in calls] == [
            ("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]
    raw = httpx.post(f"{host_of(scripted)}/api/chat", timeout=30, json={
        "model": THINKER, "messages": user("#call"), "tools": [WEATHER], "stream": False}).json()
    [call] = raw["message"]["tool_calls"]
    assert call["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}
    assert call["id"].startswith("call_")


def test_a_call_cut_short_is_never_sent(scripted_client):
    response = scripted_client.chat(model=THINKER, messages=user("#cut-call"), tools=[WEATHER],
                                    options={"num_predict": 100})
    assert not response.message.tool_calls and response.done_reason == "stop"
    chunks = list(scripted_client.chat(model=THINKER, messages=user("#cut-call"), tools=[WEATHER], stream=True))
    assert not any(c.message.tool_calls for c in chunks)


def test_tool_results_reach_the_prompt(scripted, scripted_client):
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    scripted_client.chat(model=THINKER, tools=[WEATHER], messages=[
        *user("What is the weather?"), {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_name": "get_weather", "content": "Sunny, 24 degrees."}])
    prompt = scripted.engines[THINKER].prompts[-1]
    assert "<tool_response>\nSunny, 24 degrees.\n</tool_response>" in prompt
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt


def test_think_is_reasoning_in_message_thinking(scripted, scripted_client):
    assert "thinking" in scripted_client.show(THINKER).capabilities
    response = scripted_client.chat(model=THINKER, messages=user("#think"), think=True)
    assert response.message.thinking.strip() == "The user greets." and response.message.content == "Hello there!"
    chunks = list(scripted_client.chat(model=THINKER, messages=user("#think"), think=True, stream=True))
    assert "".join(c.message.thinking or "" for c in chunks).strip() == "The user greets."
    generated = scripted_client.generate(model=THINKER, prompt="#think", think="high")
    assert generated.thinking.strip() == "The user greets." and generated.response == "Hello there!"


def test_options_reach_the_engine(scripted, scripted_client):
    engine_requests = lambda: scripted.engines[THINKER].requests  # noqa: E731
    options = {"num_predict": 17, "temperature": 0.3, "top_k": 7, "top_p": 0.8, "min_p": 0.1, "seed": 42,
               "repeat_penalty": 1.2, "repeat_last_n": 33, "presence_penalty": 0.4, "frequency_penalty": 0.6,
               "num_ctx": 999_999, "mirostat": 0, "num_gpu": 1}
    scripted_client.chat(model=THINKER, messages=user("Hi"), options=options)
    sent = engine_requests()[-1]
    sampling = sent.sampling
    assert sent.max_tokens == 17
    assert (sampling.temperature, sampling.top_k, sampling.top_p, sampling.min_p, sampling.seed) == (
        pytest.approx(0.3), 7, pytest.approx(0.8), pytest.approx(0.1), 42)
    assert (sampling.repeat_penalty, sampling.penalty_last_n) == (pytest.approx(1.2), 33)
    assert (sampling.presence_penalty, sampling.frequency_penalty) == (pytest.approx(0.4), pytest.approx(0.6))
    scripted_client.generate(model=THINKER, prompt="Hi", options={"num_predict": -1, "seed": -1})
    assert engine_requests()[-1].max_tokens == Settings().default_max_tokens
    assert engine_requests()[-1].sampling.seed is None
    scripted_client.generate(model=THINKER, prompt="Hi", raw=True, options={"num_predict": -2})
    last = engine_requests()[-1]
    assert last.max_tokens == scripted.engines[THINKER].n_ctx - len(last.prompt_tokens)  # to the end of the context
    stopped = scripted_client.chat(model=THINKER, messages=user("#stop"), options={"stop": ["STOP"]})
    assert stopped.message.content == "Hello " and stopped.done_reason == "stop"


def test_measured_counts_and_durations(scripted, scripted_client):
    response = scripted_client.chat(model=THINKER, messages=user("#think"))
    sent = scripted.engines[THINKER].requests[-1]
    assert response.prompt_eval_count == len(sent.prompt_tokens)
    assert response.eval_count == len(SCRIPTS["#think"]().pieces)
    assert response.load_duration + response.prompt_eval_duration + response.eval_duration <= response.total_duration


def test_fill_in_the_middle_with_the_models_tokens(scripted, scripted_client):
    assert "insert" in scripted_client.show(CODER).capabilities
    assert "insert" not in scripted_client.show(THINKER).capabilities
    answered = scripted_client.generate(model=CODER, prompt="def f(", suffix="    return x\n")
    assert answered.response == "ok" and answered.done
    prefix, suffix, middle = (MARKER_BASE + i for i in range(3))
    assert list(scripted.engines[CODER].requests[-1].prompt_tokens) == [
        prefix, *map(ord, "def f("), suffix, *map(ord, "    return x\n"), middle]
    completion = httpx.post(f"{host_of(scripted)}/v1/completions", timeout=30,
                            json={"model": CODER, "prompt": "a = ", "suffix": "\nprint(a)"})  # the same path
    assert completion.status_code == 200 and completion.json()["choices"][0]["text"] == "ok"
    assert list(scripted.engines[CODER].requests[-1].prompt_tokens) == [
        prefix, *map(ord, "a = "), suffix, *map(ord, "\nprint(a)"), middle]
    with pytest.raises(ollama.ResponseError) as refused:
        scripted_client.generate(model=THINKER, prompt="def f(", suffix="return x")
    assert refused.value.status_code == 400 and "fill-in-the-middle" in refused.value.error


def test_line_separators_never_split_a_line(scripted, scripted_client):
    chunks = list(scripted_client.chat(model=THINKER, messages=user("#separators"), stream=True))
    assert "".join(c.message.content for c in chunks) == "a\u2028b\x85c\u2029"
    with httpx.stream("POST", f"{host_of(scripted)}/api/generate", timeout=30,
                      json={"model": THINKER, "prompt": "#separators", "raw": True}) as response:
        objects = ndjson_objects(response)
    assert "".join(o["response"] for o in objects) == "a\u2028b\x85c\u2029"


def test_a_failure_mid_stream_is_an_error_line(scripted, scripted_client):
    with httpx.stream("POST", f"{host_of(scripted)}/api/chat", timeout=30,
                      json={"model": THINKER, "messages": user("#fail")}) as response:
        assert response.status_code == 200
        objects = ndjson_objects(response)
    assert objects[-1] == {"error": "grammar dead end"} and not any(o.get("done") for o in objects)
    with pytest.raises(ollama.ResponseError) as failed:
        list(scripted_client.chat(model=THINKER, messages=user("#fail"), stream=True))
    assert failed.value.error == "grammar dead end"
    with pytest.raises(ollama.ResponseError) as whole:
        scripted_client.chat(model=THINKER, messages=user("#fail"))
    assert whole.value.status_code == 400
