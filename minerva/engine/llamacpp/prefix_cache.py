"""Which KV cells each slot holds, and how a new prompt reuses them (pure bookkeeping, no llama)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence, Sized
from dataclasses import dataclass, field

from minerva.engine.prefix import common_prefix_length, longest_shared_prefix


KEEP_TOLERANCE = 16  # cached tokens a slot may lose when its own conversation continues in it
MIN_COPY_TOKENS = 32  # a prefix shorter than this is recomputed rather than copied from another slot
MIN_SAVE_TOKENS = 32  # an evicted slot holding fewer tokens than this is not saved to host memory


def worth_restoring(saved_tokens: int, gain_tokens: int, load_cost: int = 1) -> bool:
    """Whether loading a saved state of `saved_tokens` beats recomputing `gain_tokens` prompt tokens.

    Loading is a memcpy of the state: about a thousandth of the time a prompt token takes to compute
    (SmolLM2 on two cores: 23 KB and ~2 µs a token loaded vs ~4 ms computed), so even a few tokens pay.
    `load_cost` weighs a slower source (a file on disk) against that memcpy.
    """
    return gain_tokens >= 2 + saved_tokens * load_cost // 1024


def _runs(seq_ids: set[int]) -> int:
    """How many runs of consecutive ids a set holds ({0, 1, 3} has two)."""
    return sum(1 for i in seq_ids if i - 1 not in seq_ids)


@dataclass
class SlotState:
    """One llama sequence id: the tokens whose KV cells it holds, who uses it and when it last did."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)  # positions 0..len-1 are in the KV memory
    busy: bool = False
    session_key: str | None = None
    last_used: int = 0


@dataclass(frozen=True)
class PrefixPlan:
    """How a prompt will be placed: its slot, the donor slot to copy from and how many tokens to reuse."""

    seq_id: int
    donor_seq_id: int | None  # None: nothing reused
    reused_tokens: int


class PrefixCache:
    """Slots of one llama context; finished slots keep their cells until the slot is needed again."""

    def __init__(self, n_slots: int):
        self._slots = [SlotState(seq_id=i) for i in range(n_slots)]
        self._clock = itertools.count(1)

    @property
    def slots(self) -> tuple[SlotState, ...]:
        """Every slot, indexed by sequence id."""
        return tuple(self._slots)

    def free_slots(self) -> int:
        """How many slots no sequence is using."""
        return sum(1 for s in self._slots if not s.busy)

    def cached_tokens(self) -> int:
        """Tokens whose KV cells the slots hold."""
        return sum(len(s.tokens) for s in self._slots)

    def best_donor(self, prompt: Sequence[int]) -> tuple[int | None, int]:
        """The slot whose cells share the longest prefix with `prompt`, and that length."""
        slot, n = longest_shared_prefix(self._slots, prompt)
        return (slot.seq_id if slot is not None else None), n

    def plan(self, prompt: Sequence[int], session_key: str | None) -> PrefixPlan | None:
        """Pick a free slot for `prompt` and the longest reusable prefix; None when all slots are busy.

        Preference: the free slot that served `session_key`; then the donor slot itself when taking it
        loses at most KEEP_TOLERANCE of its cached tokens (a conversation's next turn) or when it holds
        the whole prompt (the same request again); then an empty slot; then the least recently used
        free slot. Among empty or among cached slots, one that keeps the busy slot ids consecutive
        wins (llama.cpp decodes each run of consecutive sequence ids as a separate ubatch).
        A donor that would lose more stays intact and its prefix is copied, so two conversations that
        share a system prompt do not evict each other. A copy (a whole KV stream) is planned only when
        it saves MIN_COPY_TOKENS over what the chosen slot already holds. At least the last prompt
        token is always recomputed, to get its logits.
        """
        free = [s for s in self._slots if not s.busy]
        if not free:
            return None
        limit = max(len(prompt) - 1, 0)
        donor_id, n_common = self.best_donor(prompt)
        reusable = min(n_common, limit)
        chosen = None
        if session_key is not None:
            chosen = next((s for s in free if s.session_key == session_key), None)
        if chosen is None and donor_id is not None and reusable > 0:
            donor = self._slots[donor_id]
            continues = len(donor.tokens) - reusable <= KEEP_TOLERANCE  # its next turn
            repeats = reusable == limit  # the whole prompt is cached there: a retry or a regeneration
            if not donor.busy and (continues or repeats):
                chosen = donor
        if chosen is None:
            busy = {s.seq_id for s in self._slots if s.busy}
            chosen = min(free, key=lambda s: (len(s.tokens) > 0, _runs(busy | {s.seq_id}), s.last_used))
        own = min(common_prefix_length(chosen.tokens, prompt), limit)
        if donor_id is not None and donor_id != chosen.seq_id and reusable >= own + MIN_COPY_TOKENS:
            return PrefixPlan(seq_id=chosen.seq_id, donor_seq_id=donor_id, reused_tokens=reusable)
        if own > 0:
            return PrefixPlan(seq_id=chosen.seq_id, donor_seq_id=chosen.seq_id, reused_tokens=own)
        return PrefixPlan(seq_id=chosen.seq_id, donor_seq_id=None, reused_tokens=0)

    def claim(self, plan: PrefixPlan, prompt: Sequence[int], session_key: str | None) -> SlotState:
        """Mark the planned slot busy; its cells now hold the reused prefix of `prompt`."""
        slot = self._slots[plan.seq_id]
        slot.busy = True
        slot.session_key = session_key if session_key is not None else slot.session_key
        slot.tokens = list(prompt[: plan.reused_tokens])
        slot.last_used = next(self._clock)
        return slot

    def release(self, seq_id: int) -> None:
        """The sequence ended; its slot is free but keeps its cells for later reuse."""
        slot = self._slots[seq_id]
        slot.busy = False
        slot.last_used = next(self._clock)

    def forget(self, seq_id: int) -> None:
        """The slot's cells were removed from memory."""
        self._slots[seq_id].tokens = []


