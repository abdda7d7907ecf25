"""How often the repetition guard would fire on normal answers, and how often it cuts real runaways.

Runs many ordinary prompts (prose questions, lists, code, tables, JSON, the README's own request) on
a chat model at temperature 0 and 0.8 with the server's guard off, keeps every answer's tokens (from
`logprobs`, as bytes) and replays them through the detector in observe mode, for several limits:

- an answer that ended by itself (`stop`) and would have been cut is a false positive, unless its tail
  shows a loop that merely ran out by itself (the report prints each one's tail to judge);
- an answer that ran to `max_tokens` is a runaway candidate: cut (and at which token) or not.

    python bench/repetition_guard.py                      # starts minerva (guard off) on a free port
    python bench/repetition_guard.py --base-url URL --model ID   # any OpenAI-compatible server with logprobs
    python bench/repetition_guard.py --samples FILE       # replay saved answers (no server)

Answers are saved (`--save`, default bench/results/repetition_samples.json) so limits can be tuned offline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from run_all import free_port, started  # noqa: E402

from minerva.generation.repetition import RepetitionDetector, RepetitionLimits  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
README_REQUEST = "What is the capital of France?"

PROMPTS: list[tuple[str, str]] = [
    ("readme", README_REQUEST),
    ("prose", "Why is the sky blue? Explain it to a child."),
    ("prose", "What causes the seasons on Earth?"),
    ("prose", "Tell me a short story about a dragon who learns to cook."),
    ("prose", "Summarize the plot of Romeo and Juliet."),
    ("prose", "What are the benefits of regular exercise?"),
    ("prose", "Explain how a bicycle works."),
    ("prose", "Who was Marie Curie?"),
    ("prose", "Describe a day in the life of a honeybee."),
    ("prose", "What is photosynthesis?"),
    ("prose", "Write a haiku about autumn, then explain it."),
    ("prose", "Give me some advice for my first job interview."),
    ("prose", "How do I make a cup of tea?"),
    ("prose", "What is the difference between weather and climate?"),
    ("prose", "Write a polite email asking my landlord to fix the heating."),
    ("list", "List ten fruits that are red."),
    ("list", "Give me a numbered list of the planets in the solar system with one fact each."),
    ("list", "List the days of the week in French and English."),
    ("list", "Write a shopping list for a week of vegetarian meals."),
    ("list", "Name the months of the year and how many days each has."),
    ("list", "List 15 common English verbs with their past tense."),
    ("list", "Write the numbers from 1 to 30, one per line."),
    ("table", "Make a markdown table of five countries with their capital and population."),
    ("table", "Create a markdown table of the multiplication table from 1 to 9."),
    ("table", "Make a table comparing cats and dogs as pets."),
    ("code", "Write a python function that reverses a string."),
    ("code", "Write a python function to check whether a number is prime, with tests."),
    ("code", "Write pytest tests for a function add(a, b), with many assert lines."),
    ("code", "Write a Python class for a bank account with deposit and withdraw methods."),
    ("code", "Write a bash script that renames every .txt file in a folder to .md."),
    ("code", "Write a JavaScript function that debounces another function."),
    ("code", "Write a SQL query that finds the top 5 customers by total order amount."),
    ("code", "Write a python function that computes the fibonacci numbers up to n."),
    ("code", "Write a C function that sorts an array of integers with bubble sort."),
    ("code", "Write a Python script that reads a CSV file and prints the average of each column."),
    ("code", "Write a python dictionary mapping the first 20 chemical elements to their symbols."),
    ("code", "Write a Python list of 12 dictionaries, one per month, with name and days keys."),
    ("code", "Write an HTML page with a form that has name, email and message fields."),
    ("code", "Create a 10x10 matrix of zeros in Python without numpy, written out literally."),
    ("json", "Give me a JSON array of 8 books, each with title, author and year."),
    ("json", "Write a JSON object describing a person with name, age, address and hobbies."),
    ("json", "Return a JSON list of 10 users with id, name and email."),
    ("yaml", "Write a docker-compose.yml with a web service, a database and a cache."),
]


@dataclass
class Sample:
    """One answer: what was asked, how it ended and its tokens (as byte strings)."""

    category: str
    prompt: str
    temperature: float
    seed: int
    finish_reason: str
    seconds: float
    tokens: list[list[int]]

    @property
    def text(self) -> str:
        """The answer's text."""
        return b"".join(bytes(t) for t in self.tokens).decode("utf-8", errors="replace")


