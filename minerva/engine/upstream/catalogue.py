"""The upstreams' models as registry entries: discovered from each upstream's /v1/models and /props, kept current.

vLLM has no /props: its model's template and special tokens come from the upstream's `chat_template` key, else
from vLLM's /tokenizer_info (served with --enable-tokenizer-info-endpoint), else it is listed as a completion model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

from minerva.core.errors import MinervaError, UpstreamError, UpstreamTimeoutError
from minerva.engine.upstream.chat_templates import configured_props, tokenizer_props
from minerva.engine.upstream.config import UpstreamConfig
from minerva.engine.upstream.engine import PREFIX_BY_KIND, UpstreamModel
from minerva.engine.upstream.health import check_all
from minerva.engine.upstream.replicas import ReplicaSet
from minerva.engine.upstream.transport import UpstreamClient
from minerva.formats.model_info import ModelInfo
from minerva.registry import RegisteredModel, derive_model_id

logger = logging.getLogger(__name__)

REFRESH_EVERY = 12  # health rounds between two model discoveries
MINERVA_META = ("format", "quantization", "parameter_count", "file_size_mb", "architecture", "context_length")


def detect_kind(entries: list[dict]) -> str:
    """The protocol an upstream speaks, from its /v1/models entries."""
    for entry in entries:
        if "meta" in entry or entry.get("owned_by") == "llamacpp":
            return "llama-server"
        if "max_model_len" in entry or entry.get("owned_by") == "vllm":
            return "vllm"
        if "capabilities" in entry or "quantization" in entry:
            return "minerva"
    return "llama-server"


def local_id(remote_id: str) -> str:
    """The id minerva lists an upstream model under (a llama-server without --alias names its file path)."""
    if remote_id.lower().endswith((".gguf", ".safetensors")):
        return derive_model_id(Path(remote_id))
    return remote_id


def reported_meta(entry: dict, kind: str) -> dict:
    """What the upstream says of a model, as /v1/models shows it under upstream_meta."""
    if kind == "llama-server":
        meta = entry.get("meta")
        return dict(meta) if isinstance(meta, dict) else {}
    if kind == "vllm":
        return {k: entry[k] for k in ("max_model_len", "root") if k in entry}
    return {k: entry[k] for k in MINERVA_META if entry.get(k) is not None}


def model_info(remote_id: str, entry: dict, props: dict, kind: str) -> ModelInfo:
    """The ModelInfo of an upstream model from its /v1/models entry and its /props."""
    meta = reported_meta(entry, kind)
    template = props.get("chat_template") or None
    return ModelInfo(
        format="remote", path=Path(remote_id), files=(),
        file_size_bytes=int(meta.get("size") or meta.get("file_size_mb", 0) * 1_000_000 or 0),
        tensor_count=0,
        parameter_count=int(meta.get("n_params") or meta.get("parameter_count") or 0),
        quantization=meta.get("ftype") or meta.get("quantization"),
        architecture=meta.get("architecture"),
        context_length=meta.get("n_ctx_train") or meta.get("context_length") or meta.get("max_model_len"),
        kind="chat" if template else "completion", name=remote_id, chat_template=template,
        embedding_length=meta.get("n_embd"), vocab_size=meta.get("n_vocab") or props.get("vocab_size"),
        bos_token=props.get("bos_token") or None, eos_token=props.get("eos_token") or None)


def props_n_ctx(props: dict) -> int:
    """Tokens one sequence may hold on the upstream (llama-server: per slot)."""
    settings = props.get("default_generation_settings")
    n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
    return int(n_ctx or props.get("n_ctx") or 4096)


class UpstreamSource:
    """One configured upstream: its replicas, its client, the protocol it speaks and its models."""

    def __init__(self, config: UpstreamConfig):
        self.config = config
        self.replicas = ReplicaSet(config.name, config.urls)
        self.client = UpstreamClient(config, self.replicas)
        self.kind = config.kind
        self.models: list[RegisteredModel] = []
        self._untemplated: set[str] = set()  # vLLM models already logged as having no template

    async def discover(self) -> bool:
        """Read the models from the first replica that answers; whether what is listed changed."""
        for replica in sorted(self.replicas.replicas, key=lambda r: not r.healthy):
            try:
                listing = await self.client.get_json(f"{replica.url}/v1/models")
                entries = [e for e in listing.get("data", []) if isinstance(e, dict) and "id" in e]  # type: ignore[union-attr]
                kind = self.kind if self.kind != "auto" else detect_kind(entries)
                if kind not in PREFIX_BY_KIND:
                    logger.error("upstream %s speaks %s, which minerva cannot drive at token level yet",
                                 self.config.name, kind)
                    return False
                wanted = set(self.config.models)
                models = []
                for entry in entries:
                    if wanted and entry["id"] not in wanted and local_id(entry["id"]) not in wanted:
                        continue
                    models.append(await self._registered(replica.url, entry, kind))
            except (MinervaError, AttributeError, TypeError, ValueError) as exc:
                logger.warning("upstream %s: listing models on %s failed: %s", self.config.name, replica.url, exc)
                continue
            self.kind = kind
            changed = [(m.id, m.upstream) for m in models] != [(m.id, m.upstream) for m in self.models]
            self.models = models
            return changed
        return False

    async def _vllm_props(self, root: str, entry: dict) -> dict:
        """A vLLM model's template and special tokens: configured, else /tokenizer_info, else none (logged once)."""
        props: dict = {"n_ctx": entry.get("max_model_len")}
        if self.config.chat_template is not None:
            return {**props, **configured_props(self.config.chat_template)}
        try:
            info = await self.client.get_json(f"{root}/tokenizer_info")
        except UpstreamTimeoutError:
            raise
        except UpstreamError:  # 404 unless vllm serve was started with --enable-tokenizer-info-endpoint
            info = None
        found = tokenizer_props(info) if isinstance(info, dict) else {}
        if not found.get("chat_template") and entry["id"] not in self._untemplated:
            self._untemplated.add(entry["id"])
            logger.warning("upstream %s: vLLM model %s has no chat template minerva can read; serving it for "
                           "completions only (set chat_template in [upstreams.%s], or start vllm serve with "
                           "--enable-tokenizer-info-endpoint)", self.config.name, entry["id"], self.config.name)
        return {**props, **found}

    async def _registered(self, root: str, entry: dict, kind: str) -> RegisteredModel:
        remote_id = str(entry["id"])
        if kind == "vllm":
            props = await self._vllm_props(root, entry)
        else:
            props = await self.client.get_json(f"{root}{PREFIX_BY_KIND[kind]}/props?model={quote(remote_id, safe='')}")
        if not isinstance(props, dict):
            raise ValueError("/props is not an object")
        if kind == "llama-server" and isinstance(props.get("total_slots"), int):
            for replica in self.replicas.replicas:
                replica.total_slots = replica.total_slots or props["total_slots"]
        info = model_info(remote_id, entry, props, kind)
        meta = tuple(sorted(reported_meta(entry, kind).items()))
        upstream = UpstreamModel(self.config.name, remote_id, kind, props_n_ctx(props), meta, self.client)
        return RegisteredModel(local_id(remote_id), info, f"upstream:{self.config.name}", (0, hash(meta) & 0xFFFFFFFF),
                               engine="upstream", upstream=upstream)


