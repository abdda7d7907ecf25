"""llama.cpp's own grammar sampler as a checker: does a GBNF grammar compile, does it accept a text?"""

from __future__ import annotations

import ctypes
import math

import pytest


class GrammarChecker:
    """Runs llama.cpp's grammar sampler over a text's tokens: does the grammar accept the text?"""

    def __init__(self, llama_cpp, model):
        self.llama_cpp = llama_cpp
        self.model = model
        self.vocab = model._model.vocab
        self.eos = llama_cpp.llama_vocab_eos(self.vocab)

    def compiles(self, grammar: str) -> bool:
        sampler = self.llama_cpp.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        if sampler:
            self.llama_cpp.llama_sampler_free(sampler)
        return bool(sampler)

    def _allowed(self, sampler, token: int) -> bool:
        data = (self.llama_cpp.llama_token_data * 1)(self.llama_cpp.llama_token_data(token, 0.0, 0.0))
        candidates = self.llama_cpp.llama_token_data_array(data, 1, -1, False)
        self.llama_cpp.llama_sampler_apply(sampler, ctypes.byref(candidates))
        return not math.isinf(data[0].logit)

    def accepts(self, grammar: str, text: str) -> bool:
        sampler = self.llama_cpp.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        assert sampler, "grammar does not compile"
        try:
            for token in self.model.tokenize(text.encode(), add_bos=False, special=False):
                if not self._allowed(sampler, token):
                    return False
                self.llama_cpp.llama_sampler_accept(sampler, token)
            return self._allowed(sampler, self.eos)
        finally:
            self.llama_cpp.llama_sampler_free(sampler)


@pytest.fixture(scope="module")
def checker(smollm2_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    model = llama_cpp.Llama(str(smollm2_path), vocab_only=True, verbose=False)
    yield GrammarChecker(llama_cpp, model)
    model.close()
