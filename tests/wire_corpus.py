"""A recorded corpus of minerva's wire output (OpenAI, Anthropic Messages, Responses), kept byte for byte.

Each case is one HTTP request to one of three in-process servers: ``real`` (the embedded SmolLM2,
greedy and short, so its text is deterministic), ``scripted`` (the scripted engine, for tool-call
markup, reasoning, failures and other protocol edges) and ``locked`` (API keys and a small body
limit). A case's record is its status, its response headers and its body, with the few values
that differ from run to run replaced by placeholders (see ``normalise_body``); everything else is
compared byte for byte. Run from the repository root:

    python -m tests.wire_corpus record   # (re)write tests/data/wire_corpus/<case>.txt
    python -m tests.wire_corpus check    # compare against the recorded files and print diffs

``tests/test_wire_corpus.py`` makes the same comparison under pytest, one test per case.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import logging
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from minerva.settings import Settings
from tests.model_fixtures import GGUFSpec, write_gguf
from tests.scripted_engine import Script, scripted_loader

# The fallbacks keep the corpus recordable against the code before the redesign (commit a8f5e1a).
# minerva.errors (the old home) is tried first: with another tree's editable install on the path,
# a module this tree lacks (minerva.core) would be imported from that other tree.
try:
    from minerva.errors import InvalidRequestError
except ImportError:
    from minerva.core.errors import InvalidRequestError  # type: ignore[no-redef]
try:
    from tests.servers import RunningServer, running_server
except ImportError:
    from tests.conftest import RunningServer, running_server  # type: ignore[no-redef]

logger = logging.getLogger(__name__)

TESTS_DIR = Path(__file__).resolve().parent
CORPUS_DIR = TESTS_DIR / "data" / "wire_corpus"
QWEN3_TEMPLATE = TESTS_DIR / "data" / "templates" / "qwen3.jinja"

SMOLLM2 = "smollm2-135m-instruct"
QWEN3 = "qwen3-tiny"  # a fixture GGUF carrying Qwen3's template: hermes tool calls and <think> reasoning
API_KEY = "k"
AUTH = {"authorization": f"Bearer {API_KEY}"}
MAX_BODY_BYTES = 2048


# ---------------------------------------------------------------------------------------------
# Cases


@dataclass(frozen=True)
class Case:
    """One request: its name, the server it runs on, method, path, headers and a JSON or raw body."""

    name: str
    server: str
    method: str
    path: str
    body: Any = None  # sent as JSON when set
    raw: bytes | None = None  # sent as is (with a JSON content type) instead of body
    headers: Mapping[str, str] = field(default_factory=dict)

    def content(self) -> bytes | None:
        """The request body bytes, if any."""
        if self.raw is not None:
            return self.raw
        return None if self.body is None else json.dumps(self.body).encode()


def post(name: str, server: str, path: str, body: Any, **kwargs) -> Case:
    """A POST case."""
    return Case(name, server, "POST", path, body, **kwargs)


def user(content: str) -> list[dict]:
    """A one-message conversation."""
    return [{"role": "user", "content": content}]


def greedy_chat(content: str, max_tokens: int = 12, **fields) -> dict:
    """A real-model chat body: greedy decoding, a short answer."""
    return {"model": SMOLLM2, "messages": user(content), "temperature": 0, "max_tokens": max_tokens, **fields}


def greedy_completion(prompt: Any, max_tokens: int = 8, **fields) -> dict:
    """A real-model completion body: greedy decoding, a short answer."""
    return {"model": SMOLLM2, "prompt": prompt, "temperature": 0, "max_tokens": max_tokens, **fields}


def chat_pair(name: str, prompts: tuple[str, str], **fields) -> list[Case]:
    """A non-streamed and a streamed real-model chat case, each with its own prompt."""
    plain, streamed = prompts
    return [post(name, "real", "/v1/chat/completions", greedy_chat(plain, **fields)),
            post(name + "_stream", "real", "/v1/chat/completions", greedy_chat(streamed, stream=True, **fields))]


def completion_pair(name: str, prompts: tuple[Any, Any], **fields) -> list[Case]:
    """A non-streamed and a streamed real-model completion case, each with its own prompt."""
    plain, streamed = prompts
    return [post(name, "real", "/v1/completions", greedy_completion(plain, **fields)),
            post(name + "_stream", "real", "/v1/completions", greedy_completion(streamed, stream=True, **fields))]


def scripted_pair(name: str, path: str, body: dict, server: str = "scripted") -> list[Case]:
    """A non-streamed and a streamed case with the same body (scripted output ignores history)."""
    return [post(name, server, path, body), post(name + "_stream", server, path, {**body, "stream": True})]


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                   "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a timezone.",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 8}},
                   "required": ["tz"], "additionalProperties": False}}}
CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
               "required": ["city"], "additionalProperties": False}
TOOL_ROUND_TRIP = [
    {"role": "user", "content": "What is the weather in Madrid?"},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Madrid"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees and sunny"},
]
# About 2,100 SmolLM2 tokens: past the real server's n_ctx of 2048 (only tokenized, never decoded).
LONG_TEXT = "word " * 2100


def real_chat_cases() -> list[Case]:
    """Chat completions on the real model."""
    # A whole call in hermes markup is 26-29 SmolLM2 tokens: these cases get 40 (the grammar ends the
    # call, so the output stays short and greedy); chat_tools_required_truncated keeps 24.
    tools = {"tools": [WEATHER, TIME], "parallel_tool_calls": False, "max_tokens": 40}
    return [
        *chat_pair("chat_plain", ("What is the capital of France?", "What is the capital of Italy?")),
        post("chat_stream_include_usage", "real", "/v1/chat/completions",
             greedy_chat("Name a primary color.", stream=True, stream_options={"include_usage": True})),
        post("chat_stream_include_usage_false", "real", "/v1/chat/completions",
             greedy_chat("Name a fruit.", stream=True, stream_options={"include_usage": False})),
        *chat_pair("chat_logprobs", ("Say hello.", "Say goodbye."), max_tokens=6, logprobs=True, top_logprobs=2),
        *chat_pair("chat_n2_seed", ("Write one word about the sea.", "Write one word about the sky."),
                   max_tokens=8, n=2, seed=42, temperature=0.8),
        *chat_pair("chat_stop", ("What is the capital of Spain?", "What is the capital of Germany?"),
                   stop=[" is", ","]),
        *chat_pair("chat_max_tokens_0", ("Count to three.", "Count to four."), max_tokens=0),
        *chat_pair("chat_tools_auto", ("What is the weather in Paris?", "What is the weather in Rome?"),
                   tool_choice="auto", **{**tools, "max_tokens": 24}),  # SmolLM2 answers in text here
        *chat_pair("chat_tools_required", ("Weather in Oslo, please.", "Weather in Lima, please."),
                   tool_choice="required", **tools),
        post("chat_tools_required_truncated", "real", "/v1/chat/completions",
             greedy_chat("Weather in Bern, please.", **{**tools, "max_tokens": 24}, tool_choice="required")),
        post("chat_tools_none", "real", "/v1/chat/completions",
             greedy_chat("Weather in Kyiv, please.", **{**tools, "max_tokens": 8}, tool_choice="none")),
        post("chat_tool_result_round_trip", "real", "/v1/chat/completions",
             {**greedy_chat(""), "messages": TOOL_ROUND_TRIP, "tools": [WEATHER]}),
        *chat_pair("chat_tools_named", ("What time is it in Tokyo?", "What time is it in Cairo?"),
                   tool_choice={"type": "function", "function": {"name": "get_time"}}, **tools),
        *chat_pair("chat_json_object", ("Give a JSON object with a city.", "Give a JSON object with a name."),
                   max_tokens=20, response_format={"type": "json_object"}),
        *chat_pair("chat_json_schema", ("Which city is the capital of Japan?", "Which city is the capital of Peru?"),
                   max_tokens=20, response_format={"type": "json_schema", "json_schema": {
                       "name": "city", "schema": CITY_SCHEMA, "strict": True}}),
    ]


def real_completion_cases() -> list[Case]:
    """Text completions on the real model."""
    return [
        *completion_pair("completion_text", ("The capital of France is", "The capital of Italy is")),
        post("completion_stream_include_usage", "real", "/v1/completions",
             greedy_completion("The tallest mountain is", stream=True, stream_options={"include_usage": True})),
        *completion_pair("completion_echo", ("Roses are red,", "Violets are blue,"), max_tokens=6, echo=True),
        *completion_pair("completion_logprobs", ("One, two, three,", "A, B, C,"), max_tokens=5, logprobs=2),
        post("completion_echo_logprobs", "real", "/v1/completions",
             greedy_completion("Monday, Tuesday,", max_tokens=4, echo=True, logprobs=2)),
        # "Once upon a time, there was" and "Once upon a time" in SmolLM2 token ids
        *completion_pair("completion_token_ids", ([6403, 1980, 253, 655, 28, 665, 436], [6403, 1980, 253, 655]),
                         max_tokens=6),
        *completion_pair("completion_two_prompts", (["Cats are", "Dogs are"], ["Birds can", "Fish can"]),
                         max_tokens=6),
        *completion_pair("completion_stop", ("The sun rises in the", "The moon shines at"), stop=[","],
                         max_tokens=12),
    ]


def real_error_cases() -> list[Case]:
    """Errors from the real server: validation, unknown names, context length, wrong endpoints."""
    chat = "/v1/chat/completions"
    return [
        post("error_unknown_model", "real", chat, {**greedy_chat("Hi"), "model": "no-such-model"}),
        post("error_unknown_model_stream", "real", chat, {**greedy_chat("Hi", stream=True), "model": "no-such-model"}),
        post("error_temperature_5", "real", chat, greedy_chat("Hi", temperature=5)),
        post("error_missing_messages", "real", chat, {"model": SMOLLM2}),
        post("error_empty_messages", "real", chat, {"model": SMOLLM2, "messages": []}),
        post("error_invalid_json", "real", chat, None, raw=b'{"model": "smollm2-135m-instruct", "messages": ['),
        post("error_no_body", "real", chat, None),
        post("error_unknown_named_tool", "real", chat,
             greedy_chat("Hi", tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})),
        post("error_context_length_chat", "real", chat, greedy_chat(LONG_TEXT)),
        post("error_context_length_chat_stream", "real", chat, greedy_chat(LONG_TEXT, stream=True)),
        post("error_context_length_completion", "real", "/v1/completions", greedy_completion(LONG_TEXT)),
        post("error_completion_bad_token_id", "real", "/v1/completions", greedy_completion([1, 10_000_000])),
        post("embeddings_not_an_embedding_model", "real", "/v1/embeddings", {"model": SMOLLM2, "input": "hello"}),
        post("embeddings_unknown_model", "real", "/v1/embeddings", {"model": "no-such-model", "input": "hello"}),
        Case("error_unknown_route", "real", "GET", "/v1/no-such-route"),
        Case("error_method_not_allowed", "real", "GET", "/v1/chat/completions"),
    ]


def scripted_chat(marker: str, model: str = SMOLLM2, **fields) -> dict:
    """A scripted chat body whose user message carries the marker that picks the script."""
    return {"model": model, "messages": user(f"please {marker}"), **fields}


def scripted_cases() -> list[Case]:
    """Protocol edges with scripted output: tool-call markup, reasoning, failures, n, stops, UTF-8."""
    chat, completions = "/v1/chat/completions", "/v1/completions"
    return [
        *scripted_pair("scripted_hermes_tool_call", chat, scripted_chat("#call", QWEN3, tools=[WEATHER])),
        *scripted_pair("scripted_hermes_two_calls", chat, scripted_chat("#two-calls", QWEN3, tools=[WEATHER, TIME])),
        *scripted_pair("scripted_text_then_call", chat, scripted_chat("#text-call", QWEN3, tools=[WEATHER])),
        *scripted_pair("scripted_think", chat, scripted_chat("#think", QWEN3)),
        *scripted_pair("scripted_think_then_call", chat, scripted_chat("#think-call", QWEN3, tools=[WEATHER])),
        *scripted_pair("scripted_fail_invalid_request", chat, scripted_chat("#fail")),
        *scripted_pair("scripted_fail_runtime_error", chat, scripted_chat("#crash")),
        *scripted_pair("scripted_n2", chat, scripted_chat("#words", n=2)),
        *scripted_pair("scripted_stop_across_pieces", chat, scripted_chat("#stop", stop=["STOP", "never"])),
        *scripted_pair("scripted_utf8_split", chat, scripted_chat("#emoji")),
        *scripted_pair("scripted_length", chat, scripted_chat("#words", max_tokens=2)),
        post("scripted_keepalive_stream", "scripted", chat, scripted_chat("#slow", stream=True)),
        post("scripted_include_usage_stream", "scripted", chat,
             scripted_chat("#call", QWEN3, tools=[WEATHER], stream=True, stream_options={"include_usage": True})),
        *scripted_pair("scripted_completion_fail", completions, {"model": SMOLLM2, "prompt": "#fail"}),
        *scripted_pair("scripted_completion_utf8_split", completions, {"model": SMOLLM2, "prompt": "#emoji"}),
        Case("models_retrieve_loaded", "scripted", "GET", f"/v1/models/{QWEN3}"),
    ]


def locked_cases() -> list[Case]:
    """Model listing, API keys and the body limit, on the server with keys and a small limit."""
    chat = "/v1/chat/completions"
    too_big = {"model": SMOLLM2, "messages": user("x" * (MAX_BODY_BYTES + 100))}
    return [
        Case("models_list", "locked", "GET", "/v1/models", headers=AUTH),
        Case("models_retrieve", "locked", "GET", f"/v1/models/{SMOLLM2}", headers=AUTH),
        Case("models_retrieve_fixture", "locked", "GET", f"/v1/models/{QWEN3}", headers=AUTH),
        Case("models_retrieve_unknown", "locked", "GET", "/v1/models/no/such-model", headers=AUTH),
        Case("health_needs_no_key", "locked", "GET", "/health"),
        Case("request_id_echoed", "locked", "GET", "/health", headers={"x-request-id": "client-id-123"}),
        Case("auth_missing_key", "locked", "GET", "/v1/models"),
        post("auth_wrong_key", "locked", chat, scripted_chat("hi"), headers={"authorization": "Bearer nope"}),
        post("body_over_limit", "locked", chat, too_big, headers=AUTH),
        post("body_over_limit_without_key", "locked", chat, too_big),
    ]


ANTHROPIC_WEATHER = {"name": "get_weather", "description": "Get the current weather for a city.",
                     "input_schema": WEATHER["function"]["parameters"]}
RESPONSES_WEATHER = {"type": "function", **WEATHER["function"]}


def anthropic_body(content: str, model: str = SMOLLM2, max_tokens: int = 12, **fields) -> dict:
    """A Messages body: greedy, short."""
    return {"model": model, "max_tokens": max_tokens, "messages": user(content), "temperature": 0, **fields}


def responses_body(content: str, model: str = SMOLLM2, max_output_tokens: int = 12, **fields) -> dict:
    """A Responses body: greedy, short, not stored (a stored response would change the store's state)."""
    return {"model": model, "input": content, "max_output_tokens": max_output_tokens, "temperature": 0,
            "store": False, **fields}


def anthropic_cases() -> list[Case]:
    """The Anthropic Messages API: real text, scripted tool use and thinking, errors in its envelope."""
    messages, count = "/v1/messages", "/v1/messages/count_tokens"
    forced = {"tools": [ANTHROPIC_WEATHER], "max_tokens": 40,
              "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}}
    return [
        post("anthropic_text", "real", messages, anthropic_body("What is the capital of France?")),
        post("anthropic_text_stream", "real", messages, anthropic_body("What is the capital of Italy?", stream=True)),
        post("anthropic_stop_sequence", "real", messages,
             anthropic_body("What is the capital of Spain?", stop_sequences=[" is"])),
        post("anthropic_forced_tool", "real", messages, anthropic_body("Weather in Oslo?", **forced)),
        post("anthropic_forced_tool_stream", "real", messages, anthropic_body("Weather in Rome?", stream=True, **forced)),
        post("anthropic_count_tokens", "real", count,
             {"model": SMOLLM2, "messages": user("Hello there"), "system": "Be brief."}),
        post("anthropic_error_unknown_model", "real", messages, anthropic_body("hi", model="no-such-model")),
        post("anthropic_error_overflow", "real", messages, anthropic_body(LONG_TEXT)),
        post("anthropic_no_max_tokens", "real", messages, {"model": SMOLLM2, "messages": user("hi"), "temperature": 0}),
        *scripted_pair("anthropic_scripted_tool_use", messages,
                       anthropic_body("#text-call", QWEN3, max_tokens=200, tools=[ANTHROPIC_WEATHER])),
        *scripted_pair("anthropic_scripted_thinking", messages, anthropic_body("#think", QWEN3, max_tokens=200)),
        *scripted_pair("anthropic_scripted_failure", messages, anthropic_body("#crash", max_tokens=200)),
    ]


def responses_cases() -> list[Case]:
    """The OpenAI Responses API: real text, scripted calls and reasoning, failures and overflow."""
    responses = "/v1/responses"
    return [
        post("responses_text", "real", responses, responses_body("What is the capital of France?")),
        post("responses_text_stream", "real", responses, responses_body("What is the capital of Italy?", stream=True)),
        post("responses_forced_function", "real", responses,
             responses_body("Weather in Oslo?", tools=[RESPONSES_WEATHER], max_output_tokens=40,
                            parallel_tool_calls=False, tool_choice={"type": "function", "name": "get_weather"})),
        post("responses_error_overflow", "real", responses, responses_body(LONG_TEXT)),
        post("responses_error_overflow_stream", "real", responses, responses_body(LONG_TEXT, stream=True)),
        post("responses_error_unknown_model", "real", responses, responses_body("hi", model="no-such-model")),
        Case("responses_error_unknown_id", "real", "GET", "/v1/responses/resp_missing"),
        *scripted_pair("responses_scripted_text_then_call", responses,
                       responses_body("#text-call", QWEN3, max_output_tokens=200, tools=[RESPONSES_WEATHER])),
        *scripted_pair("responses_scripted_reasoning", responses,
                       responses_body("#think", QWEN3, max_output_tokens=200)),
        *scripted_pair("responses_scripted_length", responses, responses_body("#words", max_output_tokens=2)),
        *scripted_pair("responses_scripted_failure", responses, responses_body("#crash", max_output_tokens=200)),
    ]


CASES: tuple[Case, ...] = (*real_chat_cases(), *real_completion_cases(), *real_error_cases(), *scripted_cases(),
                           *locked_cases(), *anthropic_cases(), *responses_cases())
CASE_NAMES = tuple(case.name for case in CASES)
assert len(set(CASE_NAMES)) == len(CASE_NAMES), "case names must be unique"


# ---------------------------------------------------------------------------------------------
# Scripts of the scripted engine (chosen by the marker in the prompt)


def _call(name: str, arguments: dict) -> bytes:
    return b"<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}).encode() + b"\n</tool_call>"


def _pieces(text: bytes, size: int = 7) -> list[bytes]:
    """Text cut into fixed-size byte pieces (so markup and UTF-8 sequences straddle pieces)."""
    return [text[i: i + size] for i in range(0, len(text), size)]


SCRIPTS: dict[str, Callable[[], Script]] = {
    "#call": lambda: Script(_pieces(_call("get_weather", {"city": "Paris"}))),
    "#two-calls": lambda: Script(_pieces(_call("get_weather", {"city": "Paris"}) + b"\n"
                                         + _call("get_time", {"tz": "CET"}))),
    "#text-call": lambda: Script(_pieces(b"Let me check.\n" + _call("get_weather", {"city": "Oslo"}))),
    "#think-call": lambda: Script(_pieces(b"<think>\nThe user wants weather.\n</think>\n\n"
                                          + _call("get_weather", {"city": "Rome"}))),
    "#think": lambda: Script(_pieces(b"<think>\nA greeting is wanted.\n</think>\n\nHello there!")),
    "#fail": lambda: Script([b"a", b"b", b"c"], fail_after=2, failure=InvalidRequestError("grammar dead end")),
    "#crash": lambda: Script([b"a", b"b"], fail_after=1, failure=RuntimeError("boom")),
    "#words": lambda: Script([b"one", b" two", b" three"]),
    "#stop": lambda: Script([b"one ", b"two ST", b"O", b"P three"]),
    "#emoji": lambda: Script([b"x", "🦙".encode()[:1], "🦙".encode()[1:3], "🦙".encode()[3:], b"y\xc3", b"\xa9"]),
    "#slow": lambda: Script([b"Hello", b" there"], first_delay_s=0.45),
}


def choose_script(prompt: str, call: int) -> Script:
    """The script whose marker the prompt holds (longest marker first), else a plain "ok"."""
    for marker in sorted(SCRIPTS, key=len, reverse=True):
        if marker in prompt:
            return SCRIPTS[marker]()
    return Script([b"ok"])


# ---------------------------------------------------------------------------------------------
# Servers


def write_fixture_models(directory: Path) -> Path:
    """A models directory holding the Qwen3-template fixture GGUF; the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    spec = GGUFSpec(name="Qwen3 Tiny Fixture", chat_template=QWEN3_TEMPLATE.read_text(encoding="utf-8"))
    write_gguf(directory / f"{QWEN3}.gguf", spec)
    return directory


def server_settings(workdir: Path) -> dict[str, tuple[Settings, dict]]:
    """Each corpus server's settings and create_app keyword arguments."""
    empty = workdir / "no-models"
    empty.mkdir(parents=True, exist_ok=True)
    fixtures = write_fixture_models(workdir / "models")
    return {
        "real": (Settings(models_dirs=[empty], n_threads=2, n_slots=4, n_ctx=2048), {}),
        "scripted": (Settings(models_dirs=[fixtures], keepalive_interval_s=0.1),
                     {"loader": scripted_loader(choose_script)}),
        "locked": (Settings(models_dirs=[fixtures], api_keys=[API_KEY], max_body_bytes=MAX_BODY_BYTES),
                   {"loader": scripted_loader(choose_script)}),
    }


@contextlib.contextmanager
def corpus_servers(workdir: Path) -> Iterator[dict[str, RunningServer]]:
    """The three corpus servers, running for the duration of a with-block."""
    with contextlib.ExitStack() as stack:
        servers = {name: stack.enter_context(running_server(settings, **kwargs))
                   for name, (settings, kwargs) in server_settings(workdir).items()}
        yield servers


# ---------------------------------------------------------------------------------------------
# Normalisation: the values that legitimately differ between runs become placeholders, in the raw
# bytes, so key order, spacing, null vs absent fields and SSE framing are still compared exactly.

# Response ids (chatcmpl-/cmpl- and 24 hex digits) and tool call ids (call_ and 24 letters or
# digits) are numbered in order of first appearance, so "every chunk shares one id" and "two calls
# have two ids" still show.
_RESPONSE_ID = re.compile(rb"(?<![A-Za-z0-9_-])(chatcmpl-|cmpl-)[0-9a-f]{24}(?![0-9A-Za-z])")
_CALL_ID = re.compile(rb"(?<![A-Za-z0-9_-])(call_|toolu_)[A-Za-z0-9]{24}(?![0-9A-Za-z])")
# Anthropic message ids (24 hex digits) and Responses ids (response, items: 32 hex digits).
_MESSAGE_ID = re.compile(rb"(?<![A-Za-z0-9_-])(msg_)[0-9a-f]{24}(?![0-9A-Za-z])")
_ITEM_ID = re.compile(rb"(?<![A-Za-z0-9_-])(resp_|msg_|rs_|fc_|ctc_)[0-9a-f]{32}(?![0-9A-Za-z])")
# `created`: a Unix time (responses: now; models: the file's mtime).
# Anthropic thinking signatures: keyed by a secret each server process draws.
_SIGNATURE = re.compile(rb'("signature"\s*:\s*")[0-9a-f]{32}"')
_CREATED = re.compile(rb'("created(?:_at)?"\s*:\s*)\d+')
# Timing fields (none today; keys ending _ms, _seconds or _per_second), should a response grow them.
_TIMING = re.compile(rb'("[A-Za-z0-9_]*(?:_ms|_seconds|_per_second)"\s*:\s*)-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?')
_REQUEST_ID = re.compile(r"req_[0-9a-f]{16}")
KEEPALIVE = b": keep-alive"
ANTHROPIC_PING = b'event: ping\ndata: {"type":"ping"}'  # the Messages API's keep-alive
_CHOICE_INDEX = re.compile(rb'data: \{.*?"choices":\[\{"index":(\d+),')


def _numbered(pattern: re.Pattern[bytes], body: bytes) -> bytes:
    """Replace each distinct match with its prefix and its order of first appearance."""
    seen: dict[bytes, int] = {}

    def replace(match: re.Match[bytes]) -> bytes:
        number = seen.setdefault(match.group(0), len(seen) + 1)
        return match.group(1) + b"<id%d>" % number

    return pattern.sub(replace, body)


def _keepalives_collapsed(frames: list[bytes]) -> list[bytes]:
    """One keep-alive (an SSE comment, or Anthropic's ping event) before the first event; none after it.

    How many keep-alives a stream carries depends on timing (one goes out at once, then one per
    idle interval: while the scripted engine waits, or whenever a decode step is slow on a busy
    machine), so a run of them before the first data event counts as one and later ones are dropped.
    """
    kept: list[bytes] = []
    seen_data = False
    for frame in frames:
        if frame in (KEEPALIVE, ANTHROPIC_PING):
            if not seen_data and (not kept or kept[-1] != frame):
                kept.append(frame)
            continue
        seen_data = True
        kept.append(frame)
    return kept


def _choices_in_index_order(frames: list[bytes]) -> list[bytes]:
    """Each run of one-choice chunks stably sorted by choice index.

    With n > 1 or several prompts, how the choices' chunks interleave depends on which decode step
    each sequence's token landed in (timing); the order within one choice is kept exactly, and
    frames that carry no choice (usage, errors, [DONE], comments) stay where they are.
    """
    result: list[bytes] = []
    run: list[tuple[int, bytes]] = []
    for frame in frames:
        match = _CHOICE_INDEX.match(frame)
        if match:
            run.append((int(match.group(1)), frame))
            continue
        result += [f for _, f in sorted(run, key=lambda item: item[0])]
        run = []
        result.append(frame)
    return result + [f for _, f in sorted(run, key=lambda item: item[0])]


def normalise_sse(body: bytes) -> bytes:
    """An SSE body with keep-alive runs collapsed and interleaved choices put in index order."""
    frames = body.split(b"\n\n")
    kept = _choices_in_index_order(_keepalives_collapsed(frames[:-1]))
    return b"".join(frame + b"\n\n" for frame in kept) + frames[-1]


def normalise_body(body: bytes, content_type: str) -> bytes:
    """A response body with ids, timestamps, timings (and, for SSE, keep-alives and interleaving) made fixed."""
    if content_type.startswith("text/event-stream"):
        body = normalise_sse(body)  # first, so ids are numbered in the normalised order
    body = _numbered(_RESPONSE_ID, body)
    body = _numbered(_CALL_ID, body)
    body = _numbered(_MESSAGE_ID, body)
    body = _numbered(_ITEM_ID, body)
    body = _CREATED.sub(rb"\g<1><created>", body)
    body = _SIGNATURE.sub(rb'\g<1><signature>"', body)
    return _TIMING.sub(rb"\g<1><timing>", body)


def normalise_header(name: str, value: str) -> str:
    """A header value with the date and generated request ids made fixed."""
    if name == "date":
        return "<date>"
    if name == "x-request-id":
        return _REQUEST_ID.sub("<request-id>", value)
    return value


def render_record(status: int, headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    """The recorded form: status, content-type, the other headers by name, a blank line, the body."""
    pairs = [(name.lower(), value) for name, value in headers]
    content_type = next((value for name, value in pairs if name == "content-type"), "")
    others = sorted((name, normalise_header(name, value)) for name, value in pairs if name != "content-type")
    lines = [f"status: {status}", f"content-type: {content_type}", *(f"{n}: {v}" for n, v in others)]
    return "\n".join(lines).encode() + b"\n\n" + normalise_body(body, content_type)


# ---------------------------------------------------------------------------------------------
# Running and comparing


def send(client: httpx.Client, server: RunningServer, case: Case) -> httpx.Response:
    """Send a case's request to its server and read the whole response."""
    content = case.content()
    headers = {**({"content-type": "application/json"} if content is not None else {}), **case.headers}
    url = f"http://127.0.0.1:{server.port}{case.path}"
    return client.request(case.method, url, content=content, headers=headers)


class CorpusRun:
    """Records cases on the corpus servers, always with the same history behind each case.

    A case's output can depend on what its server did before (prefix-cache reuse shows in
    ``usage.prompt_tokens_details.cached_tokens`` and can move logprobs in the last digits), so
    asking for a case first runs every earlier case of the same server, in corpus order.
    """

    def __init__(self, servers: Mapping[str, RunningServer]) -> None:
        self.servers = servers
        self.records: dict[str, bytes] = {}
        # a fresh connection per case: after an unhandled error uvicorn closes the connection it answered on
        self.client = httpx.Client(timeout=120, limits=httpx.Limits(max_keepalive_connections=0))

    def record(self, case: Case) -> bytes:
        """The normalised record of a case (its server's earlier cases run first)."""
        for earlier in CASES[: CASES.index(case) + 1]:
            if earlier.server == case.server and earlier.name not in self.records:
                self.records[earlier.name] = self._run(earlier)
        return self.records[case.name]

    def _run(self, case: Case) -> bytes:
        started = time.perf_counter()
        response = send(self.client, self.servers[case.server], case)
        logger.info("%s: %d in %.2f s", case.name, response.status_code, time.perf_counter() - started)
        return render_record(response.status_code, response.headers.multi_items(), response.content)

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()


@contextlib.contextmanager
def corpus_run() -> Iterator[CorpusRun]:
    """Servers over fresh fixture models in a temporary directory, and a run on them."""
    with tempfile.TemporaryDirectory(prefix="wire-corpus-") as workdir, corpus_servers(Path(workdir)) as servers:
        run = CorpusRun(servers)
        try:
            yield run
        finally:
            run.close()


def recorded_path(case: Case, directory: Path = CORPUS_DIR) -> Path:
    """Where a case's record lives."""
    return directory / f"{case.name}.txt"


def first_difference(expected: bytes, actual: bytes, context: int = 40) -> str:
    """Where two records first differ, with a little context from each (long JSON lines hide it)."""
    at = next((i for i, (a, b) in enumerate(zip(expected, actual)) if a != b), min(len(expected), len(actual)))
    start = max(0, at - context)
    return (f"first difference at byte {at}:\n  recorded: {expected[start: at + context]!r}\n"
            f"  now:      {actual[start: at + context]!r}\n")


def record_diff(case: Case, expected: bytes, actual: bytes) -> str:
    """A unified diff of a recorded and a fresh record, and where they first differ ('' when equal)."""
    if expected == actual:
        return ""
    lines = difflib.unified_diff(expected.decode(errors="replace").splitlines(),
                                 actual.decode(errors="replace").splitlines(),
                                 f"recorded/{case.name}.txt", f"now/{case.name}.txt", lineterm="")
    return "\n".join(lines) + "\n" + first_difference(expected, actual)


def record_all(directory: Path = CORPUS_DIR) -> int:
    """Run every case and write its record; the number written."""
    directory.mkdir(parents=True, exist_ok=True)
    names = set(CASE_NAMES)
    for stale in directory.glob("*.txt"):
        if stale.stem not in names:
            stale.unlink()
    with corpus_run() as run:
        for case in CASES:
            recorded_path(case, directory).write_bytes(run.record(case))
    return len(CASES)


def check_all(directory: Path = CORPUS_DIR) -> list[str]:
    """Run every case and compare with its record; one diff per case that differs."""
    diffs = []
    with corpus_run() as run:
        for case in CASES:
            path = recorded_path(case, directory)
            expected = path.read_bytes() if path.exists() else b""
            diff = record_diff(case, expected, run.record(case))
            if diff:
                diffs.append(diff)
    return diffs


def stray_minerva_modules() -> list[str]:
    """Loaded minerva modules from outside the imported minerva package (another tree's install)."""
    import minerva

    home = Path(minerva.__file__).resolve().parent
    return sorted(name for name, module in list(sys.modules.items())
                  if name.startswith("minerva.") and getattr(module, "__file__", None)
                  and home not in Path(module.__file__).resolve().parents)


def run_command(command: str, directory: Path) -> bool:
    """Record or check the corpus in `directory`, printing what happened; whether all is well."""
    started = time.perf_counter()
    if command == "record":
        count = record_all(directory)
        print(f"recorded {count} cases into {directory} in {time.perf_counter() - started:.1f} s")
        return True
    diffs = check_all(directory)
    for diff in diffs:
        print(diff)
    print(f"{len(CASES) - len(diffs)}/{len(CASES)} cases match in {time.perf_counter() - started:.1f} s")
    return not diffs


def main(argv: list[str] | None = None) -> int:
    """CLI: record or check the corpus."""
    parser = argparse.ArgumentParser(prog="python -m tests.wire_corpus", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("record", "check"))
    parser.add_argument("--dir", type=Path, default=CORPUS_DIR, help="where the records live")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each case and its time")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO if args.verbose else logging.WARNING)
    if not args.verbose:  # the servers log the scripted failures they answer; expected, so hidden
        logging.getLogger("minerva").setLevel(logging.CRITICAL)
    import minerva

    print(f"minerva from {Path(minerva.__file__).parent}")
    ok = run_command(args.command, args.dir)
    strays = stray_minerva_modules()
    if strays:
        print(f"warning: modules imported from outside that minerva: {', '.join(strays)}")
    return 0 if ok and not strays else 1


if __name__ == "__main__":
    sys.exit(main())
