"""Per-sequence sampling on llama.cpp's sampler chains, plus log-probabilities from raw logits."""

from __future__ import annotations

import ctypes
import logging
import math
from collections.abc import Sequence

import llama_cpp as llama
import numpy as np

from minerva.engine.base import SamplingParams
from minerva.engine.sampled import WHOLE_CONTEXT_WINDOW, SampledToken, resolve_seed
from minerva.core.errors import InvalidRequestError

logger = logging.getLogger(__name__)

_CANDIDATE_DTYPE = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
class SequenceSampler:
    """One sequence's sampler chain and the candidate buffer it samples from (not thread-safe)."""

    def __init__(self, chain: llama.llama_sampler_p, n_vocab: int, constrained: bool = False,
                 greedy_bias: dict[int, float] | None = None):
        self._chain = chain
        self.constrained = constrained  # a grammar can leave no token at all: sample from numpy then
        self._n_vocab = n_vocab
        self._candidates: np.ndarray | None = None  # allocated on first use by `sample`
        # plain greedy (at most a logit bias first): an argmax in numpy, 50x cheaper than the C chain,
        # which copies the whole vocabulary into a candidate array for every token
        self._greedy = None
        if greedy_bias is not None:
            ids = np.fromiter(greedy_bias.keys(), dtype=np.int64, count=len(greedy_bias))
            self._greedy = (ids, np.fromiter(greedy_bias.values(), dtype=np.float32, count=len(greedy_bias)))

    @classmethod
    def build(
        cls,
        vocab: llama.llama_vocab_p,
        n_vocab: int,
        params: SamplingParams,
        prompt_tail: Sequence[int] = (),
    ) -> SequenceSampler:
        """A chain: logit bias, penalties, grammar, top-k, top-p, min-p, temperature, then dist or greedy.

        `prompt_tail` seeds the penalty window (as llama-server does); the grammar only sees output.
        Raises InvalidRequestError for a grammar llama.cpp cannot parse.
        """
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        try:
            _add_stages(chain, vocab, n_vocab, params, prompt_tail)
        except BaseException:
            llama.llama_sampler_free(chain)
            raise
        return cls(chain, n_vocab, constrained=bool(params.grammar), greedy_bias=_plain_greedy_bias(params))

    def sample(self, logits: np.ndarray) -> SampledToken:
        """Apply the chain to one position's raw logits, accept the chosen token and return it."""
        if self._candidates is None:
            self._ids = np.arange(self._n_vocab, dtype=np.int32)
            self._candidates = np.zeros(self._n_vocab, dtype=_CANDIDATE_DTYPE)
            self._data = self._candidates.ctypes.data_as(llama.llama_token_data_p)
            self._array = llama.llama_token_data_array(data=self._data, size=self._n_vocab, selected=-1, sorted=False)
            self._array_ref = ctypes.byref(self._array)
        cand = self._candidates
        cand["id"] = self._ids  # the chain reorders candidates in place
        cand["logit"] = logits
        cand["p"] = 0.0
        arr = self._array
        arr.data = self._data
        arr.size = self._n_vocab
        arr.selected = -1
        arr.sorted = False
        llama.llama_sampler_apply(self._chain, self._array_ref)
        selected = arr.selected
        if selected < 0 or selected >= arr.size:
            return SampledToken(-1, dead_end=True)
        chosen = self._data[selected]
        if not math.isfinite(chosen.logit):
            return SampledToken(int(chosen.id), dead_end=True)
        token = int(chosen.id)
        llama.llama_sampler_accept(self._chain, token)
        return SampledToken(token)

    def sample_row(self, ctx: llama.llama_context_p, row: int) -> SampledToken:
        """Sample and accept straight from the context's logits row (unconstrained chains only).

        llama.cpp asserts that something was selected, which an unconstrained chain always does.
        """
        if self._greedy is None:
            return SampledToken(int(llama.llama_sampler_sample(self._chain, ctx, row)))
        logits = np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx, row), shape=(self._n_vocab,))
        return SampledToken(greedy_choice(logits, *self._greedy))

    def free(self) -> None:
        """Release the native chain (idempotent)."""
        if self._chain is not None:
            llama.llama_sampler_free(self._chain)
            self._chain = None


