"""Which local model a Messages request names: a registered id, or a claude-* name mapped to one."""

from __future__ import annotations

import logging

from fastapi import Request

from minerva.api.state import server_state
from minerva.core.errors import ModelNotFoundError

logger = logging.getLogger(__name__)

ALIAS_PREFIX = "claude"
"""Names Claude Code sends for its main and side tasks (claude-sonnet-…, claude-haiku-…) unless told otherwise."""


def _logged_aliases(request: Request) -> set[str]:
    """The claude-* names this app has already logged a mapping for (kept on the app, not globally)."""
    logged = getattr(request.app.state, "anthropic_logged_aliases", None)
    if logged is None:
        logged = set()
        request.app.state.anthropic_logged_aliases = logged
    return logged


def resolve_model(request: Request, name: str) -> str:
    """The registered model id `name` reaches: itself, else for claude-* the configured map's entry or else
    the first registered chat model (logged once per name); anything else is a 404."""
    state = server_state(request)
    registry = state.registry
    try:
        return registry.get(name).id
    except ModelNotFoundError:
        if not name.startswith(ALIAS_PREFIX):
            raise
    mapped = state.settings.anthropic_model_map.get(name)
    if mapped is not None:
        target, why = registry.get(mapped).id, "anthropic_model_map"
    else:
        models = registry.list()
        chat = next((m for m in models if m.info.kind == "chat"), None) or \
            next((m for m in models if m.info.kind != "embedding"), None)
        if chat is None:
            raise ModelNotFoundError(name)
        target, why = chat.id, "the first registered chat model; set anthropic_model_map to choose"
    logged = _logged_aliases(request)
    if name not in logged:
        logged.add(name)
        logger.info("anthropic: model %r is served by %r (%s)", name, target, why)
    return target
