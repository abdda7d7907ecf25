"""A new user's first minutes: a request without an output limit ends within the server default, runaway
repetition is cut (and normal answers, code with similar lines included, are not), `minerva serve` says
where it listens once it does, and the CLI shows paths as paths."""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from minerva.cli import browsable_root, display_value, startup_banner
from minerva.generation.decode import clamp_max_tokens
from minerva.generation.repetition import RepetitionDetector, RepetitionLimits
from minerva.settings import Settings
from tests.scripted_engine import Script, scripted_loader
from tests.servers import ROOT, free_port, running_server

MODEL = "smollm2-135m-instruct"
GUARD_LOGGER = "minerva.generation.decode"


# ---- the repetition detector, on SmolLM2's real tokens ----------------------------------------------

@pytest.fixture(scope="module")
def tokenize(smollm2_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    vocab = llama_cpp.Llama(str(smollm2_path), vocab_only=True, verbose=False)
    yield lambda text: vocab.tokenize(text.encode(), add_bos=False, special=False)
    vocab.close()


def first_runaway(tokens: list[int], limits: RepetitionLimits = RepetitionLimits()):
    """(tokens fed when the detector fired, what it found), or None."""
    detector = RepetitionDetector(limits)
    for index, token in enumerate(tokens):
        found = detector.feed(token)
        if found is not None:
            return index + 1, found
    return None


NORMAL_ANSWERS = {
    "prose": "The sky looks blue because sunlight is made of many colours, and the air scatters the blue part "
             "much more than the red part. When you look up, that scattered blue light comes to your eyes from "
             "every direction, so the whole sky glows blue. At sunset the light travels through more air, the "
             "blue is scattered away before it reaches you, and the sky turns orange and red. " * 3,
    "asserts": "def test_add():\n" + "".join(f"    assert add({i}, {i + 1}) == {2 * i + 1}\n" for i in range(60)),
    "table": "| n | square | cube |\n| --- | --- | --- |\n" + "".join(f"| {i} | {i * i} | {i ** 3} |\n"
                                                               for i in range(1, 41)),
    "json array": json.dumps([{"id": i, "name": f"user{i}", "email": f"user{i}@example.com", "active": True}
                              for i in range(30)], indent=2),
    "counting": ", ".join(str(i) for i in range(1, 300)),
    "zero matrix": "matrix = [\n" + "    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],\n" * 10 + "]\n",
    "html list": "<ul>\n" + "".join(f'  <li><a href="/item/{i}">Item {i}</a></li>\n' for i in range(40)) + "</ul>\n",
    "rule lines": ("=" * 80 + "\n") * 6,
}


@pytest.mark.parametrize("kind", sorted(NORMAL_ANSWERS))
def test_normal_answers_and_code_with_similar_lines_are_not_runaways(tokenize, kind):
    assert first_runaway(tokenize(NORMAL_ANSWERS[kind])) is None


@pytest.mark.parametrize("loop", ["She is not America. ", "la femme au roi, ", "# Output:\n\n", "🌍"])
def test_a_phrase_repeated_over_and_over_is_found_soon(tokenize, loop):
    preamble = tokenize("L'Étoile, la Marseillaise. ")
    limits = RepetitionLimits()
    fired = first_runaway(preamble + tokenize(loop * 400), limits)
    assert fired is not None
    at, found = fired
    assert found.period <= len(tokenize(loop)) + 1  # tokens may merge across the seam
    assert found.tokens >= limits.min_tokens and found.repeats >= limits.min_repeats
    assert at <= len(preamble) + limits.tail_needed(found.period) + found.period  # as soon as the tail qualifies


def test_a_long_block_must_repeat_min_repeats_times(tokenize):
    block = tokenize("Paris is the capital and the largest city of France, on the Seine, known for its museums, "
                     "its cafes and the tower Gustave Eiffel built for the fair of 1889. ")
    assert 30 < len(block) <= RepetitionLimits().max_period
    limits = RepetitionLimits(min_tokens=64, min_repeats=4)
    at, found = first_runaway(block * 10, limits)
    assert found.period == len(block) and at == 4 * len(block)
    assert first_runaway(block * 3, limits) is None


def test_the_detector_takes_any_hashable_token_and_a_break_resets_it():
    detector = RepetitionDetector(RepetitionLimits(min_tokens=8, max_period=4, min_repeats=2))
    found = [detector.feed(piece) for piece in [b"a", b"b"] * 3 + [b"a", b"b"]]
    assert found[:7] == [None] * 7 and found[7] is not None and (found[7].period, found[7].tokens) == (2, 8)
    assert detector.feed(b"c") is None  # the run is broken


def test_repetition_limits_are_checked():
    with pytest.raises(ValueError):
        RepetitionLimits(min_repeats=1)


# ---- the default output limit ------------------------------------------------------------------------

def test_a_request_without_a_limit_gets_the_default_clamped_to_the_context():
    assert clamp_max_tokens(None, 10, 100, "messages", default=16) == 16
    assert clamp_max_tokens(None, 90, 100, "messages", default=16) == 10
    assert clamp_max_tokens(50, 10, 100, "messages", default=16) == 50  # an explicit limit wins, also above it
    assert clamp_max_tokens(None, 10, 100, "messages", default=None) == 90


@pytest.fixture(scope="module")
def small_default(tmp_path_factory):
    """The real SmolLM2 with a 16-token default output limit."""
    settings = Settings(models_dirs=[tmp_path_factory.mktemp("no-models")], n_threads=2, n_slots=2, n_ctx=2048,
                        default_max_tokens=16)
    with running_server(settings) as server:
        yield server


STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]


