"""OpenAI chat messages → the plain shape chat templates expect."""

from __future__ import annotations

import copy

import pytest

from minerva.prompting.messages import (
    InvalidMessagesError,
    UnsupportedContentError,
    add_tools_to_system,
    content_text,
    parse_tool_arguments,
)
from minerva.dialects.openai.errors import openai_error
from minerva.dialects.openai.messages import normalize_messages
from minerva.core.errors import InvalidRequestError

OPENCODE_LIKE_CHAT = [
    {"role": "system", "content": "You are opencode."},
    {"role": "user", "content": [{"type": "text", "text": "List files"}]},
    {
        "role": "assistant",
        "content": "",
        "reasoning_content": "I should call ls.",
        "tool_calls": [
            {
                "id": "call_abc",
                "type": "function",
                "function": {"name": "bash", "arguments": '{"command": "ls", "timeout": 5}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_abc", "content": "a.py\nb.py"},
    {"role": "user", "content": "Thanks"},
]


def test_opencode_like_chat_normalizes():
    result = normalize_messages(OPENCODE_LIKE_CHAT)
    assert result == [
        {"role": "system", "content": "You are opencode."},
        {"role": "user", "content": "List files"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "I should call ls.",
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "bash", "arguments": {"command": "ls", "timeout": 5}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": "a.py\nb.py"},
        {"role": "user", "content": "Thanks"},
    ]


def test_inputs_are_never_mutated_and_outputs_share_nothing():
    original = copy.deepcopy(OPENCODE_LIKE_CHAT)
    result = normalize_messages(OPENCODE_LIKE_CHAT)
    assert OPENCODE_LIKE_CHAT == original
    result[2]["tool_calls"][0]["function"]["name"] = "changed"
    result[0]["content"] = "changed"
    assert OPENCODE_LIKE_CHAT == original


def test_text_parts_are_joined_with_newlines():
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "first"},
            {"type": "input_text", "text": "second"},
            "third",
        ],
    }
    assert normalize_messages([message])[0]["content"] == "first\nsecond\nthird"


def test_assistant_refusal_part_is_text():
    message = {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]}
    assert normalize_messages([message])[0]["content"] == "I can't."


@pytest.mark.parametrize(
    ("part", "word"),
    [
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}, "image"),
        ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, "audio"),
        ({"type": "file", "file": {"file_id": "f"}}, "file"),
    ],
)
def test_media_parts_are_a_typed_400(part, word):
    message = {"role": "user", "content": [{"type": "text", "text": "look"}, part]}
    with pytest.raises(UnsupportedContentError) as caught:
        normalize_messages([message])
    error = caught.value
    assert isinstance(error, InvalidRequestError)
    assert error.status_code == 400
    assert error.param == "messages"
    assert word in error.message and "not supported" in error.message
    assert openai_error(error)["error"]["param"] == "messages"


def test_unknown_part_type_is_a_400():
    with pytest.raises(InvalidMessagesError, match="unknown type 'hologram'"):
        normalize_messages([{"role": "user", "content": [{"type": "hologram"}]}])


@pytest.mark.parametrize("content", [None, ""])
def test_null_assistant_content_becomes_empty_string(content):
    message = {"role": "assistant", "content": content}
    assert normalize_messages([message]) == [{"role": "assistant", "content": ""}]


def test_missing_content_becomes_empty_string():
    assert normalize_messages([{"role": "assistant"}])[0]["content"] == ""


def test_developer_role_becomes_system():
    assert normalize_messages([{"role": "developer", "content": "Rules"}]) == [
        {"role": "system", "content": "Rules"}
    ]


@pytest.mark.parametrize("role", ["function", "robot", None, 3, ""])
def test_unknown_roles_are_a_400(role):
    with pytest.raises(InvalidMessagesError) as caught:
        normalize_messages([{"role": role, "content": "x"}])
    assert caught.value.param == "messages"
    assert caught.value.status_code == 400


@pytest.mark.parametrize("messages", [[], None, "hello", [["role", "user"]]])
def test_malformed_message_lists_are_a_400(messages):
    with pytest.raises(InvalidMessagesError):
        normalize_messages(messages)


def test_content_of_wrong_type_is_a_400():
    with pytest.raises(InvalidMessagesError, match="content must be"):
        normalize_messages([{"role": "user", "content": 42}])


def test_tool_message_parts_become_text_and_keep_tool_call_id():
    message = {
        "role": "tool",
        "tool_call_id": "c1",
        "name": "bash",
        "content": [{"type": "text", "text": "ok"}],
    }
    assert normalize_messages([message]) == [
        {"role": "tool", "tool_call_id": "c1", "name": "bash", "content": "ok"}
    ]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"a": 1, "b": [true, null]}', {"a": 1, "b": [True, None]}),
        ('{"unicode": "é"}', {"unicode": "é"}),
        ("", {}),
        ("   ", {}),
        ('{"broken": ', '{"broken": '),
        ("[1, 2]", "[1, 2]"),
        ('"just a string"', '"just a string"'),
        ({"already": "dict"}, {"already": "dict"}),
    ],
)
def test_tool_arguments_parsing(arguments, expected):
    assert parse_tool_arguments(arguments) == expected


def test_invalid_json_arguments_survive_normalization():
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
        ],
    }
    result = normalize_messages([message])[0]
    assert result["tool_calls"][0]["function"]["arguments"] == "{oops"


@pytest.mark.parametrize("tool_calls", [None, []])
def test_empty_tool_calls_are_dropped(tool_calls):
    message = {"role": "assistant", "content": "hi", "tool_calls": tool_calls}
    assert "tool_calls" not in normalize_messages([message])[0]


def test_unknown_message_fields_are_kept():
    message = {"role": "user", "content": "hi", "name": "alice"}
    assert normalize_messages([message]) == [{"role": "user", "content": "hi", "name": "alice"}]


def test_content_text_helper():
    assert content_text(None) == ""
    assert content_text("x") == "x"
    assert content_text([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]) == "a\nb"
    assert content_text([]) == ""


def test_add_tools_to_system_extends_existing_system_message():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    original = copy.deepcopy(messages)
    result = add_tools_to_system(messages, "TOOLS: bash")
    assert result == [
        {"role": "system", "content": "Be brief.\n\nTOOLS: bash"},
        {"role": "user", "content": "hi"},
    ]
    assert messages == original


def test_add_tools_to_system_prepends_when_there_is_none():
    messages = [{"role": "user", "content": "hi"}]
    assert add_tools_to_system(messages, "TOOLS") == [
        {"role": "system", "content": "TOOLS"},
        {"role": "user", "content": "hi"},
    ]


def test_add_tools_to_system_handles_empty_system_and_empty_text():
    messages = [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}]
    assert add_tools_to_system(messages, "T")[0] == {"role": "system", "content": "T"}
    assert add_tools_to_system(messages, "") == messages
    assert add_tools_to_system([], "T") == [{"role": "system", "content": "T"}]
