"""LoRA fine-tuning of a causal LM on chat examples with PEFT over transformers, on CPU torch.

``train`` runs in the calling process (the job runner gives it a worker process). It reports one
TrainingProgress per optimizer step and one CheckpointSaved per epoch, and checks ``should_stop``
before every step, so a cancel takes effect within one step. A GGUF base is dequantised to float32 by
transformers (``gguf_file``); the adapter targets every linear layer with plain LoRA (no DoRA or
rsLoRA, no embedding or output layer) so that llama.cpp can load it after conversion.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minerva.finetune.dataset import (
    ChatFormat,
    Example,
    TrainingDataError,
    count_tokens,
    training_examples,
)
from minerva.finetune.dpo import PreferencePair, dpo_step, evaluate_pairs, with_reference
from minerva.finetune.hyperparameters import DEFAULT_BETA
from minerva.finetune.preference import preference_chats
from minerva.finetune.tensors import labelled_logits
from minerva.formats.detect import read_model_info

logger = logging.getLogger(__name__)

CHECKPOINTS_KEPT = 3
MAX_GRAD_NORM = 1.0


@dataclass(frozen=True, kw_only=True)
class TrainingSpec:
    """One training run: the base model, validated chat lines, where to write, and the hyperparameters."""

    base: Path  # a HF SafeTensors directory, or a .gguf file
    train_lines: tuple[dict, ...]
    valid_lines: tuple[dict, ...] = ()
    output_dir: Path
    n_epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    lora_rank: int = 8
    lora_alpha: int = 16
    threads: int | None = None  # torch threads; None: half the cores, so serving keeps going
    max_tokens: int = 2048  # longer examples are cut
    method: str = "supervised"  # or "dpo": train_lines/valid_lines are preference lines
    beta: float = DEFAULT_BETA  # DPO only


@dataclass(frozen=True)
class TrainingProgress:
    """Metrics after one optimizer step (token-mean loss and next-token accuracy on trained tokens)."""

    step: int
    total_steps: int
    epoch: int
    train_loss: float
    train_accuracy: float
    valid_loss: float | None = None
    valid_accuracy: float | None = None
    trained_tokens: int = 0


@dataclass(frozen=True)
class CheckpointSaved:
    """A PEFT adapter directory saved at the end of an epoch (the last CHECKPOINTS_KEPT are kept)."""

    step: int
    path: Path
    metrics: TrainingProgress


@dataclass(frozen=True)
class TrainingResult:
    """The finished adapter (a PEFT directory) and what the run consumed."""

    adapter_dir: Path
    trained_tokens: int
    steps: int


Report = Callable[[TrainingProgress | CheckpointSaved], None]


def default_threads() -> int:
    """Half the cores: training shares the machine with the server."""
    return max(1, (os.cpu_count() or 2) // 2)


def _location(base: Path) -> tuple[str, dict[str, str]]:
    return (str(base), {}) if base.is_dir() else (str(base.parent), {"gguf_file": base.name})


def load_chat_format(base: Path) -> tuple[Any, ChatFormat]:
    """(tokenizer, chat format) of a SafeTensors directory or a GGUF file, without its weights."""
    from transformers import AutoTokenizer

    info = read_model_info(base)
    where, extra = _location(base)
    tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True, **extra)
    template = info.chat_template or getattr(tokenizer, "chat_template", None)
    chat = ChatFormat(template, tokenizer.bos_token or info.bos_token or "", tokenizer.eos_token or info.eos_token or "")
    return tokenizer, chat


def load_base(base: Path) -> tuple[Any, Any, ChatFormat]:
    """(model in float32, tokenizer, chat format) of a SafeTensors directory or a GGUF file (dequantised)."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer, chat = load_chat_format(base)
    where, extra = _location(base)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, local_files_only=True, **extra)
    return model, tokenizer, chat


