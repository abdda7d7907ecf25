"""Direct preference optimisation of a LoRA adapter: the loss of Rafailov et al. (2023) on chosen/rejected pairs.

The reference policy is the base model itself: every pair's reference log-probabilities are computed
once, before the first step, while the fresh adapter is still the identity (LoRA's B starts at zero).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from minerva.finetune.dataset import Example
from minerva.finetune.tensors import labelled_logits

@dataclass(frozen=True)
class PreferencePair:
    """One preference example: the chosen and rejected sequences and their reference log-probabilities."""

    chosen: Example
    rejected: Example
    reference_chosen: float = 0.0
    reference_rejected: float = 0.0

    @property
    def n_tokens(self) -> int:
        """Tokens both sequences hold (what a step reads)."""
        return len(self.chosen.input_ids) + len(self.rejected.input_ids)


def sequence_logps(model: Any, examples: Sequence[Example], pad_id: int) -> Any:
    """Per example, the summed log-probability of its labelled tokens under the model (a 1-D tensor)."""
    import torch

    logits, targets, trained = labelled_logits(model, examples, pad_id)
    token_logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return torch.zeros(len(examples), dtype=token_logps.dtype).index_add(0, trained.nonzero()[:, 0], token_logps)


def with_reference(model: Any, pairs: Sequence[PreferencePair], batch_size: int, pad_id: int) -> list[PreferencePair]:
    """The pairs with their reference log-probabilities, from the model as it is now (no gradients)."""
    import torch

    done: list[PreferencePair] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start:start + batch_size]
            logps = sequence_logps(model, [p.chosen for p in batch] + [p.rejected for p in batch], pad_id).tolist()
            done += [PreferencePair(p.chosen, p.rejected, logps[i], logps[len(batch) + i]) for i, p in enumerate(batch)]
    model.train()
    return done


def dpo_loss(model: Any, pairs: Sequence[PreferencePair], beta: float, pad_id: int) -> tuple[Any, float]:
    """(mean DPO loss, reward accuracy): how often the chosen output gains more over the reference than the rejected."""
    import torch

    logps = sequence_logps(model, [p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    chosen, rejected = logps[:len(pairs)], logps[len(pairs):]
    reference = torch.tensor([p.reference_chosen - p.reference_rejected for p in pairs], dtype=logps.dtype)
    margins = beta * ((chosen - rejected) - reference)
    loss = -torch.nn.functional.logsigmoid(margins).mean()
    return loss, float((margins > 0).float().mean())


def dpo_step(model: Any, pairs: Sequence[PreferencePair], beta: float, pad_id: int, optimizer: Any, schedule: Any,
             max_grad_norm: float) -> tuple[float, float]:
    """One update on a batch of pairs; its (loss, reward accuracy) before the update."""
    import torch

    loss, accuracy = dpo_loss(model, pairs, beta, pad_id)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], max_grad_norm)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach()), accuracy


def evaluate_pairs(model: Any, pairs: Sequence[PreferencePair], beta: float, batch_size: int, pad_id: int
                   ) -> tuple[float, float]:
    """(mean DPO loss, reward accuracy) over validation pairs."""
    import torch

    total, hits = 0.0, 0.0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start:start + batch_size]
            loss, accuracy = dpo_loss(model, batch, beta, pad_id)
            total, hits = total + float(loss) * len(batch), hits + accuracy * len(batch)
    model.train()
    return total / max(1, len(pairs)), hits / max(1, len(pairs))
