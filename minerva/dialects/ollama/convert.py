"""Ollama request bodies → the core requests (nothing here knows an engine)."""

from __future__ import annotations

import logging
from typing import Any

from minerva.core import requests as core
from minerva.core.errors import InvalidRequestError
from minerva.dialects.ollama.protocol import ChatRequest, EmbedRequest, GenerateRequest, Message, Options, Tool
from minerva.prompting.messages import InvalidMessagesError, UnsupportedContentError
from minerva.prompting.template import detect_reasoning_format
from minerva.registry import RegisteredModel

logger = logging.getLogger(__name__)

ROLES = frozenset({"system", "user", "assistant", "tool"})

NUM_PREDICT_DEFAULT = -1
"""num_predict -1 (Ollama's "no limit"): the server's default output bound applies (default_max_tokens)."""
NUM_PREDICT_FILL_CONTEXT = -2
"""num_predict -2: generate up to the end of the context."""
UP_TO_CONTEXT_END = 2**31 - 1  # clamped to what the context has left

LOAD_TIME_OPTIONS = frozenset({
    "num_ctx", "num_batch", "num_gpu", "main_gpu", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mmap",
    "use_mlock", "embedding_only", "num_thread", "numa", "num_keep", "penalize_newline",
})
"""Options Ollama applies when it loads a model (or that only its runner knows): minerva's loaded model keeps
its own settings (n_ctx, threads), so these are accepted and ignored."""
NEUTRAL_VALUES = {"mirostat": 0, "typical_p": 1.0, "tfs_z": 1.0}
"""Sampling options minerva's samplers do not have, at the values that turn them off (accepted silently)."""


def _unapplied_options(options: Options) -> list[str]:
    """Options this request sets that minerva does not apply (load-time options aside)."""
    extra = options.model_extra or {}
    return sorted(key for key, value in extra.items()
                  if key not in LOAD_TIME_OPTIONS and NEUTRAL_VALUES.get(key, object()) != value)


def sampling_from(options: Options | None) -> core.Sampling:
    """The sampling options (a negative seed asks for a fresh random one, as Ollama's -1)."""
    if options is None:
        return core.Sampling()
    unapplied = _unapplied_options(options)
    if unapplied:
        logger.info("ollama: options %s are not applied by minerva; ignored", ", ".join(unapplied))
    return core.Sampling(
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k,
        min_p=options.min_p,
        presence_penalty=options.presence_penalty,
        frequency_penalty=options.frequency_penalty,
        repeat_penalty=options.repeat_penalty,
        penalty_last_n=options.repeat_last_n,
        seed=options.seed if options.seed is not None and options.seed >= 0 else None,
    )


def limits_from(options: Options | None) -> core.Limits:
    """num_predict and stop (num_ctx is a load-time setting: the loaded model's context applies)."""
    if options is None:
        return core.Limits()
    predict = options.num_predict
    if predict is not None and predict < NUM_PREDICT_FILL_CONTEXT:
        raise InvalidRequestError("options.num_predict must be -2 (fill the context), -1 (no limit of its own) "
                                  "or a number of tokens ≥ 0", param="options.num_predict")
    if predict == NUM_PREDICT_DEFAULT:
        predict = None
    elif predict == NUM_PREDICT_FILL_CONTEXT:
        predict = UP_TO_CONTEXT_END
    stops = [options.stop] if isinstance(options.stop, str) else options.stop or []
    return core.Limits(predict, tuple(stop for stop in stops if stop))


def output_from(fmt: str | dict[str, Any] | None) -> core.OutputConstraint | None:
    """`format`: "json" is any JSON object, a JSON schema is held to by the grammar."""
    if fmt == "json":
        return core.JsonObjectOutput()
    if isinstance(fmt, dict):
        return core.JsonSchemaOutput(fmt)
    if fmt:
        raise InvalidRequestError(f'invalid format {fmt!r}: use "json" or a JSON schema object', param="format")
    return None


def supports_thinking(model: RegisteredModel) -> bool:
    """Whether the model's template marks reasoning (so `think` has something to switch)."""
    return detect_reasoning_format(model.info.chat_template) is not None


def template_kwargs(think: bool | str | None, model: RegisteredModel, model_name: str) -> dict[str, Any] | None:
    """`think` for the template (enable_thinking, and a level as reasoning_effort); think on a model that
    does not reason is a 400, as on Ollama."""
    if think is None:
        return None
    if think is not False and not supports_thinking(model):
        raise InvalidRequestError(f'"{model_name}" does not support thinking', param="think")
    if isinstance(think, str):
        return {"enable_thinking": True, "reasoning_effort": "high" if think == "max" else think}
    return {"enable_thinking": think}


def _arguments(arguments: dict[str, Any] | str | None) -> Any:
    return {} if arguments is None else arguments


