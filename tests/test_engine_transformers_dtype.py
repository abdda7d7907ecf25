"""Half-precision SafeTensors weights compute in float32 only where a measurement says it is faster."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from minerva.engine.transformers import dtype as transformers_dtype  # noqa: E402
from minerva.engine.transformers.dtype import compute_dtype, decode_matmul_seconds  # noqa: E402

GIB = 2**30


def _timings(monkeypatch, seconds: dict):
    monkeypatch.setattr(transformers_dtype, "decode_matmul_seconds", lambda dtype, hidden: seconds[dtype])


def test_float32_checkpoints_are_never_probed(monkeypatch):
    _timings(monkeypatch, {})  # any probe would raise KeyError
    assert compute_dtype(torch.float32, 576, GIB, 16 * GIB) == torch.float32


def test_the_faster_measured_dtype_wins(monkeypatch):
    _timings(monkeypatch, {torch.bfloat16: 100e-6, torch.float32: 80e-6})
    assert compute_dtype(torch.bfloat16, 576, GIB, 16 * GIB) == torch.float32
    _timings(monkeypatch, {torch.bfloat16: 60e-6, torch.float32: 80e-6})
    assert compute_dtype(torch.bfloat16, 576, GIB, 16 * GIB) == torch.bfloat16
    _timings(monkeypatch, {torch.float16: 85e-6, torch.float32: 80e-6})  # within 10 %: keep as stored
    assert compute_dtype(torch.float16, 576, GIB, 16 * GIB) == torch.float16


def test_no_upcast_when_twice_the_weights_would_not_fit(monkeypatch):
    _timings(monkeypatch, {torch.bfloat16: 100e-6, torch.float32: 10e-6})
    assert compute_dtype(torch.bfloat16, 4096, 6 * GIB, 16 * GIB) == torch.bfloat16


def test_the_probe_measures_a_real_product():
    assert 0 < decode_matmul_seconds(torch.float32, 64, repeats=2) < 1
