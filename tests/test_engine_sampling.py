"""The numpy greedy fast path picks exactly what llama.cpp's logit-bias + greedy chain picks."""

from __future__ import annotations

import numpy as np
import pytest

llama = pytest.importorskip("llama_cpp")

from minerva.engine.base import SamplingParams  # noqa: E402
from minerva.engine.llamacpp.sampling import SequenceSampler, _plain_greedy_bias, greedy_choice  # noqa: E402

N_VOCAB = 4096


@pytest.mark.parametrize("seed", range(20))
def test_greedy_fast_path_matches_the_native_chain(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=N_VOCAB).astype(np.float32)
    logits[rng.integers(0, N_VOCAB, 3)] = logits.max()  # ties: the first maximum wins in both
    bias = tuple((int(t), float(b)) for t, b in zip(rng.choice(N_VOCAB, 6, replace=False), rng.normal(0, 5, 6)))
    if seed % 2:
        bias += ((int(logits.argmax()), -100.0),)  # ban the favourite
    params = SamplingParams(temperature=0.0, logit_bias=bias)
    fast = _plain_greedy_bias(params)
    assert fast is not None
    native = SequenceSampler.build(None, N_VOCAB, params)
    try:
        before = logits.copy()
        ids = np.fromiter(fast.keys(), dtype=np.int64)
        values = np.fromiter(fast.values(), dtype=np.float32)
        assert greedy_choice(logits, ids, values) == native.sample(logits.copy()).token_id
        assert np.array_equal(logits, before)  # the row is left as it was found
    finally:
        native.free()


def test_only_plain_greedy_takes_the_fast_path():
    assert _plain_greedy_bias(SamplingParams(temperature=0.0)) == {}
    assert _plain_greedy_bias(SamplingParams(temperature=0.7)) is None
    assert _plain_greedy_bias(SamplingParams(temperature=0.0, presence_penalty=0.5)) is None
    # a grammar sits beside the chain (checked on the pick), so greedy + grammar keeps the fast pick
    assert _plain_greedy_bias(SamplingParams(temperature=0.0, grammar='root ::= "a"')) == {}
