"""The cost of the minerva hop: streams straight to llama-server vs through a minerva in front of it.

One llama-server on the embedded SmolLM2 and one minerva with no model of its own and the llama-server
as its upstream (`--upstream`). One and four greedy streams of 64 tokens, the two paths alternating
round by round (medians), as bench/run_all.py does; prints TTFT and tokens/s and the ratios.

    python bench/upstream_hop.py [--rounds 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_all import free_port, llama_server_binary, model_path, started, throughput_rounds  # noqa: E402

ALIAS = "smollm2-upstream"


def hop_ratios(through: dict, direct: dict) -> dict:
    """Through minerva relative to straight to llama-server (tokens/s: >1 is faster; TTFT: >1 is slower)."""
    def ratio(a: float, b: float) -> float:
        return round(a / b, 3) if b else float("nan")

    return {f"{key}_{figure}": ratio(through[key][figure], direct[key][figure])
            for key in through for figure in ("tok_per_s", "ttft_p50_s")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    binary = llama_server_binary()
    upstream_port, front_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}/v1"
    front = f"http://127.0.0.1:{front_port}/v1"
    logs = Path(tempfile.mkdtemp(prefix="minerva-hop-"))
    env = {**os.environ, "MINERVA_DISCOVER": ""}
    with contextlib.ExitStack() as stack:
        stack.enter_context(started(
            [binary, "-m", str(model_path()), "--alias", ALIAS, "--port", str(upstream_port), "-t", str(args.threads),
             "-c", "8192", "-np", "4"], upstream, logs / "llama-server.log"))
        stack.enter_context(started(
            [sys.executable, "-m", "minerva.cli", "serve", "--port", str(front_port), "--no-default-model",
             "--models-dir", str(logs), "--upstream", f"anchor={upstream}"], front, logs / "minerva.log", env=env))
        results: dict[str, dict] = {"llama-server": {}, "via-minerva": {}}
        for key, streams in (("single_64", 1), ("concurrent_4x64", 4)):
            figures = throughput_rounds({"llama-server": upstream, "via-minerva": front}, ALIAS, streams, args.rounds)
            for name, value in figures.items():
                results[name][key] = value
            print(f"{key}: " + ", ".join(f"{n} {results[n][key]['tok_per_s']} tok/s, TTFT p50 "
                                         f"{results[n][key]['ttft_p50_s']} s" for n in results), file=sys.stderr)
    results["ratios"] = hop_ratios(results["via-minerva"], results["llama-server"])
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
