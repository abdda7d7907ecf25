"""Decoding under a tool grammar, side by side: OpenCode's own request (its 10 tools) on minerva with its
grammar (tool_choice auto, as OpenCode sends it, and required), with the same prompt and no grammar
(minerva's tool prompt written into the messages), without tools, and on llama-server
(`--jinja`, its own grammar from the same tool schemas) with and without tools; plus a call forced to a
named tool with tiny arguments. One stream, servers alternating round by round, medians.

Decode tokens/s is completion tokens after the first over the time from the first to the last streamed
delta (text or tool-call arguments), so the shared ~7k-token prompt, cached after the first round, does
not flatter either server.

    python bench/grammar.py [--rounds 3] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_all import ROOT, free_port, llama_server_binary, model_path, started  # noqa: E402

sys.path.insert(0, str(ROOT))
from minerva.prompting.messages import add_tools_to_system  # noqa: E402
from minerva.prompting.tool_prompt import render_tools_for_prompt  # noqa: E402

OPENCODE = json.loads((ROOT / "tests" / "data" / "opencode" / "agent_request.json").read_text())
PERSON = {"type": "function", "function": {"name": "record_person", "description": "Record a person.",
                                            "parameters": {"type": "object", "properties": {
                                                "name": {"type": "string"}, "age": {"type": "integer"}},
                                                "required": ["name", "age"]}}}


def stream_once(url: str, body: dict) -> dict:
    """One streamed chat request: decode tokens/s between the first and last delta, and its usage."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    first = last = None
    usage: dict = {}
    deltas = 0
    started_at = time.perf_counter()
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=900) as response:
        if response.status_code != 200:
            return {"error": f"HTTP {response.status_code}: {response.read()[:300]!r}"}
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            payload = json.loads(line[6:])
            for choice in payload.get("choices") or ():
                delta = choice.get("delta") or {}
                if delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    deltas += 1
            usage = payload.get("usage") or usage
    tokens = usage.get("completion_tokens", deltas)
    span = (last - first) if first and last and last > first else None
    return {"completion_tokens": tokens, "ttft_s": round((first or time.perf_counter()) - started_at, 3),
            "decode_tok_per_s": round((tokens - 1) / span, 1) if span and tokens > 1 else None,
            "wall_s": round(time.perf_counter() - started_at, 3)}


def scenarios(max_tokens: int) -> dict[str, dict]:
    """The request bodies, by scenario."""
    base = {k: v for k, v in OPENCODE.items() if k not in ("stream", "stream_options", "model")}
    base.update(max_tokens=max_tokens, temperature=0)
    plain = {k: v for k, v in base.items() if k not in ("tools", "tool_choice")}
    # minerva's own tool prompt written into the messages, no tools: the same prompt without the grammar
    same_prompt = {**plain, "messages": add_tools_to_system(base["messages"], render_tools_for_prompt(base["tools"]))}
    forced = {"messages": [{"role": "user", "content": "John is 30 years old."}], "tools": [PERSON],
              "tool_choice": {"type": "function", "function": {"name": "record_person"}}, "temperature": 0,
              "max_tokens": 64}
    return {"opencode_auto": base, "opencode_required": {**base, "tool_choice": "required"},
            "opencode_no_tools": plain, "opencode_tool_prompt_no_grammar": same_prompt, "forced_tiny_call": forced}


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "grammar.json")
    args = parser.parse_args()
    logs = args.out.parent
    logs.mkdir(parents=True, exist_ok=True)
    binary = llama_server_binary()
    bodies = scenarios(args.max_tokens)
    results: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        servers = {}
        port = free_port()
        servers["minerva"] = f"http://127.0.0.1:{port}/v1"
        stack.enter_context(started(
            [sys.executable, "-m", "minerva.cli", "serve", "--port", str(port), "--threads", str(args.threads),
             "--slots", "1", "--ctx-size", str(args.ctx), "--models-dir", str(logs / "no-models")],
            servers["minerva"], logs / "minerva-grammar.log"))
        port = free_port()
        servers["llama-server"] = f"http://127.0.0.1:{port}/v1"
        stack.enter_context(started(
            [binary, "-m", str(model_path()), "-t", str(args.threads), "-np", "1", "-c", str(args.ctx), "--jinja",
             "--host", "127.0.0.1", "--port", str(port), "-a", args.model, "--no-webui"],
            servers["llama-server"], logs / "llama-server-grammar.log"))
        order = list(servers.items())
        for key, body in bodies.items():
            runs: dict[str, list[dict]] = {name: [] for name in servers}
            for index in range(args.rounds + 1):  # the first round warms the prompt cache, not counted
                for name, url in (order if index % 2 == 0 else order[::-1]):
                    run = stream_once(url, {**body, "model": args.model})
                    if index:
                        runs[name].append(run)
            results[key] = {name: summary(rs) for name, rs in runs.items()}
            print(f"{key}: " + ", ".join(f"{n} {r.get('decode_tok_per_s')} tok/s, {r.get('completion_tokens')} tokens"
                                         for n, r in results[key].items()), file=sys.stderr)
    results["ratios"] = ratios(results)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results["ratios"], indent=2))
    return 0


def summary(runs: list[dict]) -> dict:
    """Medians over rounds (errors reported, not averaged)."""
    good = [r for r in runs if "error" not in r and r.get("decode_tok_per_s")]
    if not good:
        return {"error": next((r.get("error") for r in runs if "error" in r), "no decoded tokens")}
    return {key: statistics.median(r[key] for r in good) for key in ("decode_tok_per_s", "completion_tokens", "ttft_s")}


def ratios(results: dict) -> dict:
    """Constrained vs unconstrained on minerva, and minerva vs llama-server under a grammar."""
    def rate(key: str, name: str) -> float | None:
        return results.get(key, {}).get(name, {}).get("decode_tok_per_s")

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    return {
        "minerva_auto_vs_same_prompt_no_grammar": ratio(rate("opencode_auto", "minerva"),
                                                        rate("opencode_tool_prompt_no_grammar", "minerva")),
        "minerva_required_vs_same_prompt_no_grammar": ratio(rate("opencode_required", "minerva"),
                                                            rate("opencode_tool_prompt_no_grammar", "minerva")),
        "minerva_auto_vs_no_tools": ratio(rate("opencode_auto", "minerva"), rate("opencode_no_tools", "minerva")),
        "minerva_required_vs_no_tools": ratio(rate("opencode_required", "minerva"),
                                              rate("opencode_no_tools", "minerva")),
        "required_minerva_vs_llama_server": ratio(rate("opencode_required", "minerva"),
                                                  rate("opencode_required", "llama-server")),
        "auto_minerva_vs_llama_server": ratio(rate("opencode_auto", "minerva"), rate("opencode_auto", "llama-server")),
        "forced_tiny_call_tokens (minerva, llama-server)": (
            results["forced_tiny_call"]["minerva"].get("completion_tokens"),
            results["forced_tiny_call"]["llama-server"].get("completion_tokens")),
    }


if __name__ == "__main__":
    raise SystemExit(main())
