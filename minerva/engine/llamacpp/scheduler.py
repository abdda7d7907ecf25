"""Continuous batching over one llama context: slots, chunked prefill, prefix reuse, cancellation.

One worker thread owns the context. Each step it admits waiting requests into free slots (sequence
ids), then builds one llama_batch: one token for every generating sequence first, then prompt chunks
(the whole n_batch when nobody is generating, else at most `prefill_chunk`) in admission order, and
decodes it in a single llama_decode (ctypes releases the GIL). Sequences sample from their own row.

Each slot is a sequence id with its own KV stream. A prompt that shares a prefix with another slot's
cells gets a copy of those cells (through llama.cpp's per-sequence state API), trimmed to the shared
prefix; a slot about to be overwritten is saved to host memory and restored when a prompt continues it. Long
prefixes also go to the disk cache (a finished slot's cells, and what host memory pushes out), written by its
own thread, so they survive a restart. A request whose prompt shares a long prefix with a prompt
still being prefilled waits until those cells exist instead of computing them twice.
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import logging
import threading
from collections.abc import Callable, Sized
from dataclasses import dataclass, field

import llama_cpp as llama
import numpy as np

from minerva.engine.admission import refuse_when_full
from minerva.engine.base import EngineStats, GenerationEnd, GenerationRequest, PromptProcessed
from minerva.engine.llamacpp.disk_cache import DISK_READ_COST, DiskPrompts
from minerva.engine.llamacpp.prefix_cache import (
    MIN_SAVE_TOKENS,
    PrefixCache,
    PrefixPlan,
    SavedPrompt,
    SavedPrompts,
    SlotState,
    common_prefix_length,
    worth_restoring,
)
from minerva.engine.llamacpp.sampling import SequenceSampler, token_logprobs
from minerva.engine.relay import EventOutbox, EventSink
from minerva.engine.llamacpp.speculation import DEFAULT_ROW_SHARE, MAX_MATCH, NgramDrafter, shared_row_cost
from minerva.engine.sampled import token_event
from minerva.core.errors import MinervaError, ModelUnavailableError

logger = logging.getLogger(__name__)

class DecodeError(MinervaError):
    """llama.cpp could not decode a batch (500); only the sequences in that batch end."""

    code = "decode_failed"


@dataclass(frozen=True)
class SchedulerConfig:
    """Sizes of one scheduler: slots, per-sequence context, batch budget and queue bound."""

    n_slots: int
    n_ctx: int  # tokens one sequence may hold
    n_batch: int  # tokens one llama_decode may carry
    prefill_chunk: int  # prompt tokens per step while other sequences are generating
    queue_limit: int
    defer_min_tokens: int = 64  # wait for a running prefill when it would share at least this many more
    saved_prompts_bytes: int = 0  # host memory for evicted slots' KV cells (0: none kept)
    max_draft: int = 0  # n-gram draft tokens verified per step and sequence (0: no speculation)
    draft_row_cost: float = DEFAULT_ROW_SHARE  # a verified row's cost as a share of a one-token step


@dataclass(eq=False)
class Sequence:
    """One request's life inside the scheduler (owned by the worker once admitted)."""

    request: GenerationRequest
    prompt: list[int]
    max_tokens: int
    sampler: SequenceSampler
    sink: EventSink  # receives PromptProcessed, TokenEvents, then GenerationEnd or an exception
    cancelled: bool = False
    slot: SlotState | None = None
    plan: PrefixPlan | None = None  # set at admission, applied to the KV memory by the worker
    displaced: list[int] | None = None  # tokens the claimed slot held before (saved before overwriting)
    next_token: int | None = None  # sampled but not yet decoded
    completion_tokens: int = 0
    cached_tokens: int = 0
    prompt_reported: bool = False
    finished: bool = False
    drafter: NgramDrafter | None = None  # proposes draft tokens from the prompt and output (speculation on)

    @property
    def prefilling(self) -> bool:
        """Whether prompt tokens are still waiting to enter the KV memory."""
        return self.slot is not None and len(self.slot.tokens) < len(self.prompt)


@dataclass
class _Counters:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    decode_steps: int = 0
    draft_tokens: int = 0
    draft_accepted: int = 0


