"""A sequence's grammar as a gate: check one chosen token, or mask a whole candidate array."""

from __future__ import annotations

import ctypes
import math

import llama_cpp as llama
import numpy as np

from minerva.core.errors import InvalidRequestError

CANDIDATE_DTYPE = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # llama_token_data


class GrammarGate:
    """llama.cpp's grammar sampler outside the chain, so a token can be checked alone (not thread-safe).

    Checking the token the chain chose costs one candidate; masking the vocabulary costs every
    token's piece matched against the grammar's stacks (15 ms a step on SmolLM2's 49k tokens here).
    """

    def __init__(self, vocab: llama.llama_vocab_p, grammar: str):
        self._sampler = llama.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
        if not self._sampler:
            raise InvalidRequestError("The output constraint (grammar) could not be parsed.", param="response_format")
        self._one = np.zeros(1, dtype=CANDIDATE_DTYPE)
        self._one_data = self._one.ctypes.data_as(llama.llama_token_data_p)
        self._one_array = llama.llama_token_data_array(data=self._one_data, size=1, selected=-1, sorted=False)

    def allows(self, token: int) -> bool:
        """Whether the grammar accepts `token` next (the grammar's state is unchanged)."""
        one, arr = self._one, self._one_array
        one["id"] = token
        one["logit"] = 0.0
        one["p"] = 0.0
        arr.data, arr.size, arr.selected, arr.sorted = self._one_data, 1, -1, False
        llama.llama_sampler_apply(self._sampler, ctypes.byref(arr))
        return math.isfinite(float(one["logit"][0]))

    def mask(self, candidates: ctypes.c_void_p) -> None:
        """Set the logit of every candidate the grammar rejects to -inf (a llama_token_data_array pointer)."""
        llama.llama_sampler_apply(self._sampler, candidates)

    def accept(self, token: int) -> None:
        """Advance the grammar past `token`."""
        llama.llama_sampler_accept(self._sampler, token)

    def free(self) -> None:
        """Release the native sampler (idempotent)."""
        if self._sampler is not None:
            llama.llama_sampler_free(self._sampler)
            self._sampler = None
