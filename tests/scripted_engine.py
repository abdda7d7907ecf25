"""A scripted engine behind the real server stack, for protocol edge cases only (never the real path)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from minerva.engine.base import EngineStats, GenerationEnd, GenerationRequest, PromptProcessed, TokenEvent
from minerva.formats.model_info import ModelInfo


@dataclass
class Script:
    """What the engine answers: byte pieces, a delay before the first, an optional failure."""

    pieces: list[bytes]
    first_delay_s: float = 0.0
    piece_delay_s: float = 0.0
    fail_after: int | None = None
    failure: Exception | None = None
    gate: threading.Event | None = None  # when set, nothing is generated until the test opens it


@dataclass
class ScriptedEngine:
    """Tokenizes by characters and replays scripts chosen from the prompt text."""

    info: ModelInfo
    choose: Callable[[str, int], Script]
    n_ctx: int = 1_000_000  # one token per character, so room for real client prompts
    bos_token: str = ""
    eos_token: str = "<|im_end|>"
    calls: int = 0
    cancelled: int = 0
    prompts: list[str] = field(default_factory=list)

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def token_piece(self, token_id: int) -> bytes:
        return chr(token_id).encode()

    async def generate(self, request: GenerationRequest) -> AsyncIterator:
        prompt = "".join(chr(t) for t in request.prompt_tokens)
        self.prompts.append(prompt)
        script = self.choose(prompt, self.calls)
        self.calls += 1
        finished = False
        try:
            yield PromptProcessed(len(request.prompt_tokens), 0)
            if script.gate is not None:
                await asyncio.to_thread(script.gate.wait, 60)
            await asyncio.sleep(script.first_delay_s)
            for index, piece in enumerate(script.pieces[: request.max_tokens]):
                if script.fail_after is not None and index == script.fail_after:
                    raise script.failure or RuntimeError("scripted failure")
                yield TokenEvent(index, piece)
                await asyncio.sleep(script.piece_delay_s)
            reason = "length" if len(script.pieces) > request.max_tokens else "stop"
            finished = True
            yield GenerationEnd(reason, len(request.prompt_tokens), min(len(script.pieces), request.max_tokens))
        except (GeneratorExit, asyncio.CancelledError):
            if not finished:
                self.cancelled += 1
            raise

    async def embed(self, inputs):
        raise NotImplementedError

    def stats(self) -> EngineStats:
        return EngineStats(active_slots=0, total_slots=1, queued=0, n_ctx=self.n_ctx)

    def close(self) -> None:
        pass


def scripted_loader(choose: Callable[[str, int], Script]):
    """An EngineLoader for create_app(loader=...) that builds ScriptedEngines."""
    engines: list[ScriptedEngine] = []

    def load(model, settings) -> ScriptedEngine:
        engine = ScriptedEngine(model.info, choose)
        engines.append(engine)
        return engine

    load.engines = engines  # type: ignore[attr-defined]
    return load
