"""Chat: a core ChatRequest → prompt → engine → the core event stream (one path for both modes)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from minerva.core.errors import MinervaError
from minerva.core.events import ChoiceEnd, Event, Logprobs, ParsedDelta, ReasoningDelta, StreamFailed, TextDelta, \
    ToolCallArgs, ToolCallDropped, ToolCallStart, Usage
from minerva.core.requests import ChatRequest
from minerva.engine.base import Engine, GenerationRequest
from minerva.generation.checks import check_token_ids, refuse_embedding_model
from minerva.generation.decode import Finished, OutputPolicy, TextPiece, clamp_max_tokens, generate_choice, \
    merge_choices
from minerva.generation.prompt import ChatPrompt, build_chat_prompt, make_parser
from minerva.generation.sampling import sampling_params


@dataclass(frozen=True)
class PreparedChat:
    """A chat request rendered, tokenized and checked, ready to generate."""

    prompt: ChatPrompt
    generations: tuple[GenerationRequest, ...]
    stops: tuple[str, ...]
    want_logprobs: bool
    policy: OutputPolicy = OutputPolicy()

    @property
    def n(self) -> int:
        """How many choices this request generates."""
        return len(self.generations)


def prepare_chat(request: ChatRequest, engine: Engine, model_id: str,
                 policy: OutputPolicy = OutputPolicy()) -> PreparedChat:
    """Render the prompt through the model's template, tokenize it and check it fits (4xx raised here)."""
    refuse_embedding_model(engine, model_id)
    check_token_ids((token for token, _ in request.sampling.logit_bias), engine.info.vocab_size, "logit_bias")
    prompt = build_chat_prompt(request, engine)
    add_special = not (engine.bos_token and prompt.text.startswith(engine.bos_token))
    tokens = tuple(engine.tokenize(prompt.text, add_special=add_special, parse_special=True))
    budget = clamp_max_tokens(request.limits.max_tokens, len(tokens), engine.n_ctx, "messages",
                              policy.default_max_tokens)
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
    return PreparedChat(prompt, generations, request.limits.stop, request.logprobs, policy)


@dataclass
class _CallSoFar:
    """A tool call of this choice: its name and the arguments text seen so far."""

    name: str
    arguments: str = ""


@dataclass
class ChoiceState:
    """Per-choice bookkeeping while its deltas stream out."""

    index: int
    calls: list[_CallSoFar] = field(default_factory=list)  # the last one may still be streaming
    held: list[ParsedDelta] = field(default_factory=list)  # the last call's deltas while it may be a repeat
    shown_calls: int = 0  # calls the client has been shown and not taken back
    repeated_call: bool = False

    def may_repeat(self) -> bool:
        """Whether the last call's arguments so far begin an earlier call's of the same name."""
        last = self.calls[-1]
        return any(c.name == last.name and c.arguments.startswith(last.arguments) for c in self.calls[:-1])

    def repeats(self) -> bool:
        """Whether the last call is an earlier one again (arguments are one JSON object, so equal text is all of it)."""
        last = self.calls[-1]
        return any(c.name == last.name and c.arguments == last.arguments for c in self.calls[:-1])


def accept_tool_calls(state: ChoiceState, parsed: list[ParsedDelta]) -> list[ParsedDelta]:
    """Drop a tool call identical to an earlier one in this response and mark the choice as done.

    Small models under a tool grammar tend to repeat the same call until max_tokens; an identical
    parallel call is never useful, so the first repeat ends the choice. A call's deltas are held only
    while its arguments so far begin an earlier call's of the same name, so a repeat is never shown
    and any other call streams on as soon as it differs.
    """
    kept: list[ParsedDelta] = []
    for item in parsed:
        if state.repeated_call:
            break
        if isinstance(item, ToolCallStart):
            state.calls.append(_CallSoFar(item.name))
            if state.may_repeat():
                state.held = [item]
            else:
                kept.append(item)
                state.shown_calls += 1
        elif isinstance(item, ToolCallArgs) and state.held:
            state.calls[-1].arguments += item.fragment
            if state.repeats():
                state.repeated_call = True
                state.calls.pop()
                state.held = []
            elif state.may_repeat():
                state.held.append(item)
            else:
                kept += [*state.held, item]
                state.held = []
                state.shown_calls += 1
        elif isinstance(item, ToolCallArgs):
            state.calls[-1].arguments += item.fragment
            kept.append(item)
        elif isinstance(item, ToolCallDropped):
            state.calls.pop()
            if state.held:
                state.held = []  # never shown, so nothing to take back
            else:
                kept.append(item)
                state.shown_calls -= 1
        else:
            kept.append(item)
    return kept