def lora_model(model: Any, rank: int, alpha: int) -> Any:
    """The base wrapped in a fresh LoRA adapter on every linear layer (the output layer excluded)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear", bias="none",
                        task_type="CAUSAL_LM", use_dora=False, use_rslora=False)
    return get_peft_model(model, config)


def _loss_and_hits(model: Any, examples: Sequence[Example], pad_id: int) -> tuple[Any, int, int]:
    """(summed token loss, correct next tokens, trained tokens) of one batch."""
    import torch

    logits, targets, _ = labelled_logits(model, examples, pad_id)
    loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    hits = int((logits.argmax(-1) == targets).sum())
    return loss, hits, len(targets)


def _evaluate(model: Any, examples: Sequence[Example], batch_size: int, pad_id: int) -> tuple[float, float]:
    import torch

    total, hits, count = 0.0, 0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            loss, batch_hits, batch_count = _loss_and_hits(model, examples[start:start + batch_size], pad_id)
            total, hits, count = total + float(loss), hits + batch_hits, count + batch_count
    model.train()
    return total / max(1, count), hits / max(1, count)


def _optimizer_step(model: Any, batch: Sequence[Example], pad_id: int, optimizer: Any, schedule: Any) -> tuple[float, float]:
    """One update on a batch (token-mean loss, clipped gradients); its (loss, accuracy) before the update."""
    import torch

    loss_sum, hits, count = _loss_and_hits(model, batch, pad_id)
    (loss_sum / max(1, count)).backward()
    torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], MAX_GRAD_NORM)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum.item() / max(1, count), hits / max(1, count)


def _save_atomically(model: Any, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _prune_checkpoints(directory: Path, keep: int) -> None:
    steps = sorted((int(path.name), path) for path in directory.iterdir() if path.is_dir() and path.name.isdigit())
    for _, path in steps[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def preference_pairs(lines: Sequence[dict], tokenizer: Any, chat: ChatFormat, max_tokens: int) -> list[PreferencePair]:
    """Validated preference lines → chosen/rejected examples, labelled on their output message only."""
    pairs = []
    for line in lines:
        chosen, rejected = (training_examples([half], tokenizer, chat, max_tokens) for half in preference_chats(line))
        if chosen and rejected:
            pairs.append(PreferencePair(chosen[-1], rejected[-1]))
    return pairs


def train(spec: TrainingSpec, report: Report, should_stop: Callable[[], bool]) -> TrainingResult | None:
    """Train a LoRA adapter on spec's data; its result, or None when should_stop asked to stop."""
    import torch

    torch.set_num_threads(spec.threads or default_threads())
    model, tokenizer, chat = load_base(spec.base)
    examples = preference_pairs if spec.method == "dpo" else training_examples
    train_set = examples(spec.train_lines, tokenizer, chat, spec.max_tokens)
    valid_set = examples(spec.valid_lines, tokenizer, chat, spec.max_tokens)
    if not train_set:
        raise TrainingDataError("The training file has no assistant message to train on (all have weight 0).")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    torch.manual_seed(spec.seed)  # the adapter's initial weights
    model = lora_model(model, spec.lora_rank, spec.lora_alpha)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.learning_rate,
                                  weight_decay=0.0)
    steps_per_epoch = math.ceil(len(train_set) / spec.batch_size)
    total_steps = steps_per_epoch * spec.n_epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: 1.0 - done / total_steps)
    if spec.method == "dpo":  # the fresh adapter is the identity: its log-probabilities are the reference's
        train_set = with_reference(model, train_set, spec.batch_size, pad_id)
        valid_set = with_reference(model, valid_set, spec.batch_size, pad_id)
        step_on = lambda batch: dpo_step(model, batch, spec.beta, pad_id, optimizer, schedule, MAX_GRAD_NORM)  # noqa: E731
        evaluate = lambda: evaluate_pairs(model, valid_set, spec.beta, spec.batch_size, pad_id)  # noqa: E731
        tokens_of = lambda batch: sum(pair.n_tokens for pair in batch)  # noqa: E731
    else:
        step_on = lambda batch: _optimizer_step(model, batch, pad_id, optimizer, schedule)  # noqa: E731
        evaluate = lambda: _evaluate(model, valid_set, spec.batch_size, pad_id)  # noqa: E731
        tokens_of = count_tokens
    order = torch.Generator().manual_seed(spec.seed)
    checkpoints = spec.output_dir / "checkpoints"
    step, trained_tokens, started = 0, 0, time.monotonic()
    logger.info("fine-tuning %s (%s): %d examples (%d tokens), %d epochs × %d steps", spec.base.name, spec.method,
                len(train_set), tokens_of(train_set), spec.n_epochs, steps_per_epoch)
    for epoch in range(1, spec.n_epochs + 1):
        permutation = torch.randperm(len(train_set), generator=order).tolist()
        for start in range(0, len(permutation), spec.batch_size):
            if should_stop():
                logger.info("fine-tuning stopped at step %d of %d", step, total_steps)
                return None
            batch = [train_set[i] for i in permutation[start:start + spec.batch_size]]
            loss, accuracy = step_on(batch)
            step += 1
            trained_tokens += tokens_of(batch)
            end_of_epoch = start + spec.batch_size >= len(permutation)
            valid = evaluate() if end_of_epoch and valid_set else (None, None)
            progress = TrainingProgress(step, total_steps, epoch, loss, accuracy, valid[0], valid[1], trained_tokens)
            report(progress)
        if should_stop():
            return None
        path = _save_atomically(model, checkpoints / str(step))
        _prune_checkpoints(checkpoints, CHECKPOINTS_KEPT)
        report(CheckpointSaved(step, path, progress))
    adapter_dir = _save_atomically(model, spec.output_dir / "final")
    elapsed = time.monotonic() - started
    logger.info("fine-tuning done: %d steps, %d tokens in %.1f s (%.0f tokens/s)", step, trained_tokens, elapsed,
                trained_tokens / max(elapsed, 1e-9))
    return TrainingResult(adapter_dir, trained_tokens, step)
