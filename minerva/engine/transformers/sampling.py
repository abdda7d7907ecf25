"""Per-sequence sampling in torch, in llama.cpp's order: bias, penalties, grammar, top-k, top-p, min-p, temperature."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from minerva.engine.base import SamplingParams
from minerva.engine.sampled import WHOLE_CONTEXT_WINDOW, SampledToken, resolve_seed
from minerva.core.errors import InvalidRequestError

if TYPE_CHECKING:  # llguidance is imported only when a request carries a grammar
    from minerva.engine.transformers.grammar import GrammarConstraint


class TorchSampler:
    """One sequence's sampling state: its generator, penalty window and grammar (not thread-safe)."""

    def __init__(self, params: SamplingParams, n_vocab: int, prompt: Sequence[int],
                 grammar: GrammarConstraint | None = None):
        self.params = params
        self.grammar = grammar
        self._n_vocab = n_vocab
        self._generator = torch.Generator().manual_seed(resolve_seed(params.seed))
        for token, _ in params.logit_bias:
            if not 0 <= token < n_vocab:
                raise InvalidRequestError(f"logit_bias names token {token}, outside the vocabulary", param="logit_bias")
        self._bias_ids = torch.tensor([t for t, _ in params.logit_bias], dtype=torch.long)
        self._bias_values = torch.tensor([b for _, b in params.logit_bias], dtype=torch.float32)
        self._penalize = params.penalty_last_n != 0 and (
            params.repeat_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
        )
        window = params.penalty_last_n if params.penalty_last_n > 0 else WHOLE_CONTEXT_WINDOW
        self._history: deque[int] = deque(list(prompt)[-window:] if self._penalize else (), maxlen=window)

    def choose(self, logits: torch.Tensor) -> SampledToken:
        """Pick the next token from one position's raw logits (1-D float32) and remember it."""
        params = self.params
        x = logits.clone()
        if len(self._bias_ids):
            x.index_add_(0, self._bias_ids, self._bias_values)
        if self._penalize and self._history:
            self._apply_penalties(x)
        if self.grammar is not None:
            self.grammar.mask(x)
        if params.temperature <= 0.0:
            token = int(torch.argmax(x))
            if not math.isfinite(float(x[token])):
                return SampledToken(token, dead_end=True)
            return self._accept(token)
        ids = None
        if 0 < params.top_k < x.shape[0]:
            x, ids = torch.topk(x, params.top_k)
        if not math.isfinite(float(x.max())):
            return SampledToken(-1, dead_end=True)
        if 0.0 < params.top_p < 1.0 or params.min_p > 0.0:
            x, ids = self._nucleus(x, ids)
        probs = torch.softmax(x / params.temperature, dim=-1)
        picked = int(torch.multinomial(probs, 1, generator=self._generator))
        return self._accept(int(ids[picked]) if ids is not None else picked)

    def _apply_penalties(self, x: torch.Tensor) -> None:
        params = self.params
        tokens, counts = torch.tensor(list(self._history), dtype=torch.long).unique(return_counts=True)
        keep = tokens < x.shape[0]
        tokens, counts = tokens[keep], counts[keep].to(torch.float32)
        values = x[tokens]
        if params.repeat_penalty != 1.0:
            values = torch.where(values > 0, values / params.repeat_penalty, values * params.repeat_penalty)
        values = values - counts * params.frequency_penalty - params.presence_penalty
        x[tokens] = values

    def _nucleus(self, x: torch.Tensor, ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.params
        x, order = torch.sort(x, descending=True)
        ids = order if ids is None else ids[order]
        probs = torch.softmax(x, dim=-1)
        keep = x.shape[0]
        if 0.0 < params.top_p < 1.0:
            cumulative = torch.cumsum(probs, dim=-1)
            keep = min(keep, int(torch.searchsorted(cumulative, torch.tensor([params.top_p]))) + 1)
        if params.min_p > 0.0:
            keep = min(keep, max(1, int((probs >= params.min_p * probs[0]).sum())))
        return x[:keep], ids[:keep]

    def _accept(self, token: int) -> SampledToken:
        if self.grammar is not None and not self.grammar.accept(token):
            return SampledToken(token, dead_end=True)
        if self._penalize:
            self._history.append(token)
        return SampledToken(token)


def token_logprobs(logits: torch.Tensor, token_id: int, top_n: int) -> tuple[float, list[tuple[int, float]]]:
    """Log-softmax of raw logits: the chosen token's logprob and the top_n (id, logprob), best first."""
    logp = torch.log_softmax(logits.to(torch.float64), dim=-1)
    chosen = float(logp[token_id])
    if top_n <= 0:
        return chosen, []
    values, ids = torch.topk(logp, min(top_n, logp.shape[0]))
    return chosen, [(int(i), float(v)) for i, v in zip(ids, values)]
