"""Fuzzing both readers: only ModelFormatError may ever escape, and memory stays bounded.

A deterministic sweep (every bit flip of the raw GGUF seed, every truncation, huge counts written
at every offset) plus hypothesis-driven stacked mutations of GGUF and SafeTensors seeds.
"""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.model_fixtures import (
    CHATML_TEMPLATE,
    GGUFSpec,
    GGUFTensorSpec,
    gguf_bytes,
    gguf_kv,
    gguf_string,
    small_raw_gguf,
    tiny_tensors,
    write_gguf,
    write_safetensors,
)

from minerva.core.errors import ModelFormatError
from minerva.formats.detect import read_model_info
from minerva.formats.gguf import parse_gguf_header, read_gguf_header
from minerva.formats.safetensors import read_safetensors_header

HUGE_VALUES = (2**60, 2**62, 2**63, 2**64 - 1, 2**32 - 1, 2**31)
HYPOTHESIS_EXAMPLES = 3000  # per format; each example stacks up to 4 mutations


def _only_format_errors(read: Callable[[Path], object], path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        read(path)
    except ModelFormatError as error:
        assert error.path == path
    # any other exception propagates and fails the test


def _read_gguf_fully(path: Path) -> None:
    read_gguf_header(path)
    read_model_info(path)


def _read_safetensors_fully(path: Path) -> None:
    read_safetensors_header(path)
    read_model_info(path)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Valid files to mutate: a raw GGUF, a gguf-py GGUF and a SafeTensors file."""
    directory = tmp_path_factory.mktemp("fuzz-seeds")
    tensors = (GGUFTensorSpec("w", gguf.GGMLQuantizationType.Q4_0, (32, 2)),)
    spec = GGUFSpec(vocab_size=80, chat_template=CHATML_TEMPLATE, tensors=tensors, extra={"x.floats": [0.5, 1.0]})
    gguf_py = write_gguf(directory / "seed.gguf", spec).read_bytes()
    small = {"a": np.arange(6, dtype=np.float16).reshape(2, 3), "b": np.ones(4, dtype=np.int32)}
    return {
        "gguf_raw": small_raw_gguf(),
        "gguf_py": gguf_py,
        "safetensors": write_safetensors(directory / "seed.safetensors", small, {"format": "pt"}).read_bytes(),
        "safetensors_llama": write_safetensors(directory / "llama.safetensors", tiny_tensors()).read_bytes(),
    }


def _deterministic_gguf_mutations(data: bytes) -> Iterator[bytes]:
    header_end = len(data) - 48  # the raw seed ends with 48 bytes of tensor data
    for position in range(header_end):
        for bit in range(8):
            mutated = bytearray(data)
            mutated[position] ^= 1 << bit
            yield bytes(mutated)
    for length in range(len(data)):
        yield data[:length]
    for position in range(0, header_end - 8):
        for value in HUGE_VALUES:
            mutated = bytearray(data)
            mutated[position : position + 8] = struct.pack("<Q", value)
            yield bytes(mutated)


def test_deterministic_gguf_sweep(tmp_path: Path, seeds: dict[str, bytes]) -> None:
    """Every mutation is parsed in memory; every 25th also goes through a file and detect."""
    path = tmp_path / "m.gguf"
    tried = 0
    for mutated in _deterministic_gguf_mutations(seeds["gguf_raw"]):
        try:
            parse_gguf_header(mutated, path)
        except ModelFormatError as error:
            assert error.path == path
        if tried % 25 == 0:
            _only_format_errors(_read_gguf_fully, path, mutated)
        tried += 1
    assert tried > 15_000


def test_deterministic_safetensors_sweep(tmp_path: Path, seeds: dict[str, bytes]) -> None:
    data = seeds["safetensors"]
    header_end = 8 + struct.unpack_from("<Q", data)[0]
    path = tmp_path / "m.safetensors"
    tried = 0
    for position in range(header_end):
        for replacement in (0, 0xFF, ord("9"), ord("-"), ord("["), ord('"')):
            mutated = bytearray(data)
            mutated[position] = replacement
            _only_format_errors(_read_safetensors_fully, path, bytes(mutated))
            tried += 1
    for length in range(header_end + 1):
        _only_format_errors(_read_safetensors_fully, path, data[:length])
        tried += 1
    assert tried > 1_000


def _mutate(data: bytes, operations: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, value) operations: flip, set byte, huge u64, truncate, duplicate."""
    mutated = bytearray(data)
    for kind, position, value in operations:
        if not mutated:
            break
        position %= len(mutated)
        if kind == 0:
            mutated[position] ^= 1 << (value % 8)
        elif kind == 1:
            mutated[position] = value % 256
        elif kind == 2:
            mutated[position : position + 8] = struct.pack("<Q", HUGE_VALUES[value % len(HUGE_VALUES)])
        elif kind == 3:
            del mutated[position:]
        else:
            chunk = mutated[position : position + 1 + value % 64]
            mutated[position:position] = chunk
    return bytes(mutated)


_operations = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 2**20), st.integers(0, 2**16)), min_size=1, max_size=4
)


@settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.sampled_from(["gguf_raw", "gguf_py"]), operations=_operations)
def test_hypothesis_gguf(tmp_path: Path, seeds: dict[str, bytes], seed: str, operations) -> None:
    _only_format_errors(_read_gguf_fully, tmp_path / "h.gguf", _mutate(seeds[seed], operations))


@settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.sampled_from(["safetensors", "safetensors_llama"]), operations=_operations)
def test_hypothesis_safetensors(tmp_path: Path, seeds: dict[str, bytes], seed: str, operations) -> None:
    data = seeds[seed]
    header_end = 8 + struct.unpack_from("<Q", data)[0]
    # Aim the mutations at the header: positions wrap within it, data stays intact.
    aimed = [(kind, position % header_end, value) for kind, position, value in operations]
    _only_format_errors(_read_safetensors_fully, tmp_path / "h.safetensors", _mutate(data, aimed))


@pytest.mark.parametrize(
    "data",
    [
        gguf_bytes(n_tensors=2**60),
        gguf_bytes(n_kv=2**60),
        gguf_bytes([gguf_kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 2**60))]),
        gguf_bytes([gguf_kv("k", 9, struct.pack("<IQ", 12, 2**60))]),
        gguf_bytes([gguf_kv("k", 8, gguf_string("x", length=2**62))]),
        gguf_bytes([gguf_kv("k", 9, struct.pack("<IQ", 8, 3) + gguf_string("x", length=2**40))]),
        struct.pack("<Q", 2**60) + b"{}",
    ],
)
def test_memory_stays_bounded_on_absurd_counts(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / ("m.safetensors" if data[:4] != b"GGUF" else "m.gguf")
    path.write_bytes(data + bytes(4096))
    read = read_gguf_header if path.suffix == ".gguf" else read_safetensors_header
    tracemalloc.start()
    try:
        with pytest.raises(ModelFormatError):
            read(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024
