"""The OpenCode provider block for this server's models (so users paste it, not guess it)."""

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
