"""Server settings: one pydantic-settings object from CLI flags, MINERVA_* env vars and a TOML file."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from minerva.core.errors import InvalidRequestError
from minerva.discovery import DISCOVERY_STORES
from minerva.engine.upstream.config import UpstreamKind
from minerva.generation.decode import DEFAULT_MAX_TOKENS
from minerva.generation.repetition import DEFAULT_MAX_PERIOD, DEFAULT_MIN_REPEATS, DEFAULT_MIN_TOKENS


class UpstreamTable(BaseModel):
    """One `[upstreams.NAME]` table: replicas of an OpenAI-compatible server (llama-server, vLLM, minerva)."""

    urls: list[str] = Field(min_length=1)
    api_key: str | None = None
    models: list[str] = Field(default_factory=list)  # empty: discovered from each replica's /v1/models
    kind: UpstreamKind = "auto"  # the protocol; auto: told by what /v1/models answers
    connect_s: float = Field(default=5.0, gt=0)
    first_token_s: float = Field(default=300.0, gt=0)
    between_tokens_s: float = Field(default=60.0, gt=0)
    health_interval_s: float = Field(default=5.0, gt=0)
    chat_template: str | None = None  # vLLM has no /props: a Jinja file, tokenizer_config.json or HF model folder


class Settings(BaseSettings):
    """Everything the server can be told; defaults serve the embedded model on loopback."""

    model_config = SettingsConfigDict(env_prefix="MINERVA_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    models_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=lambda: [Path("~/.minerva/models")])
    models: dict[str, Path] = Field(default_factory=dict)  # explicit id -> path registrations
    include_default_model: bool = True
    discover: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DISCOVERY_STORES))  # other tools' stores read
    discover_paths: dict[str, list[Path]] = Field(default_factory=dict)  # store -> roots, instead of its default locations
    config_file: Path | None = None
    data_dir: Path = Path("~/.minerva")  # uploaded files, fine-tuning jobs and their adapters (SQLite + plain files)
    finetune_threads: int | None = None  # torch threads of a training job; None: half the cores

    n_ctx: int | None = None  # tokens per sequence; None: trained length capped by memory
    n_slots: int = 4  # concurrent sequences per loaded GGUF model
    n_threads: int | None = None  # None: all cores
    n_batch: int = 512
    use_mmap: bool = False  # True: map GGUF weights (faster loads) but truncating a loaded file crashes
    queue_limit: int = 64  # requests waiting per model before 429
    prompt_cache_mb: int = 2048  # host memory per GGUF model for evicted slots' KV cells (0: off)
    disk_prompt_cache_mb: int = Field(default=8192, ge=0)  # disk under data_dir for long prompts' KV cells, all models (0: off)
    speculation_max_draft: int = Field(default=63, ge=0)  # GGUF: n-gram draft tokens verified per step (0: off)
    speculation_row_cost: float = Field(default=0.55, gt=0, le=1)  # a verified row's cost / a one-token step's
    safetensors_dtype: str = "auto"  # auto: as stored, half precision upcast where float32 is measured faster
    idle_ttl_s: float = 1800.0  # unload a model idle this long (0: never)
    memory_budget_mb: int | None = None  # None: 80% of physical memory
    load_wait_s: float = Field(default=300.0, ge=0)  # a model that does not fit waits this long for a busy one to go idle

    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = 16 * 1024 * 1024
    max_upload_bytes: int = 512 * 1024 * 1024  # one uploaded file (POST /v1/files), as OpenAI's per-file limit
    keepalive_interval_s: float = 2.0
    responses_store_size: int = Field(default=256, ge=0)  # stored /v1/responses kept (least recently used evicted)
    anthropic_model_map: dict[str, str] = Field(default_factory=dict)  # claude-* name -> model id; unmapped: first chat model
    default_max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=0)  # output bound of a request that sets none (0: the context end)
    repetition_guard: Literal["cut", "observe", "off"] = "cut"  # runaway repetition: end the choice, only log it, or ignore
    repetition_min_tokens: int = Field(default=DEFAULT_MIN_TOKENS, ge=2)  # a runaway's repeating tail covers this many tokens
    repetition_max_period: int = Field(default=DEFAULT_MAX_PERIOD, ge=1)  # ... of a block at most this long
    repetition_min_repeats: int = Field(default=DEFAULT_MIN_REPEATS, ge=2)  # ... repeated at least this often
    shutdown_grace_s: float = 30.0
    log_level: str = "info"
    upstreams: dict[str, UpstreamTable] = Field(default_factory=dict)  # models served by other servers

    @field_validator("models_dirs", "api_keys", "cors_origins", "discover", mode="before")
    @classmethod
    def _split_env_lists(cls, value: Any, info: ValidationInfo) -> Any:
        """MINERVA_API_KEYS="k1,k2"; MINERVA_MODELS_DIRS="a,b" (or os.pathsep-separated); MINERVA_DISCOVER="" for none."""
        if not isinstance(value, str):
            return value
        if info.field_name == "models_dirs":
            value = value.replace(os.pathsep, ",")
        return [part.strip() for part in value.split(",") if part.strip()]

    @field_validator("models_dirs", mode="after")
    @classmethod
    def _expand_dirs(cls, value: list[Path]) -> list[Path]:
        return [Path(p).expanduser() for p in value]

    @field_validator("discover", mode="after")
    @classmethod
    def _known_stores(cls, value: list[str]) -> list[str]:
        unknown = [store for store in value if store not in DISCOVERY_STORES]
        if unknown:
            raise ValueError(f"unknown discovery store(s) {', '.join(unknown)}; known: {', '.join(DISCOVERY_STORES)}")
        return value

    @field_validator("discover_paths", mode="after")
    @classmethod
    def _expand_store_paths(cls, value: dict[str, list[Path]]) -> dict[str, list[Path]]:
        cls._known_stores(list(value))
        return {store: [Path(p).expanduser() for p in roots] for store, roots in value.items()}

    @field_validator("data_dir", mode="after")
    @classmethod
    def _expand_data_dir(cls, value: Path) -> Path:
        return Path(value).expanduser()

    @field_validator("models", mode="after")
    @classmethod
    def _expand_models(cls, value: dict[str, Path]) -> dict[str, Path]:
        return {k: Path(p).expanduser() for k, p in value.items()}


def parse_model_registration(text: str) -> tuple[str, Path]:
    """Parse a `--model ID=PATH` flag (or a bare PATH, whose id is derived later as '')."""
    if "=" in text:
        model_id, _, path = text.partition("=")
        model_id = model_id.strip()
        if not model_id:
            raise InvalidRequestError(f"--model {text!r}: empty id before '='", param="model")
        return model_id, Path(path.strip()).expanduser()
    return "", Path(text.strip()).expanduser()


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML config file into Settings fields.

    Accepted shape::

        models_dirs = ["~/models"]
        n_slots = 4
        [models]
        my-model = "~/models/x.gguf"
    """
    try:
        data = tomllib.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidRequestError(f"config file {path}: {exc}", param="config") from exc
    models = data.get("models", {})
    if isinstance(models, list):  # [[models]] id = "...", path = "..."
        data["models"] = {m["id"]: m["path"] for m in models if isinstance(m, dict) and "id" in m}
    return data


def build_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings by precedence: explicit overrides (CLI flags) > MINERVA_* env vars > config file."""
    base: dict[str, Any] = {}
    if config_file is not None:
        from_env = Settings().model_fields_set
        base.update({k: v for k, v in load_config_file(config_file).items() if k not in from_env})
        base["config_file"] = config_file
    if overrides.get("upstreams"):  # --upstream flags add to the config file's upstreams
        overrides["upstreams"] = {**base.get("upstreams", {}), **overrides["upstreams"]}
    base.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**base)
