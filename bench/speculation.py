"""Speculative decoding, side by side: minerva with and without its n-gram drafts, and llama-server with
each of its draft-model-free `--spec-type`s and with none, on the same model file and threads.

Scenarios (one stream each, alternating servers round by round, medians):
  rewrite      a source file of the repository, to be repeated with one rename (greedy, then temperature 0.7)
  chat         a plain question, no copy to find (greedy)
Decode tokens/s is completion tokens over the time from the first to the last token, so a prompt
cached from the previous round does not flatter a server. Acceptance comes from minerva's /metrics.

    python bench/speculation.py [--rounds 3] [--lines 300] [--max-tokens 400]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openai_load import stream_chat  # noqa: E402
from run_all import ROOT, free_port, llama_server_binary, model_path, started  # noqa: E402

SOURCE = ROOT / "minerva" / "engine" / "llamacpp" / "scheduler.py"
LLAMA_SPEC_TYPES = ("none", "ngram-simple", "ngram-map-k", "ngram-mod", "ngram-cache")


def rewrite_messages(lines: int) -> list[dict]:
    """Ask for a file back with one identifier renamed (what an agent's edit tool makes a model do)."""
    text = "\n".join(SOURCE.read_text().splitlines()[:lines])
    return [{"role": "user", "content": "Rewrite this file exactly as it is, but rename BatchScheduler to "
                                        f"SlotScheduler everywhere. Output only the code.\n\n```python\n{text}\n```"}]


CHAT = [{"role": "user", "content": "Explain in a few paragraphs why the sky is blue and sunsets are red."}]


async def one(url: str, model: str, messages: list[dict], max_tokens: int, temperature: float) -> dict:
    """Decode tokens/s and TTFT of one streamed request."""
    async with httpx.AsyncClient(timeout=600) as client:
        result = await stream_chat(client, url, model, messages, max_tokens,
                                   extra={"temperature": temperature, "seed": 7})
    if result.error:
        raise RuntimeError(f"{url}: {result.error}")
    decode_s = (result.finished - result.first_token) if result.first_token else float("nan")
    return {"tokens": result.completion_tokens, "ttft_s": round(result.ttft or float("nan"), 3),
            "decode_tok_per_s": round((result.completion_tokens - 1) / decode_s, 2) if decode_s > 0 else 0.0}


def draft_counts(url: str) -> tuple[float, float]:
    """(drafted, accepted) summed over minerva's loaded models."""
    text = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=10).text
    total = {}
    for name in ("minerva_draft_tokens_total", "minerva_draft_accepted_tokens_total"):
        total[name] = sum(float(v) for v in re.findall(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M))
    return total["minerva_draft_tokens_total"], total["minerva_draft_accepted_tokens_total"]


def scenario(servers: dict[str, str], model: str, messages: list[dict], max_tokens: int, temperature: float,
             rounds: int) -> dict[str, dict]:
    """Every server, alternating order round by round; medians and each round's figures."""
    runs: dict[str, list[dict]] = {name: [] for name in servers}
    order = list(servers.items())
    for index in range(rounds):
        for name, url in (order if index % 2 == 0 else order[::-1]):
            before = draft_counts(url) if name.startswith("minerva") else None
            figures = asyncio.run(one(url, model, messages, max_tokens, temperature))
            if before is not None:
                after = draft_counts(url)
                drafted, accepted = after[0] - before[0], after[1] - before[1]
                figures["acceptance"] = round(accepted / drafted, 3) if drafted else None
                figures["draft_tokens"], figures["accepted_tokens"] = int(drafted), int(accepted)
            runs[name].append(figures)
            print(f"  round {index + 1} {name}: {figures}", file=sys.stderr)
    out = {}
    for name, results in runs.items():
        out[name] = {"decode_tok_per_s": statistics.median(r["decode_tok_per_s"] for r in results),
                     "ttft_s": statistics.median(r["ttft_s"] for r in results),
                     "tokens": statistics.median(r["tokens"] for r in results), "rounds": results}
        accepted = [r["acceptance"] for r in results if r.get("acceptance") is not None]
        if accepted:
            out[name]["acceptance"] = statistics.median(accepted)
    return out


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lines", type=int, default=300, help="lines of the file to rewrite")
    parser.add_argument("--max-tokens", type=int, default=400)
    parser.add_argument("--spec-types", default=",".join(LLAMA_SPEC_TYPES), help="llama-server --spec-type values")
    parser.add_argument("--scenarios", default="rewrite_greedy,rewrite_t0.7,chat_greedy")
    parser.add_argument("--no-spec-first", action="store_true", help="start minerva without speculation first")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "speculation.json")
    args = parser.parse_args()
    logs = args.out.parent
    logs.mkdir(parents=True, exist_ok=True)
    binary = llama_server_binary()
    servers: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        pair = (("minerva", None), ("minerva-no-spec", "0"))  # None: the default draft limit
        # the process started first has measured slower here, whatever it runs: --no-spec-first flips them
        for name, draft in (pair[::-1] if args.no_spec_first else pair):
            port = free_port()
            url = f"http://127.0.0.1:{port}/v1"
            env = {**os.environ, **({"MINERVA_SPECULATION_MAX_DRAFT": draft} if draft else {})}
            stack.enter_context(started(
                [sys.executable, "-m", "minerva.cli", "serve", "--port", str(port), "--threads", str(args.threads),
                 "--slots", "1", "--ctx-size", str(args.ctx), "--models-dir", str(logs / "no-models")],
                url, logs / f"{name}.log", env=env))
            servers[name] = url
        for spec in args.spec_types.split(","):
            port = free_port()
            url = f"http://127.0.0.1:{port}/v1"
            command = [binary, "-m", str(model_path()), "-t", str(args.threads), "-np", "1", "-c", str(args.ctx),
                       "--host", "127.0.0.1", "--port", str(port), "-a", args.model, "--no-webui"]
            if spec != "none":
                command += ["--spec-type", spec]
            stack.enter_context(started(command, url, logs / f"llama-server-{spec}.log"))
            servers[f"llama-server-{spec}"] = url
        rewrite = rewrite_messages(args.lines)
        results = {}
        for key, messages, temperature in (("rewrite_greedy", rewrite, 0.0), ("rewrite_t0.7", rewrite, 0.7),
                                           ("chat_greedy", CHAT, 0.0)):
            if key not in args.scenarios.split(","):
                continue
            print(f"{key}:", file=sys.stderr)
            results[key] = scenario(servers, args.model, messages, args.max_tokens, temperature, args.rounds)
    summary = {}
    for key, figures in results.items():
        ours, plain = figures["minerva"]["decode_tok_per_s"], figures["minerva-no-spec"]["decode_tok_per_s"]
        best = max((n for n in figures if n.startswith("llama-server")), key=lambda n: figures[n]["decode_tok_per_s"])
        summary[key] = {"minerva_tok_per_s": ours, "minerva_no_spec_tok_per_s": plain,
                        "vs_no_spec": round(ours / plain, 3) if plain else None,
                        "best_llama_server": best, "best_llama_server_tok_per_s": figures[best]["decode_tok_per_s"],
                        "vs_best_llama_server": round(ours / figures[best]["decode_tok_per_s"], 3),
                        "acceptance": figures["minerva"].get("acceptance")}
    results["summary"] = summary
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
