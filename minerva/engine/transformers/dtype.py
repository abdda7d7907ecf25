"""Which dtype a half-precision checkpoint computes in on this CPU: measured at load, not assumed."""

from __future__ import annotations

import logging
import threading
import time

import torch

logger = logging.getLogger(__name__)

_HALF = (torch.bfloat16, torch.float16)


def decode_matmul_seconds(dtype: torch.dtype, hidden: int, repeats: int = 12) -> float:
    """Best time of one decode-shaped product ([1, h] x [h, 4h]) in `dtype` on the current threads."""
    weight = torch.randn(hidden, 4 * hidden).to(dtype)
    x = torch.randn(1, hidden).to(dtype)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(x, weight)
            best = min(best, time.perf_counter() - start)
    return best


def compute_dtype(stored: torch.dtype, hidden: int, weights_bytes: int, memory_bytes: int) -> torch.dtype:
    """The stored dtype, or float32 when this CPU multiplies faster in it and twice the weights fit.

    Many CPUs have no fast bfloat16/float16 path, so half-precision weights run faster upcast
    (SmolLM2-135M on this project's test machine: 29.6 tok/s in bfloat16, 34.2 in float32).
    """
    if stored not in _HALF:
        return stored
    if weights_bytes * 2 > memory_bytes // 2:
        return stored
    timings: dict[torch.dtype, float] = {}

    def probe() -> None:
        for dtype in (stored, torch.float32):
            timings[dtype] = decode_matmul_seconds(dtype, hidden)

    # A thread that ran a parallel torch op keeps its OpenMP team, which then competed with the decode
    # thread's (decode fell from 31 to 18 tok/s here); a thread that exits takes its team with it.
    thread = threading.Thread(target=probe, name="minerva-dtype-probe")
    thread.start()
    thread.join()
    half, full = timings[stored], timings[torch.float32]
    choice = torch.float32 if full < 0.9 * half else stored
    logger.info("%s weights compute in %s here (decode-shaped matmul: %s %.0f us, float32 %.0f us)",
                str(stored).removeprefix("torch."), str(choice).removeprefix("torch."),
                str(stored).removeprefix("torch."), half * 1e6, full * 1e6)
    return choice
