"""An engine seen through one LoRA adapter: a fine-tuned model served by its base model's engine."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from minerva.engine.base import Engine, GenerationEvent, GenerationRequest


class AdaptedEngine:
    """Delegates to the base engine; every generation it starts carries the adapter."""

    def __init__(self, engine: Engine, adapter: str):
        self._engine = engine
        self.adapter = adapter

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """The base engine's generation with this adapter applied."""
        return self._engine.generate(dataclasses.replace(request, adapter=self.adapter))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)
