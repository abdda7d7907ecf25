"""Training examples as padded tensors, and the output logits of their labelled tokens only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from minerva.finetune.dataset import IGNORE_INDEX, Example


def batch_tensors(examples: Sequence[Example], pad_id: int) -> tuple[Any, Any, Any]:
    """(input ids, labels, attention mask) of the examples, right-padded to the longest."""
    import torch

    width = max(len(example.input_ids) for example in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return ids, labels, mask


def labelled_logits(model: Any, examples: Sequence[Example], pad_id: int) -> tuple[Any, Any, Any]:
    """(logits at labelled positions, their target tokens, the (batch, position) mask of those positions).

    The output layer and softmax run only where a label is, which most of a chat's tokens are not.
    """
    ids, labels, mask = batch_tensors(examples, pad_id)
    base = model.get_base_model()
    hidden = base.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    trained = targets != IGNORE_INDEX
    return base.get_output_embeddings()(hidden[trained]), targets[trained], trained
