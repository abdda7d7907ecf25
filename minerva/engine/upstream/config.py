"""What one upstream is: its replicas' base URLs, key, models, protocol and timeouts (frozen, from settings)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from minerva.core.errors import InvalidRequestError

UpstreamKind = Literal["auto", "llama-server", "minerva", "vllm"]
KINDS = ("auto", "llama-server", "minerva", "vllm")


@dataclass(frozen=True)
class Timeouts:
    """How long an upstream may take: to connect, to the first token, between two tokens."""

    connect_s: float = 5.0
    first_token_s: float = 300.0
    between_tokens_s: float = 60.0
    health_interval_s: float = 5.0


@dataclass(frozen=True)
class UpstreamConfig:
    """One named upstream: several replicas serving the same models."""

    name: str
    urls: tuple[str, ...]
    api_key: str | None = None
    models: tuple[str, ...] = ()  # empty: what each replica's /v1/models lists
    kind: UpstreamKind = "auto"
    timeouts: Timeouts = Timeouts()
    chat_template: Path | None = None  # for a server with no /props (vLLM): a Jinja file, tokenizer_config.json or model folder


def server_root(url: str) -> str:
    """A replica's server root: an OpenAI base URL without its trailing /v1 and slash."""
    url = url.strip().rstrip("/")
    return url.removesuffix("/v1")


def parse_upstream_flag(text: str) -> tuple[str, list[str]]:
    """Parse `--upstream NAME=URL[,URL...]`."""
    name, sep, urls = text.partition("=")
    parts = [u.strip() for u in urls.split(",") if u.strip()]
    if not sep or not name.strip() or not parts:
        raise InvalidRequestError(f"--upstream {text!r}: expected NAME=URL[,URL...]", param="upstream")
    return name.strip(), parts


def upstream_config(name: str, table: dict) -> UpstreamConfig:
    """An UpstreamConfig from one validated `[upstreams.NAME]` table."""
    urls = tuple(server_root(u) for u in table.get("urls", ()))
    if not urls:
        raise InvalidRequestError(f"upstream {name!r}: no urls", param="upstreams")
    timing = {key: table[key] for key in ("connect_s", "first_token_s", "between_tokens_s", "health_interval_s")
              if table.get(key) is not None}
    template = table.get("chat_template")
    return UpstreamConfig(name, urls, table.get("api_key"), tuple(table.get("models", ())),
                          table.get("kind", "auto"), Timeouts(**timing), Path(template) if template else None)
