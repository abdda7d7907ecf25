"""Fill-in-the-middle: the model's own FIM marker tokens, and the prompt they frame (prefix, suffix, then the
model writes the middle)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from minerva.core.errors import InvalidRequestError
from minerva.engine.base import Engine


@dataclass(frozen=True)
class FimFormat:
    """One family's FIM markers: the prompt is prefix marker, prefix, suffix marker, suffix, middle marker."""

    prefix: str
    suffix: str
    middle: str

    @property
    def markers(self) -> tuple[str, str, str]:
        """The three marker texts, in prompt order."""
        return self.prefix, self.suffix, self.middle


FIM_FORMATS = (
    FimFormat("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder, CodeGemma
    FimFormat("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder 1/2, SantaCoder, Granite Code
    FimFormat("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # DeepSeek-Coder
    FimFormat("<|fim_begin|>", "<|fim_hole|>", "<|fim_end|>"),  # DeepSeek-Coder-V2 exports
)
"""The FIM markers of the code-model families that ship them as tokens, all in prefix-suffix-middle order."""


def fim_format(has_token: Callable[[str], bool]) -> FimFormat | None:
    """The first known FIM format whose three markers are all tokens of the vocabulary, else None."""
    return next((fmt for fmt in FIM_FORMATS if all(has_token(marker) for marker in fmt.markers)), None)


def engine_fim_format(engine: Engine) -> FimFormat | None:
    """The FIM format of a loaded model: each marker must read as one token when special text is parsed."""
    return fim_format(lambda marker: len(engine.tokenize(marker, add_special=False, parse_special=True)) == 1)


def fim_prompt_tokens(engine: Engine, prefix: str, suffix: str, model_id: str) -> list[int]:
    """The FIM prompt of a text before and after the insertion point (BOS first where the model wants one);
    a 400 when the model has no FIM tokens."""
    fmt = engine_fim_format(engine)
    if fmt is None:
        raise InvalidRequestError(
            f"The model '{model_id}' has no fill-in-the-middle tokens (such as <fim_prefix>, <fim_suffix>, "
            "<fim_middle>), so it cannot complete between a prompt and a suffix. Send the prompt without a "
            "suffix, or use a code model trained for fill-in-the-middle.", param="suffix")
    pre, suf, mid = (engine.tokenize(marker, add_special=False, parse_special=True) for marker in fmt.markers)
    lead = engine.tokenize("", add_special=True, parse_special=False)[:1]
    if not (lead and engine.bos_token and engine.token_piece(lead[0]) == engine.bos_token.encode()):
        lead = []
    text = [engine.tokenize(part, add_special=False, parse_special=False) for part in (prefix, suffix)]
    return [*lead, *pre, *text[0], *suf, *text[1], *mid]
