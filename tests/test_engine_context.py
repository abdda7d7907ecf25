"""A context beyond the model's trained length, on request: RoPE (YaRN) scaling with a warning."""

import asyncio
import logging

from minerva.engine.base import GenerationEnd, GenerationRequest, SamplingParams, TokenEvent
from minerva.engine.llamacpp.engine import LlamaCppEngine
from minerva.formats.detect import read_model_info


def test_context_beyond_trained_length_scales_rope_and_warns(smollm2_path, caplog):
    info = read_model_info(smollm2_path)
    with caplog.at_level(logging.WARNING):
        engine = LlamaCppEngine.load(info, n_ctx=2 * info.context_length, n_slots=1, n_threads=2)
    try:
        assert engine.n_ctx == 16384
        assert any("trained" in r.getMessage().lower() or "yarn" in r.getMessage().lower()
                   for r in caplog.records if r.levelno >= logging.WARNING)
        # a prompt longer than the trained context is accepted and generates
        prompt = tuple(engine.tokenize("The sea. " * 2900))
        assert len(prompt) > info.context_length

        async def run() -> tuple[int, GenerationEnd | None]:
            tokens, end = 0, None
            async for event in engine.generate(GenerationRequest(prompt, 4, SamplingParams(temperature=0))):
                if isinstance(event, TokenEvent):
                    tokens += 1
                elif isinstance(event, GenerationEnd):
                    end = event
            return tokens, end

        tokens, end = asyncio.run(run())
        assert end is not None and end.prompt_tokens == len(prompt) and tokens == end.completion_tokens
    finally:
        engine.close()