def greedy_choice(logits: np.ndarray, ids: np.ndarray, bias: np.ndarray) -> int:
    """llama.cpp's logit-bias + greedy stages on one logits row (left as it was found)."""
    if not ids.size:
        return int(logits.argmax())  # the first maximum, as llama.cpp's greedy stage picks
    raw = logits[ids]
    logits[ids] = raw + bias  # float32 addition, as the logit-bias stage does
    token = int(logits.argmax())
    logits[ids] = raw
    return token


def _penalised(params: SamplingParams) -> bool:
    return params.penalty_last_n != 0 and (
        params.repeat_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
    )


def _plain_greedy_bias(params: SamplingParams) -> dict[int, float] | None:
    """The per-token bias when the chain is just (logit bias +) greedy, else None."""
    if params.temperature > 0.0 or params.grammar or _penalised(params):
        return None
    bias: dict[int, float] = {}
    for token, value in params.logit_bias:
        bias[token] = float(np.float32(bias.get(token, 0.0)) + np.float32(value))
    return bias


def _add_stages(
    chain: llama.llama_sampler_p,
    vocab: llama.llama_vocab_p,
    n_vocab: int,
    params: SamplingParams,
    prompt_tail: Sequence[int],
) -> None:
    add = llama.llama_sampler_chain_add
    if params.logit_bias:
        biases = (llama.llama_logit_bias * len(params.logit_bias))()
        for i, (token, bias) in enumerate(params.logit_bias):
            if not 0 <= token < n_vocab:
                raise InvalidRequestError(f"logit_bias names token {token}, outside the vocabulary", param="logit_bias")
            biases[i].token = token
            biases[i].bias = bias
        add(chain, llama.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases))
    if _penalised(params):
        window = params.penalty_last_n if params.penalty_last_n > 0 else WHOLE_CONTEXT_WINDOW
        penalties = llama.llama_sampler_init_penalties(
            n_vocab, window, params.repeat_penalty, params.frequency_penalty, params.presence_penalty
        )
        for token in list(prompt_tail)[-window:]:
            llama.llama_sampler_accept(penalties, token)
        add(chain, penalties)
    if params.grammar:
        grammar = llama.llama_sampler_init_grammar(vocab, params.grammar.encode("utf-8"), b"root")
        if not grammar:
            raise InvalidRequestError("The output constraint (grammar) could not be parsed.", param="response_format")
        add(chain, grammar)
    if params.temperature <= 0.0:
        add(chain, llama.llama_sampler_init_greedy())
        return
    if params.top_k > 0:
        add(chain, llama.llama_sampler_init_top_k(params.top_k))
    if 0.0 < params.top_p < 1.0:
        add(chain, llama.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0.0:
        add(chain, llama.llama_sampler_init_min_p(params.min_p, 1))
    add(chain, llama.llama_sampler_init_temp(params.temperature))
    add(chain, llama.llama_sampler_init_dist(resolve_seed(params.seed)))


def token_logprobs(logits: np.ndarray, token_id: int, top_n: int) -> tuple[float, list[tuple[int, float]]]:
    """Log-softmax of raw logits: the chosen token's logprob and the top_n (id, logprob), best first."""
    x = logits.astype(np.float64, copy=False)
    peak = float(np.max(x))
    log_norm = peak + math.log(float(np.sum(np.exp(x - peak))))
    chosen = float(x[token_id]) - log_norm
    if top_n <= 0:
        return chosen, []
    top_n = min(top_n, x.shape[0])
    idx = np.argpartition(-x, top_n - 1)[:top_n]
    idx = idx[np.argsort(-x[idx], kind="stable")]
    return chosen, [(int(i), float(x[i]) - log_norm) for i in idx]
