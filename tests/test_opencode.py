"""OpenCode (opencode-ai@1.18.33) run headless against a real minerva: real SmolLM2, and a scripted
engine that drives a full tool round trip (bash call → tool result → final answer)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from minerva.client_configs import opencode_config
from minerva.settings import Settings
from tests.npm_agents import npm_agent
from tests.servers import running_server
from tests.scripted_engine import Script, scripted_loader

OPENCODE_VERSION = "1.18.33"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def opencode_bin() -> Path:
    """OpenCode from the npm registry, installed once into a cache directory outside the repo."""
    return npm_agent("opencode-ai", OPENCODE_VERSION, "opencode", "opencode")


def run_opencode(binary: Path, server, tmp_path: Path, prompt: str, output_limit: int,
                 context_limit: int | None = None) -> subprocess.CompletedProcess:
    """`opencode run PROMPT --format json` with its state isolated under tmp_path."""
    config = opencode_config(server.state.registry.list(), server.base_url)
    limits = config["provider"]["minerva"]["models"][MODEL]["limit"]
    limits["output"] = output_limit
    if context_limit:
        limits["context"] = context_limit
    config["model"] = config["small_model"] = f"minerva/{MODEL}"
    home = tmp_path / "home"
    env = {
        "PATH": os.environ["PATH"], "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"), "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_CACHE_HOME": str(home / ".cache"), "XDG_STATE_HOME": str(home / ".local/state"),
        "OPENCODE_CONFIG_CONTENT": json.dumps(config),
        "OPENCODE_DISABLE_MODELS_FETCH": "1", "OPENCODE_DISABLE_AUTOUPDATE": "1",
    }
    workdir = tmp_path / "project"
    workdir.mkdir(exist_ok=True)
    return subprocess.run([str(binary), "run", prompt, "-m", f"minerva/{MODEL}", "--format", "json"],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=900)


def events_of(stdout: str) -> list[dict]:
    """The JSON events OpenCode printed, one per line."""
    events = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def texts_of(events: list[dict]) -> str:
    """All assistant text OpenCode reported."""
    parts = []
    for event in events:
        part = event.get("part") or {}
        if part.get("type") == "text":
            parts.append(part.get("text") or "")
    return "".join(parts)


def test_opencode_runs_on_real_smollm2(opencode_bin, tmp_path, tmp_path_factory):
    settings = Settings(models_dirs=[tmp_path_factory.mktemp("empty")], n_threads=2, n_slots=2)
    with running_server(settings) as server:
        result = run_opencode(opencode_bin, server, tmp_path, "Say hello in one short sentence.", 64)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert texts_of(events_of(result.stdout)).strip(), result.stdout[-2000:]


def scripted_agent(prompt: str, call: int) -> Script:
    """Title requests get a title; the agent first calls bash, then answers from the tool result."""
    if "title generator" in prompt:
        return Script([b"Tool ", b"round ", b"trip"])
    if "minerva-tool-ok" in prompt and "<tool_response>" in prompt:
        return Script([b"The command ", b"printed ", b"minerva-tool-ok."])
    call_text = json.dumps({"name": "bash", "arguments": {"command": "echo minerva-tool-ok",
                                                         "description": "Print a marker"}})
    text = f"<tool_call>{call_text}</tool_call>".encode()
    return Script([text[i:i + 7] for i in range(0, len(text), 7)])  # the call split across many tokens


def test_opencode_executes_a_tool_call_and_finishes(opencode_bin, tmp_path, tmp_path_factory):
    loader = scripted_loader(scripted_agent)
    settings = Settings(models_dirs=[tmp_path_factory.mktemp("empty")])
    with running_server(settings, loader=loader) as server:
        # the scripted engine counts one token per character: give OpenCode room so it never compacts
        result = run_opencode(opencode_bin, server, tmp_path, "Run the marker command.", 256, 1_000_000)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    events = events_of(result.stdout)
    tool_events = [e for e in events if (e.get("part") or {}).get("type") == "tool"]
    assert tool_events, result.stdout[-3000:]
    assert any("minerva-tool-ok" in json.dumps(e) for e in tool_events)
    assert "printed minerva-tool-ok" in texts_of(events)
    prompts = [p for engine in loader.engines for p in engine.prompts]
    assert any("<tool_response>" in p and "minerva-tool-ok" in p for p in prompts)