def test_chat_without_max_tokens_ends_at_the_default_with_length(small_default):
    client = openai.OpenAI(base_url=small_default.base_url, api_key="sk-test", max_retries=0, timeout=120)
    response = client.chat.completions.create(model=MODEL, messages=STORY, temperature=0)
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 16
    explicit = client.chat.completions.create(model=MODEL, messages=STORY, temperature=0, max_tokens=40)
    assert explicit.usage.completion_tokens == 40  # an explicit limit is not capped by the default


def test_responses_without_max_output_tokens_end_at_the_default(small_default):
    client = openai.OpenAI(base_url=small_default.base_url, api_key="sk-test", max_retries=0, timeout=120)
    response = client.responses.create(model=MODEL, input=STORY[0]["content"], temperature=0)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens <= 16


# ---- the guard on the real server stack, with a scripted engine that loops ------------------------------

LOOP = [b"She", b" is", b" not", b" America", b"."] * 400


def looping(prompt: str, call: int) -> Script:
    return Script(list(LOOP) if "loop" in prompt else [b"Paris", b"."])


@pytest.fixture
def scripted_server(tmp_path):
    """Start servers on the scripted engine (the embedded model's template) with these settings."""
    with contextlib.ExitStack() as stack:
        def start(**settings):
            loader = scripted_loader(looping)
            server = stack.enter_context(running_server(Settings(models_dirs=[tmp_path], **settings), loader=loader))
            server.loader = loader
            return server

        yield start


def test_a_looping_engine_is_cut_with_length_on_every_api(scripted_server, caplog):
    server = scripted_server()
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=60)
    with caplog.at_level(logging.INFO, logger=GUARD_LOGGER):
        chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "loop"}],
                                              max_tokens=len(LOOP), extra_headers={"x-request-id": "req-loop-1"})
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage.completion_tokens < 300 and chat.choices[0].message.content.startswith("She is not America.")
    lines = [r.getMessage() for r in caplog.records if r.name == GUARD_LOGGER]
    assert len(lines) == 1 and lines[0].startswith("req-loop-1 repetition guard ended the choice")
    assert server.loader.engines[0].cancelled == 1  # the engine stopped generating

    streamed = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "loop"}],
                                              stream=True, stream_options={"include_usage": True})
    chunks = list(streamed)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens

    completion = client.completions.create(model=MODEL, prompt="loop", max_tokens=len(LOOP))
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens < 300

    claude = anthropic.Anthropic(base_url=f"http://127.0.0.1:{server.port}", api_key="sk-test", max_retries=0)
    message = claude.messages.create(model=MODEL, max_tokens=len(LOOP), messages=[{"role": "user", "content": "loop"}])
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens < 300

    response = client.responses.create(model=MODEL, input="loop")
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"

    normal = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "capital?"}])
    assert normal.choices[0].finish_reason == "stop" and normal.choices[0].message.content == "Paris."


def test_observe_mode_logs_the_runaway_and_lets_it_run(scripted_server, caplog):
    server = scripted_server(repetition_guard="observe")
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=60)
    with caplog.at_level(logging.INFO, logger=GUARD_LOGGER):
        chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "loop"}],
                                              max_tokens=len(LOOP))
    assert chat.choices[0].finish_reason == "stop" and chat.usage.completion_tokens == len(LOOP)
    lines = [r.getMessage() for r in caplog.records if r.name == GUARD_LOGGER]
    assert len(lines) == 1 and "observed a runaway (not cut)" in lines[0]


def test_the_guard_can_be_off_or_tuned(scripted_server, caplog):
    off = scripted_server(repetition_guard="off")
    client = openai.OpenAI(base_url=off.base_url, api_key="sk-test", max_retries=0, timeout=60)
    with caplog.at_level(logging.INFO, logger=GUARD_LOGGER):
        chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "loop"}],
                                              max_tokens=len(LOOP))
    assert chat.usage.completion_tokens == len(LOOP)
    assert not [r for r in caplog.records if r.name == GUARD_LOGGER]

    tuned = scripted_server(repetition_min_tokens=40, repetition_min_repeats=2)
    client = openai.OpenAI(base_url=tuned.base_url, api_key="sk-test", max_retries=0, timeout=60)
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "loop"}],
                                          max_tokens=len(LOOP))
    assert chat.choices[0].finish_reason == "length" and chat.usage.completion_tokens == 40