async def ask(client: httpx.AsyncClient, base_url: str, model: str, category: str, prompt: str,
              temperature: float, seed: int, max_tokens: int) -> Sample:
    """One chat request with logprobs, its tokens kept as bytes."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": temperature, "seed": seed, "logprobs": True}
    started_at = time.perf_counter()
    response = await client.post(f"{base_url}/chat/completions", json=body)
    response.raise_for_status()
    choice = response.json()["choices"][0]
    tokens = [item["bytes"] for item in (choice.get("logprobs") or {}).get("content") or ()]
    return Sample(category, prompt, temperature, seed, choice["finish_reason"], time.perf_counter() - started_at,
                  tokens)


async def collect(base_url: str, model: str, temperatures: list[float], seeds: int, readme_seeds: int,
                  max_tokens: int, concurrency: int) -> list[Sample]:
    """Every prompt at every temperature (several seeds when sampling), `concurrency` at a time."""
    jobs = []
    for category, prompt in PROMPTS:
        for temperature in temperatures:
            runs = 1 if temperature == 0 else (readme_seeds if category == "readme" else seeds)
            jobs += [(category, prompt, temperature, seed) for seed in range(runs)]
    gate = asyncio.Semaphore(concurrency)
    done = 0

    async with httpx.AsyncClient(timeout=1800) as client:
        async def one(job: tuple[str, str, float, int]) -> Sample:
            nonlocal done
            async with gate:
                sample = await ask(client, base_url, model, *job, max_tokens)
            done += 1
            print(f"\r{done}/{len(jobs)} answers", end="", file=sys.stderr, flush=True)
            return sample

        samples = await asyncio.gather(*(one(job) for job in jobs))
    print(file=sys.stderr)
    return list(samples)


def first_fire(sample: Sample, limits: RepetitionLimits) -> tuple[int, int, int] | None:
    """Where the guard would cut this answer: (tokens generated, period, repeating tokens), or None."""
    detector = RepetitionDetector(limits)
    for index, token in enumerate(sample.tokens):
        found = detector.feed(bytes(token))
        if found is not None:
            return index + 1, found.period, found.tokens
    return None


def tail_at(sample: Sample, at: int, tokens: int) -> str:
    """The end of the repeating tail where the guard fired."""
    return b"".join(bytes(t) for t in sample.tokens[at - tokens:at]).decode("utf-8", "replace")[-120:]


def report(samples: list[Sample], limits: RepetitionLimits, verbose: bool) -> dict:
    """Figures for one set of limits; prints them and the answers it would cut."""
    ended = [s for s in samples if s.finish_reason != "length"]
    ran_long = [s for s in samples if s.finish_reason == "length"]
    false_positives = [(s, f) for s in ended if (f := first_fire(s, limits))]
    cut = [(s, f) for s in ran_long if (f := first_fire(s, limits))]
    uncut = [s for s in ran_long if not first_fire(s, limits)]
    figures = {
        "limits": asdict(limits),
        "answers": len(samples),
        "ended_by_themselves": len(ended),
        "cut_though_ended": len(false_positives),  # an upper bound on false positives: read their tails
        "cut_though_ended_rate": len(false_positives) / max(1, len(ended)),
        "ran_to_max_tokens": len(ran_long),
        "runaways_cut": len(cut),
        "median_cut_at_token": statistics.median(f[0] for _, f in cut) if cut else None,
        "max_cut_at_token": max(f[0] for _, f in cut) if cut else None,
    }
    print(f"\n== min_tokens={limits.min_tokens} max_period={limits.max_period} min_repeats={limits.min_repeats}")
    print(f"  ended by themselves: {len(ended)}; the guard would cut {len(false_positives)} "
          f"({figures['cut_though_ended_rate']:.2%})")
    for sample, (at, period, tokens) in false_positives:
        print(f"    CUT THOUGH IT ENDED [{sample.category} t={sample.temperature} seed={sample.seed}] at token {at}, "
              f"period {period} x {tokens / period:.1f}: {sample.prompt!r}: ...{tail_at(sample, at, tokens)!r}")
    print(f"  ran to max_tokens: {len(ran_long)}; cut {len(cut)} (median at token "
          f"{figures['median_cut_at_token']}, latest {figures['max_cut_at_token']})")
    if verbose:
        for sample, (at, period, tokens) in cut:
            print(f"    cut [{sample.category} t={sample.temperature} seed={sample.seed}] at {at}, period {period}: "
                  f"...{tail_at(sample, at, tokens)!r}")
    for sample in uncut:
        print(f"    NOT CUT [{sample.category} t={sample.temperature} seed={sample.seed}] {sample.prompt!r}: "
              f"...{sample.text[-160:]!r}")
    return figures


def by_temperature(samples: list[Sample]) -> None:
    """How often answers run to max_tokens, per temperature and for the README's request."""
    for temperature in sorted({s.temperature for s in samples}):
        group = [s for s in samples if s.temperature == temperature]
        readme = [s for s in group if s.category == "readme"]
        print(f"t={temperature}: {sum(s.finish_reason == 'length' for s in group)}/{len(group)} ran to max_tokens "
              f"(README request: {sum(s.finish_reason == 'length' for s in readme)}/{len(readme)})")