@dataclass
class ReasoningTokens:
    """Counts the tokens of reasoning: a piece whose text the parser turned into reasoning, or held while
    reasoning (a marker or whitespace not yet decided), is a reasoning piece."""

    tokens: int = 0
    reasoning: bool = False

    def feed(self, parsed: list[ParsedDelta], n_tokens: int) -> None:
        """Take the deltas one piece of ``n_tokens`` tokens produced."""
        outputs = [item for item in parsed if not isinstance(item, ReasoningDelta) or item.text]
        if any(isinstance(item, ReasoningDelta) for item in outputs):
            self.tokens += n_tokens
        elif not outputs and self.reasoning:
            self.tokens += n_tokens
        if outputs:
            self.reasoning = isinstance(outputs[-1], ReasoningDelta)


def _tag(item: ParsedDelta, choice: int, logprobs: Logprobs) -> ParsedDelta:
    """The parser's delta as an event of this choice (parsers speak for choice 0, without logprobs)."""
    if choice == 0 and not logprobs:
        return item
    return dataclasses.replace(item, choice=choice, logprobs=logprobs)


async def _choice_events(prepared: PreparedChat, engine: Engine, index: int) -> AsyncIterator[Event | Finished]:
    """One choice's deltas and its ChoiceEnd, then its Finished record (for the usage sum)."""
    parser = make_parser(prepared.prompt.parser, prepared.prompt.parser_options)
    state = ChoiceState(index)
    reasoning = ReasoningTokens()
    completion_tokens = 0
    generation = prepared.generations[index]
    for item in accept_tool_calls(state, parser.feed(prepared.prompt.lead) if prepared.prompt.lead else []):
        yield _tag(item, index, ())
    async with contextlib.aclosing(generate_choice(engine, generation, prepared.stops, prepared.policy)) as pieces:
        async for piece in pieces:
            if isinstance(piece, TextPiece):
                completion_tokens += len(piece.tokens)
                logprobs = piece.tokens if prepared.want_logprobs and piece.tokens else ()
                parsed = accept_tool_calls(state, parser.feed(piece.text) if piece.text else [])
                reasoning.feed(parsed, len(piece.tokens))
                if not parsed and logprobs:
                    yield TextDelta("", index, logprobs)
                for position, item in enumerate(parsed):
                    yield _tag(item, index, logprobs if position == 0 else ())
                if state.repeated_call:
                    finished = Finished("end", len(generation.prompt_tokens), completion_tokens, 0)
                    break
            else:
                finished = piece
                closing = prepared.prompt.closing if piece.reason == "end" else ""
                for item in accept_tool_calls(state, (parser.feed(closing) if closing else []) + parser.finish()):
                    yield _tag(item, index, ())
                break
    reason = finished.reason
    if state.shown_calls and reason in ("end", "stop_sequence"):
        reason = "tool_calls"
    yield ChoiceEnd(index, reason, finished.stop_sequence if reason == "stop_sequence" else None)
    yield dataclasses.replace(finished, reasoning_tokens=reasoning.tokens)


async def chat_events(prepared: PreparedChat, engine: Engine) -> AsyncIterator[Event]:
    """The events of every choice as they come, then one Usage; a typed failure mid-stream ends it."""
    prompt_tokens, completion_total, cached_tokens, reasoning_total = 0, 0, 0, 0
    drafted, accepted = 0, 0
    try:
        async for _, item in merge_choices([_choice_events(prepared, engine, i) for i in range(prepared.n)]):
            if isinstance(item, Finished):
                prompt_tokens = item.prompt_tokens
                cached_tokens = max(cached_tokens, item.cached_tokens)
                completion_total += item.completion_tokens
                reasoning_total += item.reasoning_tokens
                drafted, accepted = drafted + item.draft_tokens, accepted + item.draft_accepted
            else:
                yield item
    except MinervaError as exc:
        yield StreamFailed(exc)
        return
    yield Usage(prompt_tokens, completion_total, cached_tokens, reasoning_total, drafted, accepted)
