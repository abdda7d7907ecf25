"""Chat training lines → token ids and labels, rendered exactly as the server renders a request.

Loss falls only on assistant messages (OpenAI's ``weight`` 0 skips one). The span of assistant message
``i`` is where ``render(messages[:i+1])`` extends ``render(messages[:i], add_generation_prompt=True)``,
so the labels come from the template's own rendering, end-of-turn marker included. Tools are shown as
at inference: in the template when it knows tools, else in the system prompt with calls written as
``<tool_call>`` markup (the same functions ``generation.prompt`` uses).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from minerva.core.errors import InvalidRequestError
from minerva.core.requests import Message, ToolCall
from minerva.generation.prompt import inline_tool_history
from minerva.prompting.messages import ROLE_ALIASES, add_tools_to_system, content_text, template_messages
from minerva.prompting.template import (
    detect_reasoning_format,
    detect_tool_format,
    render_chat_prompt,
    template_supports_tools,
)
from minerva.prompting.tool_prompt import render_tools_for_prompt

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""The label of a token that carries no loss (PyTorch's cross-entropy ignore_index)."""

_MESSAGE_FIELDS = frozenset({"role", "content", "tool_calls", "tool_call_id", "name", "weight"})


class TrainingDataError(InvalidRequestError):
    """A training line cannot be rendered by the base model's chat template (400, training_file)."""

    code = "invalid_training_file"

    def __init__(self, message: str):
        super().__init__(message, param="training_file")


@dataclass(frozen=True)
class ChatFormat:
    """What rendering a chat needs: the model's template and the special tokens it may print."""

    template: str | None
    bos_token: str = ""
    eos_token: str = ""


@dataclass(frozen=True)
class Example:
    """One training sequence: token ids and, per token, its label (IGNORE_INDEX where no loss falls)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def n_trained(self) -> int:
        """How many tokens carry loss."""
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass(frozen=True)
class RenderedChat:
    """A chat as prompt text, and the character spans ``[start, end)`` that are trained."""

    text: str
    spans: tuple[tuple[int, int], ...]


def _tool_call(call: Any) -> ToolCall:
    function = call.get("function") if isinstance(call, Mapping) else None
    function = function if isinstance(function, Mapping) else {}
    call_id = call.get("id") if isinstance(call, Mapping) else None
    return ToolCall(name=str(function.get("name") or ""), arguments=function.get("arguments", {}),
                    id=call_id if isinstance(call_id, str) else None)


def _core_message(message: Mapping[str, Any], index: int) -> Message:
    role = ROLE_ALIASES.get(message.get("role"), message.get("role"))
    calls = tuple(_tool_call(call) for call in message.get("tool_calls") or ()) if role == "assistant" else ()
    text = lambda key: message.get(key) if isinstance(message.get(key), str) else None  # noqa: E731
    extra = tuple((key, value) for key, value in message.items() if key not in _MESSAGE_FIELDS)
    return Message(role=role, content=content_text(message.get("content"), index), tool_calls=calls,
                   tool_call_id=text("tool_call_id"), name=text("name"), extra=extra)


def _tools(line: Mapping[str, Any]) -> list[dict]:
    return [dict(tool) for tool in line.get("tools") or () if isinstance(tool, Mapping) and tool.get("function")]


def inference_view(template: str | None, messages: list[dict], tools: list[dict]) -> tuple[list[dict], list[dict] | None]:
    """The messages and template tools the server renders for this conversation (see build_chat_prompt)."""
    native = detect_tool_format(template) if template_supports_tools(template) else None
    if native is None and detect_reasoning_format(template) == "harmony":
        native = "harmony"
    if tools and native:
        return messages, tools
    if tools:
        return add_tools_to_system(inline_tool_history(messages), render_tools_for_prompt(tools)), None
    return (messages if native else inline_tool_history(messages)), None


def _render(chat: ChatFormat, messages: list[dict], tools: list[dict], generation_prompt: bool) -> str:
    view, template_tools = inference_view(chat.template, messages, tools)
    return render_chat_prompt(chat.template, view, tools=template_tools, add_generation_prompt=generation_prompt,
                              bos_token=chat.bos_token, eos_token=chat.eos_token)


def _trained(message: Mapping[str, Any]) -> bool:
    return message.get("role") == "assistant" and message.get("weight", 1) != 0


def render_chat(line: Mapping[str, Any], chat: ChatFormat) -> list[RenderedChat]:
    """One line → its rendered text(s) with trained spans: one text for a prefix-preserving template,
    else one text per trained assistant message (its own span only)."""
    raw = list(line["messages"])
    messages = template_messages([_core_message(message, i) for i, message in enumerate(raw)])
    tools = _tools(line)
    turns = []  # (full render up to and including the message, its span)
    for i, message in enumerate(raw):
        if not _trained(message):
            continue
        prompt = _render(chat, messages[:i], tools, True)
        upto = _render(chat, messages[: i + 1], tools, False)
        if not upto.startswith(prompt) or len(upto) == len(prompt):
            raise TrainingDataError(
                f"The chat template does not render assistant message {i} after its prompt; "
                "this model cannot be fine-tuned on this conversation.")
        turns.append((upto, (len(prompt), len(upto))))
    if not turns:
        return []
    whole = _render(chat, messages, tools, False)
    if all(whole.startswith(upto) for upto, _ in turns):
        return [RenderedChat(whole, tuple(span for _, span in turns))]
    return [RenderedChat(upto, (span,)) for upto, span in turns]


def tokenize_rendered(rendered: RenderedChat, tokenizer: Any, chat: ChatFormat, max_tokens: int) -> Example:
    """Token ids of the text (special markers parsed, as the server tokenizes) and their labels."""
    add_special = not (chat.bos_token and rendered.text.startswith(chat.bos_token))
    encoded = tokenizer(rendered.text, add_special_tokens=add_special, return_offsets_mapping=True, verbose=False)
    if len(encoded["input_ids"]) > max_tokens:
        logger.warning("a training example of %d tokens was cut to %d", len(encoded["input_ids"]), max_tokens)
    ids = list(encoded["input_ids"])[:max_tokens]
    offsets = list(encoded["offset_mapping"])[:max_tokens]
    labels = [
        token if any(start <= begin < end for start, end in rendered.spans) else IGNORE_INDEX
        for token, (begin, _) in zip(ids, offsets)
    ]
    return Example(tuple(ids), tuple(labels))


def training_examples(lines: Iterable[Mapping[str, Any]], tokenizer: Any, chat: ChatFormat,
                      max_tokens: int = 2048) -> list[Example]:
    """Validated chat lines → examples (lines with nothing to train are left out; long ones truncated)."""
    examples = (tokenize_rendered(rendered, tokenizer, chat, max_tokens)
                for line in lines for rendered in render_chat(line, chat))
    return [example for example in examples if example.n_trained]


def count_tokens(examples: Sequence[Example]) -> int:
    """All tokens the examples hold (what one epoch reads)."""
    return sum(len(example.input_ids) for example in examples)
