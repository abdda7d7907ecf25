"""PrefixCache bookkeeping: slot choice, donor search and the always-recompute-one-token rule."""

from __future__ import annotations

from minerva.engine.llamacpp.prefix_cache import (
    MIN_COPY_TOKENS,
    PrefixCache,
    SavedPrompts,
    common_prefix_length,
    worth_restoring,
)


def test_common_prefix_length_across_block_boundaries():
    a = list(range(1000))
    assert common_prefix_length(a, a) == 1000
    assert common_prefix_length(a, a[:300]) == 300
    b = a[:600] + [-1] + a[601:]
    assert common_prefix_length(a, b) == 600
    assert common_prefix_length([], a) == 0


def _hold(cache: PrefixCache, prompt: list[int], session: str | None = None) -> int:
    plan = cache.plan(prompt, session)
    assert plan is not None
    slot = cache.claim(plan, prompt, session)
    slot.tokens = list(prompt)  # as if the prompt was decoded
    return slot.seq_id


def test_empty_cache_reuses_nothing_and_fills_empty_slots_first():
    cache = PrefixCache(3)
    first = _hold(cache, [1, 2, 3])
    cache.release(first)
    plan = cache.plan([9, 9, 9], None)
    assert plan.donor_seq_id is None and plan.reused_tokens == 0
    assert plan.seq_id != first  # an empty slot is taken before evicting cached cells


def test_reuses_longest_prefix_but_recomputes_the_last_prompt_token():
    cache = PrefixCache(2)
    seq = _hold(cache, [1, 2, 3, 4])
    cache.release(seq)
    plan = cache.plan([1, 2, 3, 4], None)
    assert plan.seq_id == seq and plan.donor_seq_id == seq and plan.reused_tokens == 3
    plan = cache.plan([1, 2, 7], None)
    assert plan.reused_tokens == 2


def test_busy_donor_is_copied_into_another_slot():
    cache = PrefixCache(2)
    shared = list(range(100, 100 + MIN_COPY_TOKENS))
    busy = _hold(cache, shared + [5, 6, 7, 8, 9])
    plan = cache.plan(shared + [5, 6, 7, 1], None)
    assert plan.seq_id != busy and plan.donor_seq_id == busy and plan.reused_tokens == MIN_COPY_TOKENS + 3


def test_a_short_shared_prefix_is_recomputed_not_copied():
    cache = PrefixCache(2)
    busy = _hold(cache, [5, 6, 7, 8, 9])
    plan = cache.plan([5, 6, 7, 1], None)
    assert plan.seq_id != busy and plan.donor_seq_id is None and plan.reused_tokens == 0


def test_the_chosen_slot_keeps_its_own_prefix_when_a_copy_would_save_little():
    cache = PrefixCache(2)
    a = _hold(cache, [1] * 10 + [2] * 50)
    b = _hold(cache, [1] * 20 + [3] * 50)
    cache.release(a)
    cache.release(b)
    plan = cache.plan([1] * 20 + [4] * 5, None)  # b shares 20, a (least recently used) shares 10
    assert plan.seq_id == a and plan.donor_seq_id == a and plan.reused_tokens == 10


def test_session_slot_is_preferred_and_lru_is_evicted():
    cache = PrefixCache(3)
    a = _hold(cache, [1, 1], session="a")
    b = _hold(cache, [2, 2], session="b")
    c = _hold(cache, [3, 3])
    for seq in (b, a, c):
        cache.release(seq)
    assert cache.plan([8, 8], "a").seq_id == a
    assert cache.plan([8, 8], None).seq_id == b  # least recently released
    assert cache.plan([3, 3, 4], None).seq_id == c  # its own cells are the best donor


def test_no_plan_when_every_slot_is_busy():
    cache = PrefixCache(1)
    _hold(cache, [1])
    assert cache.plan([1, 2], None) is None
    assert cache.free_slots() == 0


def test_a_donor_that_would_lose_its_cached_tail_is_copied_not_overwritten():
    cache = PrefixCache(3)
    system = [7] * (MIN_COPY_TOKENS + 4)
    first = _hold(cache, system + [1] * 40)  # conversation A: shared system prompt + its own history
    cache.release(first)
    plan = cache.plan(system + [2] * 5, None)  # conversation B shares only the system prompt
    assert plan.donor_seq_id == first and plan.reused_tokens == len(system)
    assert plan.seq_id != first  # A's cells stay; B's slot gets a copy of the shared prefix
    second = cache.claim(plan, system + [2] * 5, None)
    second.tokens = system + [2] * 5
    cache.release(second.seq_id)
    assert cache.plan(system + [1] * 40 + [3], None).reused_tokens == len(system) + 40  # A's next turn: all


def test_the_next_turn_takes_over_its_own_slot():
    cache = PrefixCache(3)
    seq = _hold(cache, [4] * 30)
    cache.release(seq)
    turn = [4] * 28 + [5] * 10  # history re-tokenized a little differently at its end
    plan = cache.plan(turn, None)
    assert plan.seq_id == seq and plan.donor_seq_id == seq and plan.reused_tokens == 28


def test_the_same_prompt_again_takes_over_the_slot_that_holds_it():
    cache = PrefixCache(3)
    prompt = list(range(50))
    seq = _hold(cache, prompt)
    cache.slots[seq].tokens = prompt + [99] * 60  # the prompt and its (long) answer
    cache.release(seq)
    plan = cache.plan(prompt, None)
    assert plan.seq_id == seq and plan.donor_seq_id == seq and plan.reused_tokens == 49


def test_a_new_sequence_keeps_the_busy_slots_consecutive():
    cache = PrefixCache(4)
    _hold(cache, [1] * 5)  # slot 0, busy
    plan = cache.plan([2] * 5, None)
    assert plan.seq_id == 1  # next to slot 0: the two decode in one ubatch
    cache = PrefixCache(4)
    cache.slots[2].busy = True
    assert cache.plan([3] * 5, None).seq_id in (1, 3)


def test_saved_prompts_find_the_longest_prefix_and_drop_the_oldest_beyond_the_budget():
    saved = SavedPrompts(budget_bytes=25)
    saved.put([1, 2, 3], b"a" * 10)
    saved.put([1, 2, 9, 9], b"b" * 10)
    entry, n = saved.best([1, 2, 9, 5])
    assert entry.state == b"b" * 10 and n == 3
    saved.touch(saved.best([1, 2, 3])[0])  # [1, 2, 3] is now the most recently used
    saved.put([7, 7], b"c" * 10)  # 30 bytes > 25: the least recently used ([1, 2, 9, 9]) goes
    assert saved.best([1, 2, 9])[1] == 2 and saved.best([1, 2, 3])[0].state == b"a" * 10
    assert len(saved) == 2 and saved.bytes_held == 20


def test_a_saved_prompt_replaces_the_entries_it_extends():
    saved = SavedPrompts(budget_bytes=1000)
    saved.put([1, 2], b"x")
    saved.put([1, 2, 3, 4], b"y")
    assert len(saved) == 1 and saved.best([1, 2, 3, 4, 5])[1] == 4
    saved.put([5], b"z" * 2000)  # larger than the whole budget: not kept
    assert len(saved) == 1


def test_restoring_pays_for_a_few_tokens_and_more_for_long_states():
    assert worth_restoring(100, 2) and not worth_restoring(100, 1)
    assert not worth_restoring(10_000, 5) and worth_restoring(10_000, 12)
