"""The first request of an OpenCode-shaped session after a server restart, against a cold start.

Each round starts `minerva serve` on the embedded model with a fresh temporary data directory, loads
the model, sends OpenCode's captured first agent request (system prompt, 10 tools, streaming), stops
the server (SIGTERM, so queued disk-cache writes finish), starts it again on the same data directory,
loads the model, sends the same request, then sends it once more (a second turn: the slot holds it).
TTFT is from sending the request to the first streamed delta (text or tool call); model loads are
timed on their own.

SmolLM2's template knows no tools, so minerva describes them compactly and the captured request
renders to about 2.6k tokens; by default the tools' JSON is also appended to the system message, as
templates that know tools render it, which makes the ~8k tokens an agent's first prompt has
(--no-tools-in-system: the request as captured).

    python bench/warm_restart.py [--rounds 1] [--threads 2] [--ctx 8192] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_all import ROOT, free_port, started  # noqa: E402

REQUEST = ROOT / "tests" / "data" / "opencode" / "agent_request.json"


def stream_once(base_url: str, body: dict) -> dict:
    """TTFT, token counts and the streamed output of one request."""
    begun = time.perf_counter()
    first, output, usage = None, [], {}
    with httpx.stream("POST", f"{base_url}/chat/completions", json=body, timeout=1800) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.read()[:300]!r}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            payload = json.loads(line[6:])
            if "error" in payload:
                raise RuntimeError(str(payload["error"]))
            for choice in payload.get("choices") or ():
                delta = choice.get("delta") or {}
                text, calls = delta.get("content") or delta.get("reasoning_content"), delta.get("tool_calls")
                if text or calls:
                    first = first or time.perf_counter()
                    output.append(text or json.dumps(calls))
            usage = payload.get("usage") or usage
    details = usage.get("prompt_tokens_details") or {}
    return {"ttft_s": round((first or time.perf_counter()) - begun, 3), "prompt_tokens": usage.get("prompt_tokens"),
            "cached_tokens": details.get("cached_tokens") or 0, "completion_tokens": usage.get("completion_tokens"),
            "output": "".join(output)}


def disk_tier(base_url: str) -> dict:
    """The disk tier's entries and bytes from /metrics."""
    text = httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=30).text
    found = {}
    for name in ("entries", "bytes"):
        match = re.search(rf'^minerva_prompt_cache_{name}{{[^}}]*tier="disk"[^}}]*}} (\S+)$', text, re.M)
        found[name] = float(match.group(1)) if match else None
    return found


def serve_and_ask(args: argparse.Namespace, data_dir: Path, body: dict, log: Path) -> dict:
    """Start a server on `data_dir`, load the model, send the request, stop the server."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    env = {**os.environ, "MINERVA_DATA_DIR": str(data_dir),
           "MINERVA_DISK_PROMPT_CACHE_MB": str(args.disk_mb), "MINERVA_SPECULATION_MAX_DRAFT": "0"}
    command = [sys.executable, "-m", "minerva.cli", "serve", "--port", str(port), "--threads", str(args.threads),
               "--slots", "1", "--ctx-size", str(args.ctx), "--models-dir", str(data_dir / "no-models")]
    with started(command, url, log, env=env):
        begun = time.perf_counter()
        httpx.post(url.removesuffix("/v1") + "/minerva/models/load", json={"model": args.model},
                   timeout=600).raise_for_status()
        load_s = time.perf_counter() - begun
        figures = stream_once(url, body)
        figures["load_s"] = round(load_s, 3)
        figures["disk"] = disk_tier(url)
        again = stream_once(url, body)
        figures["second_turn"] = {"ttft_s": again["ttft_s"], "cached_tokens": again["cached_tokens"],
                                  "output": again["output"]}
    return figures


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--disk-mb", type=int, default=8192)
    parser.add_argument("--tools-in-system", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "warm_restart.json")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    body = {**json.loads(REQUEST.read_text()), "model": args.model, "max_tokens": args.max_tokens, "temperature": 0}
    if args.tools_in_system:
        system = body["messages"][0]
        system["content"] += "\n\n# Tools\n\n" + json.dumps(body["tools"])
    rounds = []
    for index in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="minerva-warm-restart-") as tmp:
            data_dir = Path(tmp)
            (data_dir / "no-models").mkdir()
            cold = serve_and_ask(args, data_dir, body, args.out.parent / "warm-restart-cold.log")
            warm = serve_and_ask(args, data_dir, body, args.out.parent / "warm-restart-warm.log")
        # greedy: the warm restart must answer as a second turn does (its last prompt token is recomputed
        # alone, as there, while a cold start computes it inside a prefill batch, which may round differently)
        figures = {"cold": cold, "warm_restart": warm, "ratio": round(warm["ttft_s"] / cold["ttft_s"], 4),
                   "same_output_as_second_turn": warm["output"] == cold["second_turn"]["output"],
                   "same_output_as_cold": warm["output"] == cold["output"]}
        for run in (cold, warm):
            run.pop("output")
            run["second_turn"].pop("output")
        print(f"round {index + 1}: {json.dumps(figures)}", file=sys.stderr)
        rounds.append(figures)
    ratio = statistics.median(r["ratio"] for r in rounds)
    summary = {"cold_ttft_s": statistics.median(r["cold"]["ttft_s"] for r in rounds),
               "warm_restart_ttft_s": statistics.median(r["warm_restart"]["ttft_s"] for r in rounds),
               "ratio": ratio, "goal": "<= 0.10", "met": ratio <= 0.10,
               "prompt_tokens": rounds[0]["cold"]["prompt_tokens"],
               "warm_cached_tokens": rounds[0]["warm_restart"]["cached_tokens"],
               "second_turn_ttft_s": statistics.median(r["warm_restart"]["second_turn"]["ttft_s"] for r in rounds),
               "same_output_as_second_turn": all(r["same_output_as_second_turn"] for r in rounds),
               "same_output_as_cold": all(r["same_output_as_cold"] for r in rounds)}
    args.out.write_text(json.dumps({"summary": summary, "rounds": rounds}, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
