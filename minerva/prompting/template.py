"""Render chat prompts with Hugging Face chat templates inside a sandboxed Jinja environment.

Chat templates ship inside model files and are untrusted code (llama-cpp-python's CVE-2024-34359
was a template escaping an unsandboxed Jinja). Templates run in jinja2's
``ImmutableSandboxedEnvironment`` with the globals and filters transformers gives them, so a
template renders here exactly as ``apply_chat_template`` renders it; any attempt to reach
Python internals is refused with a typed 400 error before it has any effect.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2 import meta
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from minerva.core.errors import InvalidRequestError

logger = logging.getLogger(__name__)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""The template used when a model carries none: plain ChatML, as transformers once defaulted to."""

# Names the renderer sets itself; template_kwargs cannot override them.
_RESERVED_TEMPLATE_NAMES = frozenset(
    {
        "messages",
        "tools",
        "documents",
        "add_generation_prompt",
        "bos_token",
        "eos_token",
        "raise_exception",
        "strftime_now",
        "namespace",
        "dict",
    }
)

# Names a message's reasoning travels under; transformers fills the first and `thinking` from any.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class TemplateError(InvalidRequestError):
    """The chat template could not render these messages (400); the message says why."""

    code = "chat_template_error"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message, param="messages", code=code)


class TemplateSecurityError(TemplateError):
    """The chat template tried to reach Python internals and was refused (400)."""

    code = "chat_template_unsafe"


class _TemplateRaised(jinja2.exceptions.TemplateError):
    """Raised by the template's own ``raise_exception(message)`` call."""


class _GenerationTagIgnored(jinja2.ext.Extension):
    """Accept transformers' ``{% generation %}…{% endgeneration %}`` and render its body as is."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _ChatTemplateEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, failing at once on any unsafe attribute instead of rendering ''."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe."
        )


class _TemplateDict:
    """The ``dict`` global: builds dicts without exposing the dict type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """``namespace()`` that refuses underscore-prefixed names, as transformers' does."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - Namespace's own signature trick
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"chat templates cannot set underscore-prefixed names ({name!r})")


def _raise_exception(message: Any) -> None:
    raise _TemplateRaised(str(message))


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _new_environment() -> _ChatTemplateEnvironment:
    environment = _ChatTemplateEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTagIgnored, jinja2.ext.loopcontrols],
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    environment.globals["dict"] = _TemplateDict()
    environment.globals["namespace"] = _TemplateNamespace
    return environment


@functools.lru_cache(maxsize=64)
def _compile(template: str) -> jinja2.Template:
    """Compile a template once per distinct text (raises jinja2's TemplateSyntaxError)."""
    return _new_environment().from_string(template)


def _plain_data(value: Any) -> Any:
    """A fresh copy of value built from JSON types only, so templates see no rich objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain_data(key): _plain_data(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain_data(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain_data(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain_data(value.model_dump())
    return f"<{type(value).__name__}>"


def _alias_reasoning(message: Any) -> Any:
    """Fill ``reasoning_content`` and ``thinking`` from whichever reasoning field is set."""
    if not isinstance(message, dict):
        return message
    reasoning = next(
        (message[key] for key in _REASONING_FIELDS if message.get(key) is not None), None
    )
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def _template_error(error: Exception) -> TemplateError:
    """Map anything a template raised while compiling or rendering to a typed 400."""
    if isinstance(error, SecurityError):
        return TemplateSecurityError(f"The chat template was refused: {error}")
    if isinstance(error, _TemplateRaised):
        return TemplateError(str(error), code="chat_template_raised")
    if isinstance(error, TemplateSyntaxError):
        return TemplateError(
            f"The chat template has a syntax error at line {error.lineno}: {error.message}",
            code="chat_template_syntax_error",
        )
    return TemplateError(f"The chat template failed to render: {type(error).__name__}: {error}")


def render_chat_prompt(
    template: str | None,
    messages: list[dict],
    *,
    tools: list[dict] | None = None,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    template_kwargs: dict | None = None,
) -> str:
    """Render messages (already normalized) into a prompt string, as transformers would."""
    source = template if template else CHATML_TEMPLATE
    extra = {}
    for name, value in (template_kwargs or {}).items():
        if name in _RESERVED_TEMPLATE_NAMES or not isinstance(name, str):
            logger.debug("ignoring reserved chat template kwarg %r", name)
            continue
        extra[name] = _plain_data(value)
    try:
        chat = [_alias_reasoning(message) for message in _plain_data(list(messages))]
        compiled = _compile(source)
        return compiled.render(
            **extra,
            messages=chat,
            tools=_plain_data(tools),
            documents=None,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    except Exception as error:  # a template is arbitrary code: anything it raises is its fault
        mapped = _template_error(error)
        logger.info("chat template refused the request: %s", mapped.message)
        raise mapped from error


@functools.lru_cache(maxsize=64)
def _template_variables(template: str) -> frozenset[str] | None:
    """Names a template reads from its context, or None when it does not parse."""
    try:
        return frozenset(meta.find_undeclared_variables(_new_environment().parse(template)))
    except TemplateSyntaxError:
        return None


def template_supports_tools(template: str | None) -> bool:
    """Whether the template reads the ``tools`` variable (so tool definitions reach the prompt)."""
    if not template:
        return False
    variables = _template_variables(template)
    if variables is None:
        return re.search(r"\btools\b", template) is not None
    return "tools" in variables


_LLAMA3_HEADER = "<|start_header_id|>"
_LLAMA3_JSON_CALL = re.compile(r"\"name\"|\bparameters\b")


def detect_tool_format(template: str | None) -> str | None:
    """The tool-call parser a template's model speaks: hermes, llama3, mistral, harmony or None."""
    if not template:
        return None
    if "<|channel|>" in template or "<|start|>assistant" in template:
        return "harmony"
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<tool_call>" in template:
        return "hermes"
    if "<|python_tag|>" in template:
        return "llama3"
    if _LLAMA3_HEADER in template and _LLAMA3_JSON_CALL.search(template):
        return "llama3"
    return None


def detect_reasoning_format(template: str | None) -> str | None:
    """How a template's model marks its reasoning: "think" (<think> tags), "harmony" or None."""
    if not template:
        return None
    if "<think>" in template:
        return "think"
    if "<|channel|>" in template:
        return "harmony"
    return None
