"""Claude Code (@anthropic-ai/claude-code@2.1.328) run headless against a real minerva: real SmolLM2 (its large
first request must fit the 8,192-token context), and a scripted engine that drives a full tool round trip
(Bash call → tool result → final answer)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

import pytest

from minerva.settings import Settings
from tests.model_fixtures import GGUFSpec, write_gguf
from tests.scripted_engine import Script, scripted_loader
from tests.npm_agents import npm_agent
from tests.servers import running_server

CLAUDE_CODE_VERSION = "2.1.328"
SMOLLM2 = "smollm2-135m-instruct"
QWEN3 = "qwen3-tiny"
QWEN3_TEMPLATE = Path(__file__).parent / "data" / "templates" / "qwen3.jinja"
MARKER = "minerva-tool-ok"
OUTPUT_CAP = 400
ATTEMPTS = 6  # see test_claude_code_runs_on_real_smollm2


@pytest.fixture(scope="session")
def claude_bin() -> Path:
    """Claude Code from the npm registry, installed once into a cache directory outside the repo."""
    return npm_agent("@anthropic-ai/claude-code", CLAUDE_CODE_VERSION, "claude", "claude-code")


def run_claude(binary: Path, server, tmp_path: Path, prompt: str, model: str, *flags: str,
               **extra_env: str) -> subprocess.CompletedProcess:
    """`claude -p PROMPT --output-format json` with HOME isolated under tmp_path and stdin closed."""
    home = tmp_path / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ["PATH"], "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{server.port}", "ANTHROPIC_API_KEY": "sk-test",
        "ANTHROPIC_MODEL": model, "ANTHROPIC_DEFAULT_HAIKU_MODEL": model, "ANTHROPIC_DEFAULT_SONNET_MODEL": model,
        "ANTHROPIC_DEFAULT_OPUS_MODEL": model, "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", **extra_env,
    }
    workdir = tmp_path / "project"
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run([str(binary), "-p", prompt, "--output-format", "json", *flags], cwd=workdir, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1500)


def result_of(completed: subprocess.CompletedProcess) -> dict:
    """The JSON result Claude Code printed last."""
    lines = [line for line in completed.stdout.splitlines() if line.strip().startswith("{")]
    assert lines, completed.stdout[-2000:] + completed.stderr[-2000:]
    return json.loads(lines[-1])


def test_claude_code_runs_on_real_smollm2(claude_bin, tmp_path, tmp_path_factory, caplog):
    caplog.set_level(logging.INFO, logger="minerva.access")
    settings = Settings(models_dirs=[tmp_path_factory.mktemp("empty")], n_threads=2, n_slots=1, n_ctx=8192)
    failures = []
    with running_server(settings) as server:
        for attempt in range(ATTEMPTS):
            # all of Claude Code's tools, string patterns included (the tool grammar leaves those to the client).
            # Claude Code treats a max_tokens stop as an error (after asking the model to continue three
            # times), so the cap leaves room for a short answer.
            completed = run_claude(claude_bin, server, tmp_path / str(attempt), "Reply with one short greeting.",
                                   SMOLLM2, CLAUDE_CODE_MAX_OUTPUT_TOKENS=str(OUTPUT_CAP))
            result = result_of(completed)
            if completed.returncode == 0:
                break
            # SmolLM2 samples at the server default (Claude Code sends no temperature) and may ramble past the
            # cap: the only failure tolerated, and only on an earlier attempt
            assert result.get("api_error") == "max_output_tokens", completed.stdout[-3000:] + completed.stderr[-2000:]
            failures.append(result["result"])
    assert completed.returncode == 0, (failures, completed.stdout[-3000:] + completed.stderr[-2000:])
    assert result["is_error"] is False and result["result"].strip(), result
    lines = [r.getMessage() for r in caplog.records if "POST /v1/messages" in r.getMessage()]
    assert all("status=200" in line for line in lines), lines
    prompt_tokens = [int(line.split("prompt_tokens=")[1].split()[0]) for line in lines]
    logging.getLogger(__name__).info("Claude Code's first request became %s prompt tokens", prompt_tokens[0])
    assert prompt_tokens[0] + OUTPUT_CAP <= 8192


def scripted_agent(prompt: str, call: int) -> Script:
    """Claude Code's main turn first calls Bash, then answers from the tool result; side requests get 'ok'."""
    if MARKER in prompt and "<tool_response>" in prompt:
        return Script([b"The command ", b"printed ", MARKER.encode(), b"."])
    if "Run the marker command" in prompt:
        call_text = json.dumps({"name": "Bash", "arguments": {"command": f"echo {MARKER}",
                                                             "description": "Print a marker"}})
        text = f"<tool_call>\n{call_text}\n</tool_call>".encode()
        return Script([text[i:i + 7] for i in range(0, len(text), 7)])  # the call split across many tokens
    return Script([b"ok"])


def test_claude_code_executes_a_tool_call_and_finishes(claude_bin, tmp_path, tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    write_gguf(models / f"{QWEN3}.gguf", GGUFSpec(name="Qwen3 Tiny Fixture",
                                                 chat_template=QWEN3_TEMPLATE.read_text(encoding="utf-8")))
    loader = scripted_loader(scripted_agent)
    settings = Settings(models_dirs=[models], include_default_model=False)
    with running_server(settings, loader=loader) as server:
        completed = run_claude(claude_bin, server, tmp_path, "Run the marker command.", QWEN3,
                               "--allowedTools", "Bash")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-2000:]
    result = result_of(completed)
    assert result["is_error"] is False and result["num_turns"] >= 2, result
    assert result["result"].strip() == f"The command printed {MARKER}.", result
    prompts = [p for engine in loader.engines for p in engine.prompts]
    first = next(p for p in prompts if "Run the marker command" in p)
    assert '"name": "Bash"' in first and "x-anthropic-billing-header" not in first
    assert any("<tool_response>" in p and MARKER in p.split("<tool_response>")[-1] for p in prompts)