def chat_messages(messages: list[Message]) -> tuple[core.Message, ...]:
    """The conversation; a tool turn without a tool_call_id answers the latest call of its tool_name."""
    call_ids: dict[str, str] = {}
    turns: list[core.Message] = []
    for index, message in enumerate(messages):
        if message.images:
            raise UnsupportedContentError(f"messages[{index}] has images: images are not supported by the models "
                                          "this server runs. Send text only.")
        if message.role not in ROLES:
            raise InvalidMessagesError(f"messages[{index}].role {message.role!r} is not one of 'system', 'user', "
                                       "'assistant', 'tool'.")
        content = message.content or ""
        if message.role == "assistant":
            calls = tuple(core.ToolCall(call.function.name, _arguments(call.function.arguments), call.id)
                          for call in message.tool_calls or ())
            call_ids.update((call.name, call.id) for call in calls if call.id)
            turns.append(core.Message("assistant", content, tool_calls=calls, reasoning=message.thinking or None))
        elif message.role == "tool":
            call_id = message.tool_call_id or call_ids.get(message.tool_name or "")
            turns.append(core.Message("tool", content, tool_call_id=call_id, name=message.tool_name))
        else:
            turns.append(core.Message(message.role, content))  # type: ignore[arg-type]
    return tuple(turns)


def chat_tools(tools: list[Tool] | None) -> tuple[core.ToolSpec, ...]:
    """The tools with their JSON Schema parameters."""
    return tuple(core.ToolSpec(tool.function.name, tool.function.description,
                               tool.function.parameters or {"type": "object", "properties": {}})
                 for tool in tools or ())


def chat_request_from(body: ChatRequest, model: RegisteredModel) -> core.ChatRequest:
    """An /api/chat body (with messages) as the core chat request."""
    return core.ChatRequest(
        messages=chat_messages(body.messages or []),
        sampling=sampling_from(body.options),
        limits=limits_from(body.options),
        tools=chat_tools(body.tools),
        output=output_from(body.format),
        logprobs=bool(body.logprobs),
        top_logprobs=body.top_logprobs or 0,
        template_kwargs=template_kwargs(body.think, model, body.model),
    )


def _refuse_generate_fields(body: GenerateRequest, raw_path: bool) -> None:
    if body.images:
        raise UnsupportedContentError("images are not supported by the models this server runs. Send text only.")
    if body.template:
        raise InvalidRequestError("template (an Ollama Go template) is not supported: minerva renders the model's "
                                  "own chat template; send raw: true with a prompt you formatted yourself",
                                  param="template")
    if body.context is not None:
        raise InvalidRequestError("context (deprecated by Ollama) is not supported: send the conversation to "
                                  "/api/chat instead", param="context")
    if body.raw and body.system:
        raise InvalidRequestError("raw mode does not support template, system, or context", param="system")
    if raw_path and body.format:
        raise InvalidRequestError("format needs the model's chat template: it is not supported with raw, suffix, "
                                  "or a model without a chat template", param="format")


def generate_request_from(body: GenerateRequest, model: RegisteredModel) -> core.ChatRequest | core.CompletionRequest:
    """An /api/generate body (with a prompt): through the chat template as one user turn (with `system`), or
    as raw text with `raw`, a `suffix` (fill-in-the-middle) or a model without a chat template."""
    suffix = body.suffix or None
    raw_path = bool(body.raw) or suffix is not None or not model.info.chat_template
    _refuse_generate_fields(body, raw_path)
    if raw_path:
        if body.system:
            raise InvalidRequestError(f'"{body.model}" has no chat template to place a system prompt in',
                                      param="system")
        if body.think:
            raise InvalidRequestError("think needs the model's chat template: it is not supported with raw or suffix",
                                      param="think")
        return core.CompletionRequest(
            prompts=(body.prompt or "",),
            sampling=sampling_from(body.options),
            limits=limits_from(body.options),
            logprobs=(body.top_logprobs or 0) if body.logprobs else None,
            suffix=suffix,
        )
    system = (core.Message("system", body.system),) if body.system else ()
    return core.ChatRequest(
        messages=(*system, core.Message("user", body.prompt or "")),
        sampling=sampling_from(body.options),
        limits=limits_from(body.options),
        output=output_from(body.format),
        logprobs=bool(body.logprobs),
        top_logprobs=body.top_logprobs or 0,
        template_kwargs=template_kwargs(body.think, model, body.model),
    )


def embedding_request_from(body: EmbedRequest) -> core.EmbeddingRequest:
    """An /api/embed body; inputs are cut to the context unless `truncate` is false."""
    inputs = (body.input,) if isinstance(body.input, str) else tuple(body.input)
    return core.EmbeddingRequest(inputs, body.dimensions, truncate=body.truncate is not False)
