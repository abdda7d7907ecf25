"""Streaming chat benchmarks against any OpenAI-compatible base URL (ours or llama-server alike).

Raw httpx + SSE parsing, so the client costs the same for every server. Each scenario returns a
dict of figures; `bench/run_all.py` runs them side by side and prints ratios.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class StreamResult:
    """Timings of one streamed request."""

    started: float
    first_token: float | None = None
    finished: float | None = None
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None
    text: list[str] = field(default_factory=list)

    @property
    def ttft(self) -> float | None:
        """Seconds from sending to the first content token."""
        return None if self.first_token is None else self.first_token - self.started


async def stream_chat(client: httpx.AsyncClient, base_url: str, model: str, messages: list[dict],
                      max_tokens: int, headers: dict | None = None, extra: dict | None = None) -> StreamResult:
    """Send one streaming chat request and time it."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": True,
            "temperature": 0, "stream_options": {"include_usage": True}, **(extra or {})}
    result = StreamResult(started=time.perf_counter())
    chunks = 0
    try:
        async with client.stream("POST", f"{base_url}/chat/completions", json=body, headers=headers) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                payload = json.loads(line[6:])
                if "error" in payload:
                    result.error = str(payload["error"])
                    break
                for choice in payload.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        chunks += 1
                        result.text.append(content)
                        if result.first_token is None:
                            result.first_token = time.perf_counter()
                usage = payload.get("usage")
                if usage:
                    result.completion_tokens = usage.get("completion_tokens", 0)
                    result.prompt_tokens = usage.get("prompt_tokens", 0)
                    result.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    except httpx.HTTPError as exc:
        result.error = repr(exc)
    result.finished = time.perf_counter()
    result.completion_tokens = result.completion_tokens or chunks
    return result


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summarize(results: list[StreamResult], wall: float) -> dict:
    """Aggregate figures of a batch of streams."""
    ok = [r for r in results if r.error is None]
    tokens = sum(r.completion_tokens for r in ok)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    decode = [(r.completion_tokens - 1) / (r.finished - r.first_token)
              for r in ok if r.first_token and r.finished and r.completion_tokens > 1 and r.finished > r.first_token]
    return {
        "requests": len(results), "errors": len(results) - len(ok), "wall_s": round(wall, 3),
        "completion_tokens": tokens, "tok_per_s": round(tokens / wall, 2) if wall else 0.0,
        "decode_tok_per_s_per_stream": round(statistics.mean(decode), 2) if decode else 0.0,
        "ttft_p50_s": round(_percentile(ttfts, 0.5), 3), "ttft_p95_s": round(_percentile(ttfts, 0.95), 3),
        "cached_tokens": sum(r.cached_tokens for r in ok),
        "first_error": next((r.error for r in results if r.error), None),
    }


STORY = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]
# SmolLM2's end-of-generation tokens (<|endoftext|>, <|im_end|>) banned through the standard
# logit_bias field, so every server generates exactly max_tokens and throughput compares like for like.
NO_EOS = {"logit_bias": {"0": -100, "2": -100}}
# A new connection per request: llama-server closes idle keep-alive connections, and a request sent
# on one that was just closed fails without a response (seen on the anchor, never on ours).
FRESH_CONNECTIONS = httpx.Limits(max_keepalive_connections=0)


async def run_concurrent(base_url: str, model: str, streams: int, max_tokens: int, rounds: int = 2) -> dict:
    """`streams` identical-length greedy streams at once, `rounds` times; aggregate throughput."""
    async with httpx.AsyncClient(timeout=600, limits=FRESH_CONNECTIONS) as client:
        await stream_chat(client, base_url, model, STORY, 8)  # warm-up: load the model
        results, wall = [], 0.0
        for round_index in range(rounds):
            messages = [{"role": "user", "content": f"{STORY[0]['content']} Version {round_index}."}]
            started = time.perf_counter()
            batch = await asyncio.gather(*(
                stream_chat(client, base_url, model,
                            [{"role": "user", "content": messages[0]["content"] + f" Teller {i}."}], max_tokens,
                            extra=NO_EOS)
                for i in range(streams)))
            wall += time.perf_counter() - started
            results.extend(batch)
    return summarize(results, wall)


def long_prefix(n_lines: int, variant: int = 0) -> str:
    """A deterministic document of numbered facts (~23 tokens a line for SmolLM2: digits split)."""
    colours = ["red", "green", "blue", "amber", "violet", "silver", "black", "white"]
    return "\n".join(f"Fact {i}: crate {i + variant} holds {(i + variant) * 7 % 97} {colours[i % 8]} marbles "
                     f"on shelf {i % 13}." for i in range(n_lines))


async def run_shared_prefix(base_url: str, model: str, requests: int, concurrency: int, prefix_lines: int,
                            max_tokens: int) -> dict:
    """N requests sharing a long prefix and differing in the last line, `concurrency` at a time."""
    prefix = long_prefix(prefix_lines)
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=1200, limits=FRESH_CONNECTIONS) as client:
        await stream_chat(client, base_url, model, STORY, 4)

        async def one(i: int) -> StreamResult:
            async with semaphore:
                messages = [{"role": "system", "content": "Answer from the document.\n" + prefix},
                            {"role": "user", "content": f"How many marbles does crate {i * 11} hold?"}]
                return await stream_chat(client, base_url, model, messages, max_tokens, extra=NO_EOS)

        started = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - started
    summary = summarize(list(results), wall)
    summary["prompt_tokens_each"] = results[0].prompt_tokens
    return summary


async def run_multi_turn(base_url: str, model: str, prefix_lines: int, max_tokens: int) -> dict:
    """A session whose second turn resends the first turn's long history: second TTFT vs first."""
    prefix = long_prefix(prefix_lines, variant=1000)  # not the shared-prefix scenario's document
    headers = {"x-session-affinity": f"bench-{time.time_ns()}"}
    async with httpx.AsyncClient(timeout=1200, limits=FRESH_CONNECTIONS) as client:
        await stream_chat(client, base_url, model, STORY, 4)
        history = [{"role": "system", "content": "Answer from the document.\n" + prefix},
                   {"role": "user", "content": "How many marbles does crate 5 hold?"}]
        first = await stream_chat(client, base_url, model, history, max_tokens, headers=headers)
        history += [{"role": "assistant", "content": "".join(first.text)},
                    {"role": "user", "content": "And crate 9?"}]
        second = await stream_chat(client, base_url, model, history, max_tokens, headers=headers)
    return {
        "first_prompt_tokens": first.prompt_tokens, "first_ttft_s": round(first.ttft or float("nan"), 3),
        "second_ttft_s": round(second.ttft or float("nan"), 3),
        "second_cached_tokens": second.cached_tokens,
        "ttft_ratio": round((second.ttft or 0) / (first.ttft or 1), 3),
        "errors": [e for e in (first.error, second.error) if e],
    }