# ---- the guard on the real SmolLM2 ----------------------------------------------------------------------

def test_real_answers_with_similar_lines_end_by_themselves(small_default, caplog):
    """Greedy SmolLM2 answers with numbered lines, a table and a JSON array of similar objects are not cut."""
    client = openai.OpenAI(base_url=small_default.base_url, api_key="sk-test", max_retries=0, timeout=1200)
    with caplog.at_level(logging.INFO, logger=GUARD_LOGGER):
        for prompt in ("Write the numbers from 1 to 30, one per line.",
                       "Make a markdown table of five countries with their capital and population.",
                       "Return a JSON list of 10 users with id, name and email."):
            answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                                    temperature=0, max_tokens=600)
            assert answer.choices[0].finish_reason == "stop", (prompt, answer.choices[0].message.content)
    assert not [r for r in caplog.records if r.name == GUARD_LOGGER]


def test_the_readme_request_is_cut_where_greedy_smollm2_loops(small_default, caplog):
    """At temperature 0 SmolLM2 answers "L'Étoile, la Marseillaise, la femme au roi, la femme au roi, …"."""
    client = openai.OpenAI(base_url=small_default.base_url, api_key="sk-test", max_retries=0, timeout=1200)
    with caplog.at_level(logging.INFO, logger=GUARD_LOGGER):
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}], temperature=0,
            max_tokens=1500)
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens < 400
    assert answer.choices[0].message.content.startswith("L'")
    assert [r for r in caplog.records if r.name == GUARD_LOGGER]


# ---- the start-up banner -----------------------------------------------------------------------------------

def test_banner_lists_what_exists_and_the_host_a_user_can_open():
    assert browsable_root("0.0.0.0", 8000) == "http://localhost:8000"
    assert browsable_root("::", 8000) == "http://localhost:8000"
    assert browsable_root("::1", 9000) == "http://[::1]:9000"
    assert browsable_root("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    banner = startup_banner("http://localhost:8000", {"/v1/messages"}, [], name_base_url=False)
    assert "web page" not in banner and "Ollama" not in banner  # neither exists yet on this server
    assert "minerva claude-config\n" in banner + "\n" and "--base-url" not in banner
    later = startup_banner("http://localhost:8000", {"/", "/v1/messages", "/api/tags"}, ["--models-dir", "a b"],
                           name_base_url=True)
    assert "http://localhost:8000/\n" in later and "Ollama host" in later
    assert "minerva codex-config --models-dir 'a b' --base-url http://localhost:8000/v1" in later


def test_serve_prints_the_urls_and_config_commands_once_it_listens(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "minerva.cli", "serve", "--port", str(port), "--models-dir", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    listening_when_announced: list[bool] = []

    def read() -> None:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if "minerva is listening" in line:
                with httpx.Client() as http:
                    listening_when_announced.append(http.get(f"http://127.0.0.1:{port}/health").status_code == 200)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any(line.strip().startswith("minerva codex-config") for line in lines):
            assert time.monotonic() < deadline and process.poll() is None, "\n".join(lines)
            time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(30)
    reader.join(10)
    output = "\n".join(lines)
    root = f"http://127.0.0.1:{port}"
    assert listening_when_announced == [True], output
    assert output.count("minerva is listening") == 1
    assert f"OpenAI base URL     {root}/v1" in output
    assert f"Anthropic base URL  {root}  (ANTHROPIC_BASE_URL" in output
    commands = [line.strip() for line in lines if line.strip().startswith("minerva ") and "-config" in line]
    assert [shlex.split(c)[1] for c in commands] == ["opencode-config", "claude-config", "codex-config"]

    # the printed commands describe this server: its models and its address
    opencode = subprocess.run([sys.executable, "-m", "minerva.cli", *shlex.split(commands[0])[1:]],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
    provider = json.loads(opencode.stdout)["provider"]["minerva"]
    assert provider["options"]["baseURL"] == f"{root}/v1" and list(provider["models"]) == [MODEL]
    claude = subprocess.run([sys.executable, "-m", "minerva.cli", *shlex.split(commands[1])[1:]],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert f"export ANTHROPIC_BASE_URL={root}\n" in claude.stdout


# ---- CLI output shows paths as paths -------------------------------------------------------------------------

def test_inspect_shows_paths_as_paths(smollm2_path):
    result = subprocess.run([sys.executable, "-m", "minerva.cli", "--log-level", "warning", "inspect",
                             str(smollm2_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    files_row = next(line for line in result.stdout.splitlines() if " files " in line)
    assert str(smollm2_path) in files_row and "PosixPath" not in result.stdout and "(" not in files_row


def test_display_value_lists_one_item_per_line():
    assert display_value((Path("/m/a.safetensors"), Path("/m/b.safetensors"))) == "/m/a.safetensors\n/m/b.safetensors"
    assert display_value((("gguf_version", "3"),)) == "gguf_version: 3"
    assert display_value(None) == "-" and display_value(()) == "-"