@dataclass(frozen=True, eq=False)
class SavedPrompt:
    """A slot's KV cells serialised to host memory (a ctypes byte array), for the tokens they hold."""

    tokens: tuple[int, ...]
    state: Sized


class SavedPrompts:
    """Host-memory copies of evicted slots' KV cells, least recently used dropped beyond a byte budget.

    Slots hold a few conversations; agents and chat clients alternate between more (a coding agent's
    main thread, its title and summary requests, subagents). A slot about to be overwritten is
    saved here and restored when a later prompt continues it (llama-server's --cache-ram does this);
    what the budget pushes out goes on to the disk cache (minerva.engine.llamacpp.disk_cache).
    """

    def __init__(self, budget_bytes: int):
        self.budget_bytes = max(0, budget_bytes)
        self._entries: list[SavedPrompt] = []  # least recently used first

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes_held(self) -> int:
        """Bytes of serialised state held."""
        return sum(len(e.state) for e in self._entries)

    def best(self, prompt: Sequence[int]) -> tuple[SavedPrompt | None, int]:
        """The saved prompt sharing the longest prefix with `prompt`, and that length."""
        return longest_shared_prefix(self._entries, prompt)

    def touch(self, entry: SavedPrompt) -> None:
        """Mark an entry as just used."""
        if entry in self._entries:
            self._entries.remove(entry)
            self._entries.append(entry)

    def put(self, tokens: Sequence[int], state: Sized) -> list[SavedPrompt]:
        """Keep a state; entries it extends are dropped, then the oldest until the budget holds.

        Returns what the budget pushed out (the new state itself when it alone is too large), for a
        lower tier to keep.
        """
        new = SavedPrompt(tuple(tokens), state)
        if len(state) > self.budget_bytes:
            return [new]
        self._entries = [e for e in self._entries
                         if not (len(e.tokens) <= len(new.tokens) and new.tokens[: len(e.tokens)] == e.tokens)]
        self._entries.append(new)
        total = self.bytes_held
        evicted: list[SavedPrompt] = []
        while total > self.budget_bytes and self._entries:
            evicted.append(self._entries.pop(0))
            total -= len(evicted[-1].state)
        return evicted