@dataclass
class _BatchEntry:
    seq: Sequence
    tokens: list[int] = field(default_factory=list)
    logits_index: int = -1  # batch row whose logits this sequence samples from; -1: none
    draft: list[int] = field(default_factory=list)  # tokens[1:], when they are a draft to verify


def _earlier_answer(displaced: list[int] | None, prompt: list[int]) -> list[int]:
    """What a slot held beyond the prompt it shares (an earlier answer to it), with the shared tail before it."""
    if not displaced:
        return []
    shared = common_prefix_length(displaced, prompt)
    return displaced[max(0, shared - MAX_MATCH):] if shared < len(displaced) else []


class TokenBatch:
    """A llama_batch with numpy views over its arrays, refilled every step."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.raw = llama.llama_batch_init(capacity, 0, 1)
        self.token = np.ctypeslib.as_array(self.raw.token, shape=(capacity,))
        self.pos = np.ctypeslib.as_array(self.raw.pos, shape=(capacity,))
        self.n_seq_id = np.ctypeslib.as_array(self.raw.n_seq_id, shape=(capacity,))
        self.logits = np.ctypeslib.as_array(self.raw.logits, shape=(capacity,))
        self.n_seq_id[:] = 1
        self.size = 0

    def clear(self) -> None:
        """Empty the batch."""
        self.size = 0

    def add(self, seq_id: int, tokens: list[int], first_pos: int, logits_last: bool, logits_all: bool = False) -> int:
        """Append one sequence's tokens; returns the row of its last token (logits_all: every row has logits)."""
        start, n = self.size, len(tokens)
        end = start + n
        self.token[start:end] = tokens
        self.pos[start:end] = np.arange(first_pos, first_pos + n, dtype=np.int32)
        self.logits[start:end] = 1 if logits_all else 0
        if logits_last:
            self.logits[end - 1] = 1
        seq_ids = self.raw.seq_id
        for i in range(start, end):
            seq_ids[i][0] = seq_id
        self.size = end
        self.raw.n_tokens = end
        return end - 1

    def free(self) -> None:
        """Release the native arrays (idempotent)."""
        if self.capacity:
            llama.llama_batch_free(self.raw)
            self.capacity = 0


