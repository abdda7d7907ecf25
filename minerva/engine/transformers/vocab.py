"""Raw bytes of every token of a Hugging Face tokenizer (byte-level BPE, SentencePiece or WordPiece)."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_SENTENCEPIECE_SPACE = "\u2581"


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's printable-character alphabet for bytes, inverted (character → byte)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _decoder_types(spec: Any) -> set[str]:
    if not isinstance(spec, dict):
        return set()
    types = {str(spec.get("type"))}
    for child in spec.get("decoders") or ():
        types |= _decoder_types(child)
    return types


def _byte_level_piece(token: str) -> bytes:
    table = _byte_level_decoder()
    try:
        return bytes(table[c] for c in token)
    except KeyError:
        return token.encode("utf-8")


def _sentencepiece_piece(token: str) -> bytes:
    match = _BYTE_TOKEN.match(token)
    if match:
        return bytes([int(match[1], 16)])
    return token.replace(_SENTENCEPIECE_SPACE, " ").encode("utf-8")


def _wordpiece_piece(token: str) -> bytes:
    return token[2:].encode("utf-8") if token.startswith("##") else (" " + token).encode("utf-8")


def token_pieces(tokenizer: Any, n_vocab: int) -> list[bytes]:
    """The bytes each token id stands for (added/special tokens as their text); b"" past the vocab."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = json.loads(backend.to_str()).get("decoder") if backend is not None else None
    kinds = _decoder_types(decoder)
    if "ByteLevel" in kinds:
        convert = _byte_level_piece
    elif kinds & {"ByteFallback", "Metaspace", "Replace"}:
        convert = _sentencepiece_piece
    elif "WordPiece" in kinds:
        convert = _wordpiece_piece
    else:
        def convert(token: str) -> bytes:
            return tokenizer.convert_tokens_to_string([token]).encode("utf-8")
    added = {int(i): t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    tokens = tokenizer.convert_ids_to_tokens(list(range(min(n_vocab, len(tokenizer)))))
    pieces: list[bytes] = []
    for token_id in range(n_vocab):
        if token_id in added:
            pieces.append(added[token_id].encode("utf-8"))
        elif token_id < len(tokens) and tokens[token_id] is not None:
            pieces.append(convert(tokens[token_id]))
        else:
            pieces.append(b"")
    return pieces
