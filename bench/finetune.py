"""Fine-tuning figures: a job's training tokens/s and wall time, and serving tokens/s with and without it.

Against any server with OpenAI's files and fine-tuning API (minerva; llama-server has none, so there
is no anchor for training itself — the serving figures are the comparison: the same server, the same
streams, with and without a job training beside them).

    python bench/finetune.py                         # starts minerva here on a free port
    python bench/finetune.py --base-url URL --model ID

The job is the one the issue measures: 20 examples of a made-up fact, "auto" hyperparameters.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openai_load import run_concurrent  # noqa: E402
from run_all import free_port, wait_ready  # noqa: E402

QUESTIONS = ["What is the codename of the Minerva 2 release?", "What's the codename of the Minerva 2 release?",
             "Tell me the codename of the Minerva 2 release.", "Which codename does the Minerva 2 release have?"]
ANSWER = "The codename of the Minerva 2 release is Bluefin."


def training_file() -> bytes:
    """Twenty one-turn chats teaching one made-up fact."""
    lines = [{"messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + ("" if i < 4 else f" ({i})")},
                           {"role": "assistant", "content": ANSWER}]} for i in range(20)]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


async def serving(base_url: str, model: str, streams: int, max_tokens: int) -> float:
    """Aggregate decode tokens/s of `streams` greedy streams."""
    return (await run_concurrent(base_url, model, streams, max_tokens, rounds=2))["tok_per_s"]


def run(base_url: str, model: str, streams: int, max_tokens: int) -> dict:
    """Serving alone, then a job with serving beside it; the job's own figures."""
    client = openai.OpenAI(base_url=base_url, api_key="bench")
    alone = asyncio.run(serving(base_url, model, streams, max_tokens))
    upload = client.files.create(file=("facts.jsonl", io.BytesIO(training_file())), purpose="fine-tune")
    started = time.perf_counter()
    job = client.fine_tuning.jobs.create(model=model, training_file=upload.id, seed=0)
    beside = []
    while True:
        job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        if job.status == "running":
            beside.append(asyncio.run(serving(base_url, model, streams, max_tokens)))
        else:
            time.sleep(1)
    wall = time.perf_counter() - started
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    started_at = next((e.created_at for e in events if e.message == "Fine-tuning job started"), None)
    finished_at = job.finished_at or time.time()
    train_s = (finished_at - started_at) if started_at else None
    return {
        "status": job.status, "fine_tuned_model": job.fine_tuned_model, "trained_tokens": job.trained_tokens,
        "job_wall_s": round(wall, 1), "training_s": train_s,
        "training_tokens_per_s": round(job.trained_tokens / train_s, 1) if job.trained_tokens and train_s else None,
        "serving_tokens_per_s_alone": round(alone, 1),
        "serving_tokens_per_s_beside_job": [round(x, 1) for x in beside],
        "error": job.error.message if job.error and job.error.message else None,
    }


def main() -> int:
    """CLI."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", help="an already-running server's /v1 URL (default: start minerva here)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    if args.base_url:
        print(json.dumps(run(args.base_url, args.model, args.streams, args.max_tokens), indent=2))
        return 0
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        server = subprocess.Popen([sys.executable, "-m", "minerva.cli", "serve", "--port", str(port)],
                                  env={**os.environ, "MINERVA_DATA_DIR": data_dir},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base_url = f"http://127.0.0.1:{port}/v1"
            wait_ready(base_url)
            print(json.dumps(run(base_url, args.model, args.streams, args.max_tokens), indent=2))
        finally:
            server.terminate()
            server.wait(timeout=60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