class BatchScheduler:
    """Runs every sequence of one llama context on a dedicated worker thread."""

    def __init__(
        self,
        ctx: llama.llama_context_p,
        vocab: llama.llama_vocab_p,
        n_vocab: int,
        config: SchedulerConfig,
        piece: Callable[[int], bytes],
        name: str = "llama",
        disk: DiskPrompts | None = None,
    ):
        self._ctx = ctx
        self._mem = llama.llama_get_memory(ctx)
        self._vocab = vocab
        self._n_vocab = n_vocab
        self._config = config
        self._piece = piece
        self._cache = PrefixCache(config.n_slots)
        self._saved = SavedPrompts(config.saved_prompts_bytes)
        self._disk = disk  # KV cells of long prefixes on disk (None: off)
        self._finished_slots: list[SlotState] = []  # offered to the disk cache once this step's events are out
        self._batch = TokenBatch(config.n_batch)
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._active: list[Sequence] = []
        self._cond = threading.Condition()
        self._closed = False
        self._counters = _Counters()
        self._outbox = EventOutbox()
        self._thread = threading.Thread(target=self._run, name=f"minerva-{name}-scheduler", daemon=True)
        self._thread.start()

    # ---- event-loop side -------------------------------------------------------------------

    def submit(self, seq: Sequence) -> None:
        """Queue a sequence; QueueFullError when queue_limit sequences already wait beyond the free slots."""
        with self._cond:
            if self._closed:
                raise ModelUnavailableError("The model is being unloaded; retry the request.")
            refuse_when_full(len(self._waiting), self._cache.free_slots(), self._config.queue_limit)
            self._waiting.append(seq)
            self._counters.requests += 1
            self._cond.notify()

    def cancel(self, seq: Sequence) -> None:
        """Stop a sequence: a waiting one leaves the queue, a running one frees its slot next step."""
        with self._cond:
            if seq.finished:
                return
            seq.cancelled = True
            if seq in self._waiting:
                self._waiting.remove(seq)
                seq.finished = True
                seq.sampler.free()
            self._cond.notify()

    def stats(self) -> EngineStats:
        """Live counters (read without stopping the worker; values may be one step old)."""
        slots = self._cache.slots
        c = self._counters
        return EngineStats(
            active_slots=sum(1 for s in slots if s.busy),
            total_slots=len(slots),
            queued=len(self._waiting),
            n_ctx=self._config.n_ctx,
            kv_tokens_held=self._cache.cached_tokens(),
            requests_total=c.requests,
            prompt_tokens_total=c.prompt_tokens,
            completion_tokens_total=c.completion_tokens,
            cached_tokens_total=c.cached_tokens,
            saved_prompts=len(self._saved),
            saved_prompt_bytes=self._saved.bytes_held,
            disk_prompts=len(self._disk) if self._disk is not None else 0,
            disk_prompt_bytes=self._disk.bytes_held if self._disk is not None else 0,
            decode_steps_total=c.decode_steps,
            draft_tokens_total=c.draft_tokens,
            draft_accepted_total=c.draft_accepted,
        )

    def close(self) -> None:
        """Stop the worker; every pending sequence ends with ModelUnavailableError."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        self._batch.free()
        if self._disk is not None:
            self._disk.close()  # waits for the writes already queued

    # ---- worker side -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._closed and not self._waiting and not self._active:
                        self._cond.wait()
                    if self._closed:
                        break
                    admitted = self._admit_locked()
                for seq in admitted:
                    self._place(seq)
                self._drop_cancelled()
                if self._active:
                    self._step()
                self._deliver()
                self._keep_finished_on_disk()
        except BaseException:  # pragma: no cover - a bug in the loop must not hang every client
            logger.exception("scheduler worker crashed")
        finally:
            self._shutdown()

    def _admit_locked(self) -> list[Sequence]:
        admitted: list[Sequence] = []
        deferred: list[Sequence] = []
        while self._waiting and self._cache.free_slots() > 0:
            seq = self._waiting.popleft()
            if seq.cancelled:
                seq.finished = True
                seq.sampler.free()
                continue
            plan = self._cache.plan(seq.prompt, seq.request.session_key)
            assert plan is not None
            if self._should_defer(seq, plan.reused_tokens):
                deferred.append(seq)
                continue
            seq.displaced = list(self._cache.slots[plan.seq_id].tokens)
            seq.slot = self._cache.claim(plan, seq.prompt, seq.request.session_key)
            seq.cached_tokens = plan.reused_tokens
            seq.plan = plan
            self._active.append(seq)
            admitted.append(seq)
        self._waiting.extendleft(reversed(deferred))
        return admitted

    def _should_defer(self, seq: Sequence, reusable_now: int) -> bool:
        """Wait when a running prefill will soon hold a much longer prefix of this prompt."""
        limit = len(seq.prompt) - 1
        for other in self._active:
            if other.prefilling:
                upcoming = min(common_prefix_length(other.prompt, seq.prompt), limit)
                if upcoming - reusable_now >= self._config.defer_min_tokens:
                    return True
        return False

    def _place(self, seq: Sequence) -> None:
        """Make the slot's KV cells hold exactly the reused prefix (copying from a donor if needed)."""
        plan, slot = seq.plan, seq.slot
        assert plan is not None and slot is not None
        seq.plan = None
        reused = plan.reused_tokens
        kept = reused if plan.donor_seq_id == slot.seq_id else 0
        if seq.displaced and len(seq.displaced) - kept >= MIN_SAVE_TOKENS:
            self._save_cells(slot.seq_id, seq.displaced)
        displaced, seq.displaced = seq.displaced, None
        saved, n_saved = self._saved.best(seq.prompt)
        n_saved = min(n_saved, len(seq.prompt) - 1)
        from_disk = self._restore_from_disk(slot.seq_id, seq.prompt, max(reused, n_saved if saved else 0))
        if from_disk is not None:
            reused = from_disk
        elif saved is not None and worth_restoring(len(saved.tokens), n_saved - reused):
            reused = self._restore_cells(slot.seq_id, saved, n_saved)
        elif plan.donor_seq_id == slot.seq_id:
            if not llama.llama_memory_seq_rm(self._mem, slot.seq_id, reused, -1):
                reused = 0
                llama.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
        else:
            llama.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
            if plan.donor_seq_id is not None and reused > 0:
                reused = self._copy_cells(plan.donor_seq_id, slot.seq_id, reused)
        if reused > 0 and (
            llama.llama_memory_seq_pos_min(self._mem, slot.seq_id) != 0
            or llama.llama_memory_seq_pos_max(self._mem, slot.seq_id) != reused - 1
        ):
            # the cells are not the whole prefix (e.g. a sliding-window cache dropped its start)
            llama.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
            reused = 0
        slot.tokens = seq.prompt[:reused]
        seq.cached_tokens = reused
        self._counters.cached_tokens += reused
        self._counters.prompt_tokens += len(seq.prompt)
        if reused:
            logger.debug("seq %d reuses %d of %d prompt tokens", slot.seq_id, reused, len(seq.prompt))
        if seq.max_tokens <= 0:
            self._finish(seq, GenerationEnd("length", len(seq.prompt), 0, reused))
        elif self._config.max_draft > 0:
            donor = plan.donor_seq_id
            earlier = displaced if donor in (None, slot.seq_id) else self._cache.slots[donor].tokens
            seq.drafter = NgramDrafter(seq.prompt, self._config.max_draft, _earlier_answer(earlier, seq.prompt))

    def _serialise(self, seq_id: int, limit: int | None = None) -> ctypes.Array | None:
        """A sequence's KV cells as bytes (None when empty, larger than `limit` or not readable)."""
        size = llama.llama_state_seq_get_size(self._ctx, seq_id)
        if size <= 0 or (limit is not None and size > limit):
            return None
        buffer = (ctypes.c_uint8 * size)()
        return buffer if llama.llama_state_seq_get_data(self._ctx, buffer, size, seq_id) == size else None

    def _copy_cells(self, donor_seq_id: int, seq_id: int, n_tokens: int) -> int:
        """Copy the donor slot's first n_tokens of cells into another slot; how many it now holds.

        Through the state API, so the copy costs what the donor holds; llama_memory_seq_cp across
        streams copies whole streams (n_ctx cells) however few are used.
        """
        return self._load_cells(seq_id, self._serialise(donor_seq_id), n_tokens)

    def _load_cells(self, seq_id: int, state: Sized | None, n_tokens: int) -> int:
        """Put serialised cells into a slot and keep their first n_tokens; how many it now holds."""
        if state is None or not llama.llama_state_seq_set_data(self._ctx, state, len(state), seq_id):
            llama.llama_memory_seq_rm(self._mem, seq_id, -1, -1)
            return 0
        llama.llama_memory_seq_rm(self._mem, seq_id, n_tokens, -1)
        return n_tokens

    def _save_cells(self, seq_id: int, tokens: list[int]) -> None:
        """Copy a slot's KV cells to host memory before they are overwritten; what it cannot keep goes to disk."""
        disk_limit = self._disk.budget_bytes if self._disk is not None and self._disk.wants(tokens) else 0
        limit = max(self._saved.budget_bytes, disk_limit)
        if limit <= 0:
            return
        state = self._serialise(seq_id, limit)
        if state is not None:
            pushed_out = self._saved.put(tokens, state)
            logger.debug("saved %d tokens of slot %d (%d bytes)", len(tokens), seq_id, len(state))
            if self._disk is not None:
                for entry in pushed_out:
                    self._disk.submit(entry.tokens, entry.state)

    def _keep_finished_on_disk(self) -> None:
        """Hand the cells of slots that finished this step to the disk writer when they hold a long new prefix."""
        finished, self._finished_slots = self._finished_slots, []
        if self._disk is None:
            return
        for slot in finished:
            if slot.busy or not self._disk.wants(slot.tokens):
                continue
            state = self._serialise(slot.seq_id, self._disk.budget_bytes)
            if state is not None:
                self._disk.submit(slot.tokens, state)

    def _restore_from_disk(self, seq_id: int, prompt: list[int], have: int) -> int | None:
        """Load the disk entry sharing the longest prefix with `prompt` when it beats the `have` tokens at hand;
        how many tokens the slot then holds (None: nothing was read)."""
        if self._disk is None:
            return None
        entry, shared = self._disk.best(prompt)
        shared = min(shared, len(prompt) - 1)
        if entry is None or not worth_restoring(len(entry.tokens), shared - have, DISK_READ_COST):
            return None
        state = self._disk.read(entry)
        if state is None:
            return None
        restored = self._load_cells(seq_id, (ctypes.c_uint8 * len(state)).from_buffer(state), shared)
        logger.debug("seq %d restored %d prompt tokens from disk", seq_id, restored)
        return restored

    def _restore_cells(self, seq_id: int, saved: SavedPrompt, n_tokens: int) -> int:
        """Load saved cells into a slot and keep their first n_tokens; how many it now holds."""
        self._saved.touch(saved)
        return self._load_cells(seq_id, saved.state, n_tokens)

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._active if s.cancelled]:
            logger.debug("seq %d cancelled after %d tokens", seq.slot.seq_id if seq.slot else -1, seq.completion_tokens)
            self._finish(seq, None)

    def _build_batch(self) -> list[_BatchEntry]:
        batch = self._batch
        batch.clear()
        entries: list[_BatchEntry] = []
        # llama.cpp splits a multi-stream batch into one ubatch per run of consecutive sequence ids
        # in batch order, so generating tokens go in slot order
        decoding = sorted((s for s in self._active if s.next_token is not None), key=lambda s: s.slot.seq_id)
        row_cost = shared_row_cost(self._config.draft_row_cost, len(decoding))
        for seq in decoding:
            draft = self._draft_for(seq, batch.capacity - batch.size - 1, row_cost)
            tokens = [seq.next_token, *draft]
            row = batch.add(seq.slot.seq_id, tokens, len(seq.slot.tokens), True, logits_all=bool(draft))
            entries.append(_BatchEntry(seq, tokens, row - len(draft), draft))
        room = batch.capacity - batch.size
        budget = room if not entries else min(room, self._config.prefill_chunk)
        for seq in self._active:
            if budget <= 0:
                break
            if not seq.prefilling:
                continue
            start = len(seq.slot.tokens)
            chunk = seq.prompt[start : start + budget]
            last = start + len(chunk) == len(seq.prompt)
            row = batch.add(seq.slot.seq_id, chunk, start, last)
            entries.append(_BatchEntry(seq, chunk, row if last else -1))
            budget -= len(chunk)
        return entries

    def _step(self) -> None:
        entries = self._build_batch()
        if not entries:
            return
        rc = llama.llama_decode(self._ctx, self._batch.raw)
        if rc == 1 and self._evict_idle_cells():
            rc = llama.llama_decode(self._ctx, self._batch.raw)
        self._counters.decode_steps += 1
        if rc != 0:
            self._fail_batch(entries, rc)
            return
        for entry in entries:
            entry.seq.slot.tokens.extend(entry.tokens)
            if entry.seq.next_token is not None:
                entry.seq.next_token = None
        for entry in entries:
            if entry.logits_index >= 0:
                try:
                    if entry.draft:
                        self._verify(entry.seq, entry.logits_index, entry.draft)
                    else:
                        self._advance(entry.seq, entry.logits_index)
                except Exception as exc:  # one sequence's failure must not stop the others
                    logger.exception("sequence failed while sampling")
                    self._finish(entry.seq, exc)

    def _draft_for(self, seq: Sequence, room: int, row_cost: float) -> list[int]:
        """Draft tokens to verify after the sequence's next token, within its output and context budget."""
        if seq.drafter is None:
            return []
        limit = min(room, seq.max_tokens - seq.completion_tokens - 1, self._config.n_ctx - len(seq.slot.tokens) - 2)
        return seq.drafter.propose(limit, row_cost) if limit > 0 else []

    def _verify(self, seq: Sequence, first_row: int, draft: list[int]) -> None:
        """Sample row by row while the sequence's own sampler picks the draft's tokens; drop the cells of the rest.

        Row i's logits follow the draft's first i tokens, so while every pick matched the draft, the
        pick at row i is exactly what decoding those tokens one by one would have given the sampler.
        """
        base = len(seq.slot.tokens) - len(draft) - 1  # where the next token was placed
        accepted, end = 0, None
        for i in range(len(draft) + 1):
            end = self._take(seq, first_row + i, base + 1 + i, len(draft) if i == 0 else 0,
                             draft[i] if i < len(draft) else None)
            if end is not None:
                break
            if i < len(draft) and seq.next_token == draft[i]:
                accepted += 1
                seq.next_token = None  # its cell is already in the KV memory
                continue
            break
        keep = base + 1 + accepted
        if len(seq.slot.tokens) > keep:
            llama.llama_memory_seq_rm(self._mem, seq.slot.seq_id, keep, -1)
            del seq.slot.tokens[keep:]
        seq.drafter.record(len(draft), accepted)
        self._counters.draft_tokens += len(draft)
        self._counters.draft_accepted += accepted
        if end is not None:
            self._finish(seq, end)

    def _advance(self, seq: Sequence, row: int) -> None:
        """Sample the next token of `seq` from batch row `row` and emit it, or end the sequence."""
        end = self._take(seq, row, len(seq.slot.tokens))
        if end is not None:
            self._finish(seq, end)

    def _take(self, seq: Sequence, row: int, held: int, drafted: int = 0,
              draft_token: int | None = None) -> GenerationEnd | None:
        """Sample from batch row `row` (the sequence then holding `held` cells) and emit the token as
        the next one; or the end of the sequence, which the caller finishes."""
        params = seq.request.sampling
        logits = None
        if seq.sampler.constrained or params.logprobs:
            ptr = llama.llama_get_logits_ith(self._ctx, row)
            logits = np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))
        if seq.sampler.constrained:
            sampled = seq.sampler.sample(logits)
        else:
            sampled = seq.sampler.sample_row(self._ctx, row)
        prompt_n = len(seq.prompt)
        if seq.completion_tokens == 0 and not seq.prompt_reported:
            seq.prompt_reported = True
            self._emit(seq, PromptProcessed(prompt_n, seq.cached_tokens))
        if sampled.dead_end or llama.llama_vocab_is_eog(self._vocab, sampled.token_id):
            if sampled.dead_end:
                logger.info("grammar allowed no further token; ending the sequence")
            return GenerationEnd("stop", prompt_n, seq.completion_tokens, seq.cached_tokens)
        token = sampled.token_id
        event = token_event(token, self._piece, params, lambda t, k: token_logprobs(logits, t, k))
        if drafted or draft_token is not None:
            event = dataclasses.replace(event, drafted=drafted, from_draft=token == draft_token)
        seq.completion_tokens += 1
        self._counters.completion_tokens += 1
        self._emit(seq, event)
        if seq.drafter is not None:
            seq.drafter.extend((token,))
        if seq.completion_tokens >= seq.max_tokens or held >= self._config.n_ctx:
            return GenerationEnd("length", prompt_n, seq.completion_tokens, seq.cached_tokens)
        seq.next_token = token
        return None

    def _emit(self, seq: Sequence, event: object) -> None:
        self._outbox.put(seq.sink, event)

    def _deliver(self) -> None:
        """Send this step's events; a sequence whose consumer's event loop is gone is cancelled."""
        self._outbox.flush()
        for seq in self._active:
            if seq.sink.lost:
                seq.cancelled = True

    def _finish(self, seq: Sequence, last: object | None) -> None:
        """End a sequence: emit its last event (None for a cancelled one) and free its slot."""
        if seq in self._active:
            self._active.remove(seq)
        seq.sampler.free()
        with self._cond:
            if seq.slot is not None:
                self._cache.release(seq.slot.seq_id)
                self._finished_slots.append(seq.slot)
            seq.finished = True
        if last is not None and not seq.cancelled:
            self._emit(seq, last)

    def _evict_idle_cells(self) -> bool:
        """Drop the cells of every free slot; True when any were dropped."""
        dropped = False
        for slot in self._cache.slots:
            if not slot.busy and slot.tokens:
                llama.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
                self._cache.forget(slot.seq_id)
                dropped = True
        return dropped

    def _fail_batch(self, entries: list[_BatchEntry], rc: int) -> None:
        logger.error("llama_decode failed with code %d for a batch of %d tokens", rc, self._batch.size)
        for entry in entries:
            seq = entry.seq
            if seq.finished:
                continue
            llama.llama_memory_seq_rm(self._mem, seq.slot.seq_id, -1, -1)
            self._cache.forget(seq.slot.seq_id)
            self._finish(seq, DecodeError(f"The model failed to process the request (llama_decode code {rc})."))

    def _shutdown(self) -> None:
        with self._cond:
            self._closed = True
            pending = list(self._waiting) + list(self._active)
            self._waiting.clear()
        for seq in pending:
            if seq in self._active:
                self._active.remove(seq)
            if not seq.finished:
                seq.sampler.free()
                seq.finished = True
                if not seq.cancelled:
                    self._emit(seq, ModelUnavailableError("The model was unloaded while the request ran."))
        self._outbox.flush()
