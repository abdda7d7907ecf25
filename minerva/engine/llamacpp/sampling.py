"""Per-sequence sampling on llama.cpp's sampler chains, plus log-probabilities from raw logits."""

from __future__ import annotations

import ctypes
import logging
import math
from collections.abc import Sequence

import llama_cpp as llama
import numpy as np

from minerva.engine.base import SamplingParams
from minerva.engine.llamacpp.grammar import CANDIDATE_DTYPE, GrammarGate
from minerva.engine.sampled import WHOLE_CONTEXT_WINDOW, SampledToken, resolve_seed
from minerva.core.errors import InvalidRequestError

logger = logging.getLogger(__name__)

class SequenceSampler:
    """One sequence's sampler chain, its grammar and the candidate buffer it samples from (not thread-safe).

    With a grammar, the chain picks first and the grammar checks only that token; a token it
    rejects is resampled from the candidates the grammar masked (llama-server does the same). For
    greedy chains the pick is the same either way; sampled ones keep the constrained distribution
    (P(t) = p(t) + (1 - p(G)) p(t) / p(G) = p(t) / p(G) before truncation).
    """

    def __init__(self, chain: llama.llama_sampler_p, n_vocab: int, grammar: GrammarGate | None = None,
                 greedy_bias: dict[int, float] | None = None, grammar_first: bool = False):
        self._chain = chain
        self._grammar = grammar
        self._grammar_first = grammar_first  # mask the vocabulary every step (the reference path)
        self._n_vocab = n_vocab
        self._candidates: np.ndarray | None = None  # allocated on first use by `sample`
        # plain greedy (at most a logit bias first): an argmax in numpy, 50x cheaper than the C chain,
        # which copies the whole vocabulary into a candidate array for every token
        self._greedy = None
        if greedy_bias is not None:
            ids = np.fromiter(greedy_bias.keys(), dtype=np.int64, count=len(greedy_bias))
            self._greedy = (ids, np.fromiter(greedy_bias.values(), dtype=np.float32, count=len(greedy_bias)))

    @property
    def constrained(self) -> bool:
        """Whether a grammar constrains the output (it can leave no token at all: sample from logits then)."""
        return self._grammar is not None

    @classmethod
    def build(
        cls,
        vocab: llama.llama_vocab_p,
        n_vocab: int,
        params: SamplingParams,
        prompt_tail: Sequence[int] = (),
        *,
        grammar_first: bool = False,
    ) -> SequenceSampler:
        """A chain: logit bias, penalties, top-k, top-p, min-p, temperature, then dist or greedy; the
        grammar beside it.

        `prompt_tail` seeds the penalty window (as llama-server does); the grammar only sees output.
        grammar_first: mask the whole vocabulary with the grammar before every pick (slower, same greedy output).
        Raises InvalidRequestError for a grammar llama.cpp cannot parse.
        """
        grammar = GrammarGate(vocab, params.grammar) if params.grammar else None
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        try:
            _add_stages(chain, n_vocab, params, prompt_tail)
        except BaseException:
            llama.llama_sampler_free(chain)
            if grammar is not None:
                grammar.free()
            raise
        return cls(chain, n_vocab, grammar, greedy_bias=_plain_greedy_bias(params), grammar_first=grammar_first)

    def sample(self, logits: np.ndarray) -> SampledToken:
        """Pick one position's next token from its raw logits under the grammar, accept it and return it."""
        grammar = self._grammar
        if grammar is not None and not self._grammar_first:
            token = self._pick(logits)
            if token >= 0 and grammar.allows(token):
                self._accept(token)
                return SampledToken(token)
        return self._pick_masked(logits)

    def sample_row(self, ctx: llama.llama_context_p, row: int) -> SampledToken:
        """Sample and accept straight from the context's logits row (unconstrained chains only).

        llama.cpp asserts that something was selected, which an unconstrained chain always does.
        """
        if self._greedy is None:
            return SampledToken(int(llama.llama_sampler_sample(self._chain, ctx, row)))
        logits = np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx, row), shape=(self._n_vocab,))
        return SampledToken(greedy_choice(logits, *self._greedy))

    def free(self) -> None:
        """Release the native chain and grammar (idempotent)."""
        if self._chain is not None:
            llama.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar is not None:
            self._grammar.free()

    def _pick(self, logits: np.ndarray) -> int:
        """The chain's choice without the grammar (nothing accepted); -1 when it chose nothing."""
        if self._greedy is not None:
            return greedy_choice(logits, *self._greedy)
        arr = self._fill(logits)
        llama.llama_sampler_apply(self._chain, self._array_ref)
        selected = arr.selected
        if selected < 0 or selected >= arr.size or not math.isfinite(self._data[selected].logit):
            return -1
        return int(self._data[selected].id)

    def _pick_masked(self, logits: np.ndarray) -> SampledToken:
        """The chain's choice among the tokens the grammar allows, accepted."""
        arr = self._fill(logits)
        if self._grammar is not None:
            self._grammar.mask(self._array_ref)
        llama.llama_sampler_apply(self._chain, self._array_ref)
        selected = arr.selected
        if selected < 0 or selected >= arr.size:
            return SampledToken(-1, dead_end=True)
        chosen = self._data[selected]
        if not math.isfinite(chosen.logit):
            return SampledToken(int(chosen.id), dead_end=True)
        token = int(chosen.id)
        self._accept(token)
        return SampledToken(token)

    def _accept(self, token: int) -> None:
        llama.llama_sampler_accept(self._chain, token)
        if self._grammar is not None:
            self._grammar.accept(token)

    def _fill(self, logits: np.ndarray) -> llama.llama_token_data_array:
        """The candidate array holding every token with its raw logit, unsorted."""
        if self._candidates is None:
            self._ids = np.arange(self._n_vocab, dtype=np.int32)
            self._candidates = np.zeros(self._n_vocab, dtype=CANDIDATE_DTYPE)
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
        return arr


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
    """The per-token bias when the chain is just (logit bias +) greedy, else None (a grammar is beside it)."""
    if params.temperature > 0.0 or _penalised(params):
        return None
    bias: dict[int, float] = {}
    for token, value in params.logit_bias:
        bias[token] = float(np.float32(bias.get(token, 0.0)) + np.float32(value))
    return bias


def _add_stages(
    chain: llama.llama_sampler_p,
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
