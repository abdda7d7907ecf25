"""OpenAI request bodies → the core requests (nothing here knows an engine)."""

from __future__ import annotations

from minerva.core import requests as core
from minerva.core.errors import InvalidRequestError
from minerva.dialects.openai.messages import messages_from_openai
from minerva.dialects.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    NamedToolChoice,
    SamplingFields,
)


def sampling_from(body: SamplingFields) -> core.Sampling:
    """The sampling fields of a chat or completion body."""
    return core.Sampling(
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repeat_penalty=body.repeat_penalty,
        seed=body.seed,
        logit_bias=tuple((int(k), float(v)) for k, v in (body.logit_bias or {}).items()),
    )


def _tool_choice(body: ChatCompletionRequest) -> core.ToolChoice:
    choice = body.tool_choice
    if isinstance(choice, NamedToolChoice):
        return core.ForcedTool(choice.function.name)
    return choice or "auto"


def _output(body: ChatCompletionRequest) -> core.OutputConstraint | None:
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return core.JsonObjectOutput()
    return core.JsonSchemaOutput(fmt.json_schema.schema_)  # type: ignore[union-attr]


def chat_request_from(body: ChatCompletionRequest, session_key: str | None) -> core.ChatRequest:
    """A chat completion body as the core chat request."""
    return core.ChatRequest(
        messages=messages_from_openai(body.message_dicts()),
        sampling=sampling_from(body),
        limits=core.Limits(body.token_budget(), tuple(body.stop_list()), body.n),
        tools=tuple(core.ToolSpec(t.function.name, t.function.description, t.function.parameters, t.function.strict)
                    for t in body.tools or ()),
        tool_choice=_tool_choice(body),
        parallel_tool_calls=body.parallel_tool_calls is not False,
        output=_output(body),
        logprobs=body.logprobs,
        top_logprobs=body.top_logprobs or 0,
        template_kwargs=body.chat_template_kwargs,
        session_key=session_key,
    )


def completion_request_from(body: CompletionRequest, session_key: str | None) -> core.CompletionRequest:
    """A text completion body as the core completion request."""
    if body.best_of is not None and body.best_of != body.n:
        raise InvalidRequestError("best_of other than n is not supported", param="best_of")
    prompts = tuple(p if isinstance(p, str) else tuple(p) for p in body.prompts())
    return core.CompletionRequest(
        prompts=prompts,
        sampling=sampling_from(body),
        limits=core.Limits(body.max_tokens, tuple(body.stop_list()), body.n),
        logprobs=body.logprobs,
        echo=body.echo,
        suffix=body.suffix,
        session_key=session_key,
    )


def embedding_request_from(body: EmbeddingRequest) -> core.EmbeddingRequest:
    """An embeddings body as the core embedding request (one string, one token list, or a list of either)."""
    value = body.input
    if isinstance(value, str):
        inputs: tuple = (value,)
    elif value and all(isinstance(item, int) for item in value):
        inputs = (tuple(value),)  # type: ignore[arg-type]
    else:
        inputs = tuple(item if isinstance(item, str) else tuple(item) for item in value)  # type: ignore[union-attr]
    return core.EmbeddingRequest(inputs, body.dimensions)