class UpstreamCatalogue:
    """Every upstream of one server; the registry lists `models()`; `run()` keeps them checked and current."""

    def __init__(self, configs: Iterable[UpstreamConfig]):
        self.sources = [UpstreamSource(config) for config in configs]
        self.version = 0  # bumped whenever the listed models change

    def models(self) -> list[RegisteredModel]:
        """The upstream models known now."""
        return [model for source in self.sources for model in source.models]

    async def refresh(self) -> None:
        """Discover every upstream's models now."""
        changed = await asyncio.gather(*(source.discover() for source in self.sources))
        if any(changed):
            self.version += 1

    async def check_health(self) -> None:
        """One health round over every replica."""
        await asyncio.gather(*(check_all(source.client, source.kind) for source in self.sources))

    async def run(self) -> None:
        """Background task: health checks each interval, model discovery every REFRESH_EVERY rounds."""
        if not self.sources:
            return
        interval = min(source.config.timeouts.health_interval_s for source in self.sources)
        rounds = 0
        while True:
            await asyncio.sleep(interval)
            rounds += 1
            await self.check_health()
            if rounds % REFRESH_EVERY == 0 or any(not s.models for s in self.sources):
                await self.refresh()

    async def close(self) -> None:
        """Close every upstream's HTTP clients."""
        for source in self.sources:
            with contextlib.suppress(Exception):
                await source.client.aclose()
