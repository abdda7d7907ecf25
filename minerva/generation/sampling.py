"""The client's sampling → the engine's SamplingParams (llama.cpp's defaults where a field is absent)."""

from __future__ import annotations

from minerva.engine.base import SamplingParams
from minerva.core.requests import Sampling

DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.95
DEFAULT_MIN_P = 0.05


def sampling_params(
    request: Sampling,
    *,
    choice_index: int = 0,
    grammar: str | None = None,
    logprobs: bool = False,
    top_logprobs: int = 0,
) -> SamplingParams:
    """SamplingParams for one choice; choice i of a seeded request uses seed + i so choices differ."""
    seed = None if request.seed is None else (request.seed + choice_index) & 0xFFFFFFFF
    top_k = DEFAULT_TOP_K if request.top_k is None else max(0, request.top_k)
    return SamplingParams(
        temperature=DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
        top_p=DEFAULT_TOP_P if request.top_p is None else request.top_p,
        top_k=top_k,
        min_p=DEFAULT_MIN_P if request.min_p is None else request.min_p,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        repeat_penalty=request.repeat_penalty or 1.0,
        **({} if request.penalty_last_n is None else {"penalty_last_n": request.penalty_last_n}),
        seed=seed,
        logit_bias=tuple(sorted(request.logit_bias)),
        grammar=grammar,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )
