"""POST /v1/chat/completions: messages → prompt → choices of chat chunks (one path for both modes)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from minerva.engine.base import Engine, GenerationRequest
from minerva.parsers.base import ContentDelta, ReasoningDelta, ToolCallArguments, ToolCallStart
from minerva.protocol.chunks import ResponseHeader, usage_dict
from minerva.protocol.requests import ChatCompletionRequest
from minerva.services.chat_prompt import ChatPrompt, build_chat_prompt, make_parser
from minerva.services.completions import check_token_ids, refuse_embedding_model
from minerva.services.generation import Finished, TextPiece, clamp_max_tokens, generate_choice, logprob_entry, merge_choices
from minerva.services.sampling import sampling_from_request


@dataclass(frozen=True)
class PreparedChat:
    """A chat request rendered, tokenized and checked, ready to generate."""

    header: ResponseHeader
    prompt: ChatPrompt
    generations: tuple[GenerationRequest, ...]
    stops: tuple[str, ...]
    want_logprobs: bool


def prepare_chat(request: ChatCompletionRequest, engine: Engine, model_id: str,
                 session_key: str | None = None) -> PreparedChat:
    """Render the prompt through the model's template, tokenize it and check it fits."""
    refuse_embedding_model(engine, model_id)
    check_token_ids([int(k) for k in (request.logit_bias or {})], engine.info.vocab_size, "logit_bias")
    prompt = build_chat_prompt(request, engine)
    add_special = not (engine.bos_token and prompt.text.startswith(engine.bos_token))
    tokens = tuple(engine.tokenize(prompt.text, add_special=add_special, parse_special=True))
    budget = clamp_max_tokens(request.token_budget(), len(tokens), engine.n_ctx, "messages")
    top = request.top_logprobs or 0
    generations = tuple(
        GenerationRequest(
            tokens,
            budget,
            sampling_from_request(request, choice_index=i, grammar=prompt.grammar,
                                  logprobs=request.logprobs, top_logprobs=top),
            session_key,
        )
        for i in range(request.n)
    )
    header = ResponseHeader.new("chatcmpl", model_id, "chat.completion.chunk")
    return PreparedChat(header, prompt, generations, tuple(request.stop_list()), request.logprobs)


def _delta_chunk(header: ResponseHeader, index: int, delta: dict, logprobs: list[dict] | None = None) -> dict:
    return header.chunk([{"index": index, "delta": delta,
                          "logprobs": {"content": logprobs} if logprobs else None, "finish_reason": None}])


def _chat_logprobs(piece: TextPiece) -> list[dict]:
    return [
        {**logprob_entry(t), "top_logprobs": [logprob_entry(a) for a in t.top_logprobs]}
        for t in piece.tokens
    ]


def _parsed_to_delta(parsed) -> dict:
    if isinstance(parsed, ContentDelta):
        return {"content": parsed.text}
    if isinstance(parsed, ReasoningDelta):
        return {"reasoning_content": parsed.text}
    if isinstance(parsed, ToolCallStart):
        return {"tool_calls": [{"index": parsed.index, "id": parsed.id, "type": "function",
                                "function": {"name": parsed.name, "arguments": ""}}]}
    if isinstance(parsed, ToolCallArguments):
        return {"tool_calls": [{"index": parsed.index, "function": {"arguments": parsed.fragment}}]}
    raise TypeError(f"unknown parsed delta {parsed!r}")


@dataclass
class _ChoiceState:
    """Per-choice bookkeeping while its deltas stream out."""

    index: int
    calls_seen: set[tuple[str, str]]
    pending_start: ToolCallStart | None = None
    saw_tool_call: bool = False
    repeated_call: bool = False


def _accept(state: _ChoiceState, parsed: list) -> list:
    """Drop a tool call identical to an earlier one in this response and mark the choice as done.

    Small models under a tool grammar tend to repeat the same call until max_tokens; an identical
    parallel call is never useful, so the first repeat ends the choice.
    """
    kept = []
    for item in parsed:
        if state.repeated_call:
            break
        if isinstance(item, ToolCallStart):
            state.pending_start = item
            continue
        if isinstance(item, ToolCallArguments) and state.pending_start is not None:
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


async def _choice_chunks(prepared: PreparedChat, engine: Engine, index: int) -> AsyncIterator[dict | Finished]:
    """One choice's delta chunks, ending with its Finished record (after its finish chunk)."""
    header = prepared.header
    parser = make_parser(prepared.prompt.parser, prepared.prompt.parser_options)
    state = _ChoiceState(index, set())
    completion_tokens = 0
    async with contextlib.aclosing(generate_choice(engine, prepared.generations[index], prepared.stops)) as events:
        async for event in events:
            if isinstance(event, TextPiece):
                completion_tokens += len(event.tokens)
                logprobs = _chat_logprobs(event) if prepared.want_logprobs and event.tokens else None
                parsed = _accept(state, parser.feed(event.text) if event.text else [])
                if not parsed and logprobs:
                    yield _delta_chunk(header, index, {}, logprobs)
                for position, item in enumerate(parsed):
                    yield _delta_chunk(header, index, _parsed_to_delta(item), logprobs if position == 0 else None)
                if state.repeated_call:
                    finished = Finished("stop", len(prepared.generations[index].prompt_tokens), completion_tokens, 0)
                    break
            else:
                finished = event
                for item in _accept(state, parser.finish()):
                    yield _delta_chunk(header, index, _parsed_to_delta(item))
                break
    reason = "tool_calls" if state.saw_tool_call and finished.finish_reason == "stop" else finished.finish_reason
    yield header.chunk([{"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}])
    yield finished


async def chat_chunks(prepared: PreparedChat, engine: Engine) -> AsyncIterator[dict]:
    """chat.completion.chunk objects of every choice, then a usage chunk with `choices: []`."""
    header = prepared.header
    n = len(prepared.generations)
    for index in range(n):
        yield _delta_chunk(header, index, {"role": "assistant", "content": ""})
    prompt_tokens, completion_total, cached_tokens = 0, 0, 0
    async for _, item in merge_choices([_choice_chunks(prepared, engine, i) for i in range(n)]):
        if isinstance(item, Finished):
            prompt_tokens = item.prompt_tokens
            cached_tokens = max(cached_tokens, item.cached_tokens)
            completion_total += item.completion_tokens
        else:
            yield item
    yield header.chunk([], usage=usage_dict(prompt_tokens, completion_total, cached_tokens))
