"""Stand-in trainers for the job runner's protocol edges (cancel, crash, failure, restart); the real one is
minerva.finetune.trainer. Each has trainer.train's signature and runs in the runner's worker process."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from minerva.finetune.trainer import CheckpointSaved, TrainingProgress, TrainingResult

SMOLLM2_HIDDEN = 576
RANK = 8


def _progress(step: int, total: int, epoch: int = 1) -> TrainingProgress:
    return TrainingProgress(step, total, epoch, train_loss=2.0 / step, train_accuracy=0.5, trained_tokens=10 * step)


def until_stopped(spec, report, should_stop):
    """Reports a step every 0.1 s until asked to stop (or 600 steps); None when stopped."""
    for step in range(1, 601):
        if should_stop():
            return None
        report(_progress(step, 600))
        time.sleep(0.1)
    return None


def checkpoint_then_until_stopped(spec, report, should_stop):
    """Saves a checkpoint at step 2, then reports a step every 0.1 s until asked to stop; None when stopped."""
    for step in range(1, 601):
        if should_stop():
            return None
        report(_progress(step, 600))
        if step == 2:
            report(CheckpointSaved(step, write_zero_adapter(spec.output_dir / "checkpoints" / str(step)),
                                   _progress(step, 600)))
        time.sleep(0.1)
    return None


def raises(spec, report, should_stop):
    """Fails after one step, as a trainer bug would."""
    report(_progress(1, 2))
    raise RuntimeError("the fake trainer broke")


def dies(spec, report, should_stop):
    """The worker process dies without a word after one step (killed, out of memory...)."""
    report(_progress(1, 2))
    os._exit(3)


def write_zero_adapter(target: Path) -> Path:
    """A PEFT LoRA directory for SmolLM2's layer-0 q_proj whose B is zero: the base model's behaviour."""
    target.mkdir(parents=True, exist_ok=True)
    (target / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": RANK, "lora_alpha": 16, "target_modules": ["q_proj"], "lora_dropout": 0.0,
        "bias": "none", "task_type": "CAUSAL_LM", "use_dora": False, "use_rslora": False}))
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{prefix}.lora_A.weight": np.full((RANK, SMOLLM2_HIDDEN), 0.01, dtype=np.float32),
               f"{prefix}.lora_B.weight": np.zeros((SMOLLM2_HIDDEN, RANK), dtype=np.float32)},
              str(target / "adapter_model.safetensors"))
    return target


def zero_adapter(spec, report, should_stop):
    """Two epochs of two steps, a checkpoint per epoch, then a zero adapter as the result."""
    for step in range(1, 5):
        epoch = (step + 1) // 2
        progress = _progress(step, 4, epoch)
        report(progress)
        if step % 2 == 0:
            report(CheckpointSaved(step, write_zero_adapter(spec.output_dir / "checkpoints" / str(step)), progress))
    return TrainingResult(write_zero_adapter(spec.output_dir / "final"), trained_tokens=40, steps=4)
