"""How a discovered model is described to a person: which store found it, where, and what serves its chat."""

from __future__ import annotations

from minerva.discovery.scan import DiscoveredModel

GGUF_TEMPLATE_USED = "the GGUF's own tokenizer.chat_template (Ollama's template layer is a Go template, not Jinja)"
NO_TEMPLATE = "none: the GGUF has no chat template, and Ollama's Go template layer is not Jinja, so it is not used"


def provenance(model: DiscoveredModel, has_chat_template: bool) -> tuple[tuple[str, str], ...]:
    """Rows for `minerva inspect`: the store, where the tool records the model, its other names and facts."""
    rows = [("found_by", model.store), ("found_at", str(model.origin))]
    if model.aliases:
        rows.append(("also_named", ", ".join(model.aliases)))
    rows += [(f"{model.store}_{key}", value) for key, value in model.facts]
    if model.store == "ollama":
        rows.append(("chat_template_used", GGUF_TEMPLATE_USED if has_chat_template else NO_TEMPLATE))
    return tuple(rows)
