"""Training-file validation as OpenAI does it: JSONL chat examples, failures named by code, example and message."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

MIN_TRAINING_EXAMPLES = 10
LINE_KEYS = frozenset({"messages", "tools", "parallel_tool_calls", "functions"})
MESSAGE_KEYS = {
    "system": frozenset({"role", "content", "name"}),
    "developer": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset({"role", "content", "name", "tool_calls", "function_call", "weight", "refusal"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
    "function": frozenset({"role", "content", "name"}),
}


class TrainingFileError(ValueError):
    """A training or validation file that a job cannot train on: OpenAI's error code, message and param."""

    def __init__(self, code: str, message: str, param: str):
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


@dataclass(frozen=True)
class _Where:
    kind: str  # "training" or "validation"
    param: str
    example: int
    line: int

    def fail(self, detail: str, message: int | None = None) -> TrainingFileError:
        at = f"Example {self.example} (line {self.line})"
        if message is not None:
            at += f", message {message}"
        return TrainingFileError(
            "invalid_training_file",
            f"The job failed due to an invalid {self.kind} file. Invalid file format. {at} {detail}",
            self.param)


def _is_text_content(content: Any) -> bool:
    if isinstance(content, str):
        return True
    return isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str) for part in content)


def _check_tool_calls(calls: Any, where: _Where, index: int) -> None:
    if not isinstance(calls, list) or not calls:
        raise where.fail("has 'tool_calls' that is not a non-empty list.", index)
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) \
                or not isinstance(function.get("arguments"), str):
            raise where.fail("has a tool call without a function name and string arguments.", index)


def _check_message(message: Any, where: _Where, index: int) -> bool:
    """Raise on a malformed message; whether it is an assistant message that is trained on."""
    if not isinstance(message, dict):
        raise where.fail("is not a JSON object.", index)
    if "role" not in message:
        raise where.fail("Discriminator 'role' is missing in value.", index)
    role = message["role"]
    allowed = MESSAGE_KEYS.get(role) if isinstance(role, str) else None
    if allowed is None:
        raise where.fail(f"has an unrecognized role {role!r}; expected one of {', '.join(MESSAGE_KEYS)}.", index)
    extra = sorted(set(message) - allowed)
    if extra:
        raise where.fail(f"contains an extra \"{extra[0]}\" (not allowed in a {role} message).", index)
    content = message.get("content")
    if role == "assistant":
        if "tool_calls" in message:
            _check_tool_calls(message["tool_calls"], where, index)
        elif content is None and "function_call" not in message:
            raise where.fail("is missing 'content' (an assistant message needs content or tool_calls).", index)
        if content is not None and not _is_text_content(content):
            raise where.fail("has 'content' that is neither a string nor a list of text parts.", index)
        weight = message.get("weight", 1)
        if weight not in (0, 1) or isinstance(weight, bool):
            raise where.fail(f"has weight {weight!r}; weight must be 0 or 1.", index)
        return weight == 1
    if "content" not in message:
        raise where.fail("is missing 'content'.", index)
    if not _is_text_content(content):
        raise where.fail("has 'content' that is neither a string nor a list of text parts.", index)
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise where.fail("is a tool message without a 'tool_call_id'.", index)
    return False


def check_chat_example(line: Any, where: _Where) -> None:
    """Raise TrainingFileError unless the line is a chat example with an assistant message to train on."""
    if not isinstance(line, dict):
        raise where.fail("is not a JSON object.")
    extra = sorted(set(line) - LINE_KEYS)
    if extra:
        raise where.fail(f"contains an extra \"{extra[0]}\"; a chat example has "
                         "'messages' and optionally 'tools' and 'parallel_tool_calls'.")
    messages = line.get("messages")
    if not isinstance(messages, list) or not messages:
        raise where.fail("is missing the 'messages' list.")
    if "tools" in line and not (isinstance(line["tools"], list) and all(
            isinstance(t, dict) and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)
            for t in line["tools"])):
        raise where.fail("has 'tools' that is not a list of function tools.")
    trained = [_check_message(message, where, index) for index, message in enumerate(messages, 1)]
    if not any(m.get("role") == "assistant" for m in messages):
        raise where.fail("has no assistant message; each example needs at least one to train on.")
    if not any(trained):
        raise where.fail("has no assistant message with weight 1, so there is nothing to train on.")


def example_location(kind: str, example: int, line: int) -> _Where:
    """Where in a training or validation file an example is, for its error messages."""
    return _Where(kind, f"{kind}_file", example, line)


def text_lines(data: bytes, kind: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line of a UTF-8 JSONL file."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TrainingFileError("invalid_file_format", f"The {kind} file is not UTF-8 text: {exc}.",
                                f"{kind}_file") from None
    for line_number, raw in enumerate(text.splitlines(), 1):
        if raw.strip():
            yield line_number, raw


def min_examples_error(kind: str, found: int, needed: int) -> TrainingFileError:
    """OpenAI's invalid_n_examples error."""
    label = "Training" if kind == "training" else "Validation"
    return TrainingFileError("invalid_n_examples",
                             f"{label} file has {found} example(s), but must have at least {needed} examples",
                             f"{kind}_file")


def validate_lines(data: bytes, kind: str, min_examples: int,
                   check_line: Callable[[Any, _Where], None]) -> tuple[dict, ...]:
    """The examples of a JSONL file, each checked by `check_line`, or TrainingFileError with OpenAI's wording."""
    examples: list[dict] = []
    for line_number, raw in text_lines(data, kind):
        where = example_location(kind, len(examples) + 1, line_number)
        try:
            line = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise where.fail(f"cannot be parsed. Error: line contains invalid json: {exc}.") from None
        check_line(line, where)
        examples.append(line)
    if len(examples) < min_examples:
        raise min_examples_error(kind, len(examples), min_examples)
    return tuple(examples)


def validate_chat_file(data: bytes, *, kind: str = "training", min_examples: int = MIN_TRAINING_EXAMPLES
                       ) -> tuple[dict, ...]:
    """The examples of a JSONL chat file, or TrainingFileError with OpenAI's code and wording."""
    return validate_lines(data, kind, min_examples, check_chat_example)
