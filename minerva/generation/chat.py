"""Chat: a core ChatRequest → prompt → engine → the core event stream (one path for both modes)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

from minerva.core.errors import MinervaError
from minerva.core.events import ChoiceEnd, Event, Logprobs, ParsedDelta, StreamFailed, TextDelta, ToolCallArgs, \
    ToolCallStart, Usage
from minerva.core.requests import ChatRequest
from minerva.engine.base import Engine, GenerationRequest
from minerva.generation.checks import check_token_ids, refuse_embedding_model
from minerva.generation.decode import Finished, TextPiece, clamp_max_tokens, generate_choice, merge_choices
from minerva.generation.prompt import ChatPrompt, build_chat_prompt, make_parser
from minerva.generation.sampling import sampling_params


@dataclass(frozen=True)
class PreparedChat:
    """A chat request rendered, tokenized and checked, ready to generate."""

    prompt: ChatPrompt
    generations: tuple[GenerationRequest, ...]
    stops: tuple[str, ...]
    want_logprobs: bool

    @property
    def n(self) -> int:
        """How many choices this request generates."""
        return len(self.generations)


def prepare_chat(request: ChatRequest, engine: Engine, model_id: str) -> PreparedChat:
    """Render the prompt through the model's template, tokenize it and check it fits (4xx raised here)."""
    refuse_embedding_model(engine, model_id)
    check_token_ids((token for token, _ in request.sampling.logit_bias), engine.info.vocab_size, "logit_bias")
    prompt = build_chat_prompt(request, engine)
    add_special = not (engine.bos_token and prompt.text.startswith(engine.bos_token))
    tokens = tuple(engine.tokenize(prompt.text, add_special=add_special, parse_special=True))
    budget = clamp_max_tokens(request.limits.max_tokens, len(tokens), engine.n_ctx, "messages")
    generations = tuple(
        GenerationRequest(
            tokens,
            budget,
            sampling_params(request.sampling, choice_index=i, grammar=prompt.grammar,
                            logprobs=request.logprobs, top_logprobs=request.top_logprobs),
            request.session_key,
            request.adapter,
        )
        for i in range(request.limits.n)
    )
    return PreparedChat(prompt, generations, request.limits.stop, request.logprobs)


@dataclass
class _ChoiceState:
    """Per-choice bookkeeping while its deltas stream out."""

    index: int
    calls_seen: set[tuple[str, str]]
    pending_start: ToolCallStart | None = None
    saw_tool_call: bool = False
    repeated_call: bool = False


def accept_tool_calls(state: _ChoiceState, parsed: list[ParsedDelta]) -> list[ParsedDelta]:
    """Drop a tool call identical to an earlier one in this response and mark the choice as done.

    Small models under a tool grammar tend to repeat the same call until max_tokens; an identical
    parallel call is never useful, so the first repeat ends the choice.
    """
    kept: list[ParsedDelta] = []
    for item in parsed:
        if state.repeated_call:
            break
        if isinstance(item, ToolCallStart):
            state.pending_start = item
            continue
        if isinstance(item, ToolCallArgs) and state.pending_start is not None:
            key = (state.pending_start.name, item.fragment)
            if key in state.calls_seen:
                state.repeated_call = True
                break
            state.calls_seen.add(key)
            state.saw_tool_call = True
            kept += [state.pending_start, item]
            state.pending_start = None
            continue
        kept.append(item)
    return kept


def _tag(item: ParsedDelta, choice: int, logprobs: Logprobs) -> ParsedDelta:
    """The parser's delta as an event of this choice (parsers speak for choice 0, without logprobs)."""
    if choice == 0 and not logprobs:
        return item
    return dataclasses.replace(item, choice=choice, logprobs=logprobs)


async def _choice_events(prepared: PreparedChat, engine: Engine, index: int) -> AsyncIterator[Event | Finished]:
    """One choice's deltas and its ChoiceEnd, then its Finished record (for the usage sum)."""
    parser = make_parser(prepared.prompt.parser, prepared.prompt.parser_options)
    state = _ChoiceState(index, set())
    completion_tokens = 0
    generation = prepared.generations[index]
    async with contextlib.aclosing(generate_choice(engine, generation, prepared.stops)) as pieces:
        async for piece in pieces:
            if isinstance(piece, TextPiece):
                completion_tokens += len(piece.tokens)
                logprobs = piece.tokens if prepared.want_logprobs and piece.tokens else ()
                parsed = accept_tool_calls(state, parser.feed(piece.text) if piece.text else [])
                if not parsed and logprobs:
                    yield TextDelta("", index, logprobs)
                for position, item in enumerate(parsed):
                    yield _tag(item, index, logprobs if position == 0 else ())
                if state.repeated_call:
                    finished = Finished("end", len(generation.prompt_tokens), completion_tokens, 0)
                    break
            else:
                finished = piece
                for item in accept_tool_calls(state, parser.finish()):
                    yield _tag(item, index, ())
                break
    reason = finished.reason
    if state.saw_tool_call and reason in ("end", "stop_sequence"):
        reason = "tool_calls"
    yield ChoiceEnd(index, reason, finished.stop_sequence if reason == "stop_sequence" else None)
    yield finished


async def chat_events(prepared: PreparedChat, engine: Engine) -> AsyncIterator[Event]:
    """The events of every choice as they come, then one Usage; a typed failure mid-stream ends it."""
    prompt_tokens, completion_total, cached_tokens = 0, 0, 0
    try:
        async for _, item in merge_choices([_choice_events(prepared, engine, i) for i in range(prepared.n)]):
            if isinstance(item, Finished):
                prompt_tokens = item.prompt_tokens
                cached_tokens = max(cached_tokens, item.cached_tokens)
                completion_total += item.completion_tokens
            else:
                yield item
    except MinervaError as exc:
        yield StreamFailed(exc)
        return
    yield Usage(prompt_tokens, completion_total, cached_tokens)
