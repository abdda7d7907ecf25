"""SafeTensors decode tokens/s through a minerva server vs transformers' own `generate` in-process.

Same model (SmolLM2-135M-Instruct made from the GGUF, in float32 and bfloat16), same threads, greedy.
Also the resident memory of a server that served only a GGUF chat (torch must not be imported).

    python bench/bench_transformers.py [--threads 2] [--tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench_models import free_port, rss_mb  # noqa: E402
from safetensors_models import build_smollm2_safetensors, cache_root, smollm2_safetensors_path  # noqa: E402

from minerva.default_model import default_model_path  # noqa: E402

logger = logging.getLogger("bench_transformers")
PROMPT = "Once upon a time, in a small village by the sea, there lived"


def bf16_copy(gguf: Path) -> Path:
    """A bfloat16 build of the same model (cached beside the float32 one)."""
    target = cache_root() / "SmolLM2-135M-Instruct-safetensors-bf16"
    if not (target / ".complete").is_file():
        build_smollm2_safetensors(gguf, target, dtype="bfloat16")
    return target


def start_server(args: list[str], threads: int) -> tuple[subprocess.Popen, str]:
    """A `minerva serve` subprocess; returns it and its base URL once it answers."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "minerva.cli", "serve", "--port", str(port), "--threads",
                             str(threads), "--slots", "1", "--ctx-size", "1024", "--models-dir", tempfile.mkdtemp(),
                             *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{base}/models", timeout=1)
            return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def server_decode_rate(base: str, model: str, tokens: int) -> float:
    """Streamed completion: tokens after the first divided by the time between first and last."""
    stamps = []
    body = {"model": model, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{base}/completions", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and '"text":""' not in line:
                stamps.append(time.perf_counter())
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def reference_decode_rate(model, ids, tokens: int) -> float:
    """transformers generate: (tokens - 1) / (time for `tokens` - time for 1), greedy, EOS ignored."""
    import torch

    with torch.inference_mode():
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=1, do_sample=False)
        one = time.perf_counter() - start
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        many = time.perf_counter() - start
    return (tokens - 1) / (many - one)


def gguf_only_rss() -> dict:
    """RSS of a server after one GGUF chat, and whether torch got imported."""
    script = (
        "import sys, tempfile, os, openai\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from conftest import running_server\nfrom minerva.settings import Settings\n"
        "from bench_models import rss_mb\n"
        "with running_server(Settings(models_dirs=[tempfile.mkdtemp()], n_threads=2, n_slots=1, n_ctx=512)) as s:\n"
        "    c = openai.OpenAI(base_url=s.base_url, api_key='x')\n"
        "    c.chat.completions.create(model='smollm2-135m-instruct', max_tokens=8,"
        " messages=[{'role': 'user', 'content': 'hi'}])\n"
        "    print(rss_mb(os.getpid()), 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "bench")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    rss, torch_loaded = out.stdout.split()[-2:]
    return {"gguf_only_server_rss_mb": round(float(rss), 1), "torch_imported": torch_loaded == "True"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    gguf = default_model_path()
    results: dict = {"threads": args.threads, "tokens": args.tokens}
    for label, directory in (("float32", smollm2_safetensors_path(gguf)), ("bfloat16", bf16_copy(gguf))):
        tokenizer = AutoTokenizer.from_pretrained(directory)
        reference = AutoModelForCausalLM.from_pretrained(directory, dtype="auto").eval()
        ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
        proc, base = start_server(["--no-default-model", "--model", f"st={directory}"], args.threads)
        try:
            server_decode_rate(base, "st", 4)  # load and warm up
            reference_decode_rate(reference, ids, 4)
            ours, theirs = [], []
            for _ in range(args.rounds):  # interleaved, so both see the same machine load
                ours.append(server_decode_rate(base, "st", args.tokens))
                theirs.append(reference_decode_rate(reference, ids, args.tokens))
            results[label] = {"server_tok_s": round(max(ours), 2), "transformers_generate_tok_s": round(max(theirs), 2),
                              "ratio": round(max(ours) / max(theirs), 3),
                              "server_rss_mb": round(rss_mb(proc.pid), 1)}
            logger.info("%s: %s", label, results[label])
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        del reference
    results.update(gguf_only_rss())
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
