"""A chat template for an upstream that has no /props (vLLM): from a configured file or model folder, or its tokenizer's config."""

from __future__ import annotations

import json
from pathlib import Path

from minerva.core.errors import InvalidRequestError

TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")  # beside tokenizer_config.json in newer HF repos


def token_text(value: object) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken object with `content`."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def template_text(value: object) -> str | None:
    """A `chat_template` value: the template, or from a list of named ones the one named "default"."""
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    return value if isinstance(value, str) and value.strip() else None


def tokenizer_props(config: dict) -> dict:
    """The template and special tokens of a tokenizer config (tokenizer_config.json, or vLLM's /tokenizer_info)."""
    return {"chat_template": template_text(config.get("chat_template")),
            "bos_token": token_text(config.get("bos_token")), "eos_token": token_text(config.get("eos_token"))}


def _json_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidRequestError(f"chat_template {path.name}: {exc}", param="upstreams") from exc
    if not isinstance(data, dict):
        raise InvalidRequestError(f"chat_template {path.name}: not a JSON object", param="upstreams")
    return data


def configured_props(path: Path) -> dict:
    """What the `chat_template` key names: a Jinja file, a tokenizer_config.json, or a model folder holding one."""
    path = path.expanduser()
    if path.is_dir():
        config = path / "tokenizer_config.json"
        props = tokenizer_props(_json_file(config)) if config.is_file() else {}
        for name in TEMPLATE_FILES:
            file = path / name
            if file.is_file():
                props["chat_template"] = (template_text(_json_file(file).get("chat_template"))
                                          if file.suffix == ".json" else file.read_text(encoding="utf-8"))
                break
        if not props.get("chat_template"):
            raise InvalidRequestError(f"chat_template folder {path.name} holds no chat template", param="upstreams")
        return props
    if path.suffix == ".json":
        props = tokenizer_props(_json_file(path))
        if not props["chat_template"]:
            raise InvalidRequestError(f"chat_template {path.name} has no chat_template", param="upstreams")
        return props
    try:
        return {"chat_template": path.read_text(encoding="utf-8")}
    except OSError as exc:
        raise InvalidRequestError(f"chat_template {path.name}: {exc.strerror}", param="upstreams") from exc
