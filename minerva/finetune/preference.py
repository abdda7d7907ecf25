"""Preference (DPO) training lines as OpenAI defines them: validated, and split into a chosen and a rejected chat.

A line is ``{"input": {"messages", "tools"?, "parallel_tool_calls"?}, "preferred_output": [assistant message],
"non_preferred_output": [assistant message]}`` (the older ``preferred_completion`` / ``non_preferred_completion``
spellings are accepted too). Each output becomes the last, trained, assistant message of a chat line, so
both halves are rendered and labelled by the same code as supervised lines.
"""

from __future__ import annotations

from typing import Any

from minerva.finetune.validation import MIN_TRAINING_EXAMPLES, TrainingFileError, check_chat_example, validate_lines

PREFERRED_KEYS = ("preferred_output", "preferred_completion")
NON_PREFERRED_KEYS = ("non_preferred_output", "non_preferred_completion")
LINE_KEYS = frozenset({"input", *PREFERRED_KEYS, *NON_PREFERRED_KEYS})
INPUT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})


def _output(line: dict, keys: tuple[str, ...]) -> Any:
    return next((line[key] for key in keys if key in line), None)


def preference_chats(line: dict) -> tuple[dict, dict]:
    """(chosen, rejected) chat lines of a validated preference line: its input then each output, trained."""
    source = line["input"]
    context = [{**message, "weight": 0} if message.get("role") == "assistant" else message
               for message in source["messages"]]
    extra = {key: source[key] for key in ("tools", "parallel_tool_calls") if key in source}
    chosen, rejected = (_output(line, keys)[0] for keys in (PREFERRED_KEYS, NON_PREFERRED_KEYS))
    return ({"messages": [*context, {**chosen, "weight": 1}], **extra},
            {"messages": [*context, {**rejected, "weight": 1}], **extra})


def _check_output(line: dict, keys: tuple[str, ...], where) -> None:
    output = _output(line, keys)
    if output is None:
        raise where.fail(f"is missing '{keys[0]}'; a preference example has 'input', 'preferred_output' and "
                         "'non_preferred_output'.")
    if not (isinstance(output, list) and len(output) == 1 and isinstance(output[0], dict)
            and output[0].get("role") == "assistant"):
        raise where.fail(f"has '{keys[0]}' that is not a list of exactly one assistant message.")
    if "weight" in output[0]:
        raise where.fail(f"contains an extra \"weight\" in '{keys[0]}'.")


def _check_preference_line(line: Any, where) -> None:
    if not isinstance(line, dict):
        raise where.fail("is not a JSON object.")
    if "messages" in line and "input" not in line:
        raise TrainingFileError(
            "invalid_training_file",
            f"The job failed due to an invalid {where.kind} file. Invalid file format. The file is in the "
            "fine-tune-chat format, but the specified fine-tuning job is not using 'supervised' as the training "
            "method (provided method=dpo).", where.param)
    extra = sorted(set(line) - LINE_KEYS)
    if extra:
        raise where.fail(f"contains an extra \"{extra[0]}\"; a preference example has 'input', "
                         "'preferred_output' and 'non_preferred_output'.")
    source = line.get("input")
    if not isinstance(source, dict):
        raise where.fail("is missing the 'input' object.")
    extra = sorted(set(source) - INPUT_KEYS)
    if extra:
        raise where.fail(f"contains an extra \"{extra[0]}\" in 'input'.")
    _check_output(line, PREFERRED_KEYS, where)
    _check_output(line, NON_PREFERRED_KEYS, where)
    for chat in preference_chats(line):  # the whole conversation as supervised validation sees it
        check_chat_example(chat, where)


def validate_preference_file(data: bytes, *, kind: str = "training", min_examples: int = MIN_TRAINING_EXAMPLES
                             ) -> tuple[dict, ...]:
    """The examples of a JSONL preference file, or TrainingFileError with OpenAI's code and wording."""
    return validate_lines(data, kind, min_examples, _check_preference_line)
