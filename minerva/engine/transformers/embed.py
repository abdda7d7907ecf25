"""Sentence embeddings with transformers, pooled and normalised the way sentence-transformers does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

POOLING_MODES = frozenset({"mean", "cls", "max", "last", "mean_sqrt_len", "weighted_mean"})


@dataclass(frozen=True)
class EmbeddingRecipe:
    """How token states become one vector: the pooling mode and whether to L2-normalise."""

    pooling: str = "mean"
    normalize: bool = False
    batch_size: int = 32  # sentence-transformers' default encode batch


def pool_hidden_states(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """[batch, seq, dim] states and a [batch, seq] 0/1 mask → [batch, dim] (right-padded batches)."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    lengths = mask.sum(dim=1)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "last":
        return hidden[torch.arange(hidden.shape[0]), lengths - 1]
    if mode == "max":
        return hidden.masked_fill(weights == 0, -1e9).max(dim=1).values
    if mode == "weighted_mean":
        positions = torch.arange(1, hidden.shape[1] + 1, dtype=hidden.dtype).view(1, -1, 1)
        weights = weights * positions
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    summed = (hidden * weights).sum(dim=1)
    counts = weights.sum(dim=1).clamp(min=1e-9)
    if mode == "mean_sqrt_len":
        return summed / counts.sqrt()
    return summed / counts


class SentenceEmbedder:
    """A transformers encoder plus a recipe: token-id lists in, one vector each out (not thread-safe)."""

    def __init__(self, model: Any, recipe: EmbeddingRecipe, pad_token_id: int):
        self._model = model
        self._recipe = recipe
        self._pad = pad_token_id

    def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """Batched by length like sentence-transformers' encode (longest first), in input order."""
        order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
        out: list[list[float] | None] = [None] * len(inputs)
        size = self._recipe.batch_size
        for start in range(0, len(order), size):
            batch_ids = order[start:start + size]
            vectors = self._embed_batch([inputs[i] for i in batch_ids])
            for index, vector in zip(batch_ids, vectors):
                out[index] = vector
        return out  # type: ignore[return-value]

    def _embed_batch(self, batch: list[list[int]]) -> list[list[float]]:
        width = max(len(tokens) for tokens in batch)
        ids = torch.full((len(batch), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, tokens in enumerate(batch):
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, : len(tokens)] = 1
        with torch.inference_mode():
            hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = pool_hidden_states(hidden.float(), mask, self._recipe.pooling)
            if self._recipe.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.tolist()

