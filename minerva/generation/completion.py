"""Completions: raw prompts → engine → the core event stream of every choice (one path for both modes)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from minerva.core.errors import InvalidRequestError, MinervaError
from minerva.core.events import ChoiceEnd, Event, StreamFailed, TextDelta, Usage
from minerva.core.requests import CompletionRequest
from minerva.engine.base import Engine, GenerationRequest
from minerva.generation.checks import check_token_ids, refuse_embedding_model
from minerva.generation.fim import fim_prompt_tokens
from minerva.generation.decode import Finished, OutputPolicy, TextPiece, clamp_max_tokens, generate_choice, \
    merge_choices
from minerva.generation.sampling import sampling_params


@dataclass(frozen=True)
class PreparedCompletion:
    """Everything needed to run a completion request, checked before any output is sent."""

    generations: tuple[GenerationRequest, ...]
    echoes: tuple[str, ...]  # the prompt text per choice when `echo` is set
    stops: tuple[str, ...]
    want_logprobs: bool
    policy: OutputPolicy = OutputPolicy()


def prepare_completion(request: CompletionRequest, engine: Engine, model_id: str,
                       policy: OutputPolicy = OutputPolicy()) -> PreparedCompletion:
    """Tokenize prompts, check the context and build one generation request per choice (4xx raised here)."""
    refuse_embedding_model(engine, model_id)
    if request.suffix and any(not isinstance(prompt, str) for prompt in request.prompts):
        raise InvalidRequestError("suffix (fill-in-the-middle) needs prompts as text, not token ids", param="suffix")
    vocab = engine.info.vocab_size
    check_token_ids((token for token, _ in request.sampling.logit_bias), vocab, "logit_bias")
    want_logprobs = request.logprobs is not None
    generations, echoes = [], []
    for prompt in request.prompts:
        if isinstance(prompt, str) and request.suffix:
            tokens = fim_prompt_tokens(engine, prompt, request.suffix, model_id)
            text = prompt
        elif isinstance(prompt, str):
            tokens = engine.tokenize(prompt, add_special=True, parse_special=False)
            text = prompt
        else:
            check_token_ids(prompt, vocab, "prompt")
            tokens = list(prompt)
            text = b"".join(engine.token_piece(t) for t in tokens).decode("utf-8", errors="replace")
        budget = clamp_max_tokens(request.limits.max_tokens, len(tokens), engine.n_ctx, "prompt",
                                  policy.default_max_tokens)
        for choice in range(request.limits.n):
            sampling = sampling_params(request.sampling, choice_index=choice, logprobs=want_logprobs,
                                       top_logprobs=request.logprobs or 0)
            generations.append(GenerationRequest(tuple(tokens), budget, sampling, request.session_key,
                                                 request.adapter))
            echoes.append(text if request.echo else "")
    return PreparedCompletion(tuple(generations), tuple(echoes), request.limits.stop, want_logprobs, policy)


async def completion_events(prepared: PreparedCompletion, engine: Engine) -> AsyncIterator[Event]:
    """Echoed prompts, then every choice's text as it comes and its ChoiceEnd, then one Usage."""
    for index, echo in enumerate(prepared.echoes):
        if echo:
            yield TextDelta(echo, index)
    prompt_total, completion_total, cached_total, drafted, accepted = 0, 0, 0, 0, 0
    counted_prompts: set[tuple[int, ...]] = set()
    streams = [generate_choice(engine, g, prepared.stops, prepared.policy) for g in prepared.generations]
    try:
        async for index, event in merge_choices(streams):
            if isinstance(event, TextPiece):
                logprobs = event.tokens if prepared.want_logprobs else ()
                if event.text or logprobs:
                    yield TextDelta(event.text, index, logprobs)
            elif isinstance(event, Finished):
                prompt = prepared.generations[index].prompt_tokens
                if prompt not in counted_prompts:  # n choices of one prompt pay for it once
                    counted_prompts.add(prompt)
                    prompt_total += event.prompt_tokens
                    cached_total += event.cached_tokens
                completion_total += event.completion_tokens
                drafted, accepted = drafted + event.draft_tokens, accepted + event.draft_accepted
                yield ChoiceEnd(index, event.reason, event.stop_sequence)
    except MinervaError as exc:
        yield StreamFailed(exc)
        return
    yield Usage(prompt_total, completion_total, cached_total, draft_tokens=drafted, draft_accepted=accepted)
