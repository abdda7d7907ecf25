"""What each coding agent needs to run on this server's models (so users paste it, not guess it)."""

from __future__ import annotations

from minerva.registry import RegisteredModel

DEFAULT_CONTEXT = 4096


def opencode_config(models: list[RegisteredModel], base_url: str, provider: str = "minerva") -> dict:
    """An opencode.json dict: one provider with every chat model and its real context limit."""
    chat_models = [m for m in models if m.info.kind != "embedding"]
    entries = {}
    for model in chat_models:
        context = model.info.context_length or DEFAULT_CONTEXT
        entries[model.id] = {
            "name": model.info.name or model.id,
            "tool_call": True,
            "limit": {"context": context, "output": max(256, context // 4)},
        }
    config: dict = {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            provider: {
                "npm": "@ai-sdk/openai-compatible",
                "name": "minerva (local)",
                "options": {"baseURL": base_url, "apiKey": "sk-local"},
                "models": entries,
            }
        },
        "autoupdate": False,
        "share": "disabled",
    }
    if chat_models:
        config["model"] = f"{provider}/{chat_models[0].id}"
        config["small_model"] = f"{provider}/{chat_models[0].id}"
    return config


def _chat_models(models: list[RegisteredModel]) -> list[RegisteredModel]:
    return [m for m in models if m.info.kind != "embedding"]


def claude_code_env(models: list[RegisteredModel], root_url: str) -> dict[str, str]:
    """Environment variables for Claude Code: the server root (it appends /v1/messages) and the model for
    every role, so none of its side tasks asks for a claude-* model this server does not have."""
    chat = _chat_models(models)
    model = chat[0].id if chat else "MODEL_ID"
    return {
        "ANTHROPIC_BASE_URL": root_url,
        "ANTHROPIC_API_KEY": "sk-local",
        "ANTHROPIC_MODEL": model,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": model,
        "ANTHROPIC_DEFAULT_SONNET_MODEL": model,
        "ANTHROPIC_DEFAULT_OPUS_MODEL": model,
        "CLAUDE_CODE_SUBAGENT_MODEL": model,
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }


def codex_config_toml(models: list[RegisteredModel], base_url: str, provider: str = "minerva") -> str:
    """A ~/.codex/config.toml for Codex on this server (Responses API; the key comes from MINERVA_KEY)."""
    chat = _chat_models(models)
    model = chat[0].id if chat else "MODEL_ID"
    context = (chat[0].info.context_length if chat else None) or DEFAULT_CONTEXT
    return "\n".join([
        f'model = "{model}"',
        f'model_provider = "{provider}"',
        f"model_context_window = {context}",
        "",
        f"[model_providers.{provider}]",
        'name = "minerva (local)"',
        f'base_url = "{base_url}"',
        'wire_api = "responses"',
        'env_key = "MINERVA_KEY"',
        "",
    ])