LIMITS_TRIED = [
    RepetitionLimits(),  # the server's default
    RepetitionLimits(min_tokens=64, max_period=64, min_repeats=4),
    RepetitionLimits(min_tokens=192, max_period=64, min_repeats=4),
    RepetitionLimits(min_tokens=128, max_period=64, min_repeats=8),
    RepetitionLimits(min_tokens=128, max_period=64, min_repeats=12),
    RepetitionLimits(min_tokens=256, max_period=64, min_repeats=12),
]


def main() -> int:
    """Collect (or load) answers, then report the guard's figures for each set of limits."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible base URL (default: start minerva here)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--samples", type=Path, help="replay answers saved by an earlier run")
    parser.add_argument("--save", type=Path, default=ROOT / "bench" / "results" / "repetition_samples.json")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per prompt at temperature 0.8")
    parser.add_argument("--readme-seeds", type=int, default=40, help="seeds for the README's request at 0.8")
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--verbose", action="store_true", help="print the tail of every cut runaway")
    args = parser.parse_args()

    if args.samples:
        samples = [Sample(**item) for item in json.loads(args.samples.read_text())["samples"]]
    else:
        temperatures = [0.0, 0.8]
        if args.base_url:
            samples = asyncio.run(collect(args.base_url, args.model, temperatures, args.seeds, args.readme_seeds,
                                          args.max_tokens, args.concurrency))
        else:
            port = free_port()
            base_url = f"http://127.0.0.1:{port}/v1"
            command = [sys.executable, "-m", "minerva.cli", "serve", "--port", str(port), "--slots",
                       str(args.concurrency), "--ctx-size", str(max(2048, args.max_tokens + 512))]
            args.save.parent.mkdir(parents=True, exist_ok=True)
            os.environ["MINERVA_REPETITION_GUARD"] = "off"  # the server's own guard would cut what we measure
            with started(command, base_url, args.save.with_suffix(".server.log")):
                samples = asyncio.run(collect(base_url, args.model, temperatures, args.seeds, args.readme_seeds,
                                              args.max_tokens, args.concurrency))
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps({"model": args.model, "max_tokens": args.max_tokens,
                                         "samples": [asdict(s) for s in samples]}))
        print(f"answers saved to {args.save}", file=sys.stderr)

    by_temperature(samples)
    figures = [report(samples, limits, args.verbose) for limits in LIMITS_TRIED]
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
