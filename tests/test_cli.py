"""The `minerva` command: models, inspect, opencode-config and demo on the real default model."""

import json
import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minerva.cli", "--log-level", "warning", *args],
                          capture_output=True, text=True, timeout=120)


def test_models_json_lists_the_default(tmp_path):
    result = run("models", "--json", "--models-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)["data"]
    assert [m["id"] for m in data] == ["smollm2-135m-instruct"]
    assert data[0]["quantization"] == "Q4_1"


def test_models_table_is_readable(tmp_path):
    (tmp_path / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    result = run("models", "--models-dir", str(tmp_path))
    assert result.returncode == 0
    assert "smollm2-135m-instruct" in result.stdout and "Q4_1" in result.stdout
    assert "skipped" in result.stdout and "broken.gguf" in result.stdout


def test_inspect_json(smollm2_path):
    result = run("inspect", str(smollm2_path), "--json")
    info = json.loads(result.stdout)
    assert info["tensor_count"] == 272 and info["architecture"] == "llama" and info["has_chat_template"]


def test_inspect_bad_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"nope")
    result = run("inspect", str(bad))
    assert result.returncode == 2 and "bad.gguf" in result.stderr and "Traceback" not in result.stderr


def test_opencode_config_has_real_limits(tmp_path):
    result = run("opencode-config", "--models-dir", str(tmp_path), "--base-url", "http://127.0.0.1:9000/v1")
    config = json.loads(result.stdout)
    provider = config["provider"]["minerva"]
    assert provider["options"]["baseURL"] == "http://127.0.0.1:9000/v1"
    assert provider["models"]["smollm2-135m-instruct"]["limit"] == {"context": 8192, "output": 2048}
    assert config["model"] == "minerva/smollm2-135m-instruct"


def test_demo_runs(tmp_path):
    result = run("demo", "--models-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for expected in ("Format detection", "GET /v1/models", "model_not_found", "multi-model registry"):
        assert expected in result.stdout


def test_demo_runs_without_the_test_extra(tmp_path):
    """The runtime install has no httpx (FastAPI's test client needs it): the demo must not import it."""
    block = ("import sys; sys.modules['httpx'] = None; sys.modules['fastapi.testclient'] = None; "
             "sys.argv = ['minerva', '--log-level', 'warning', 'demo', '--models-dir', sys.argv[1]]; "
             "from minerva.cli import main; raise SystemExit(main())")
    result = subprocess.run([sys.executable, "-c", block, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "model_not_found" in result.stdout and "Traceback" not in result.stderr


def test_claude_config_points_every_model_role_at_a_local_model(tmp_path):
    result = run("claude-config", "--models-dir", str(tmp_path), "--base-url", "http://127.0.0.1:9000")
    assert result.returncode == 0, result.stderr
    env = dict(line.removeprefix("export ").split("=", 1) for line in result.stdout.splitlines())
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9000"  # the root: Claude Code appends /v1/messages
    for role in ("ANTHROPIC_MODEL", "ANTHROPIC_DEFAULT_HAIKU_MODEL", "ANTHROPIC_DEFAULT_SONNET_MODEL",
                 "ANTHROPIC_DEFAULT_OPUS_MODEL"):
        assert env[role] == "smollm2-135m-instruct"


def test_codex_config_is_a_responses_provider(tmp_path):
    import tomllib

    result = run("codex-config", "--models-dir", str(tmp_path), "--base-url", "http://127.0.0.1:9000/v1")
    assert result.returncode == 0, result.stderr
    config = tomllib.loads(result.stdout)
    assert config["model"] == "smollm2-135m-instruct" and config["model_provider"] == "minerva"
    provider = config["model_providers"]["minerva"]
    assert provider["base_url"] == "http://127.0.0.1:9000/v1" and provider["wire_api"] == "responses"
    assert config["model_context_window"] == 8192
