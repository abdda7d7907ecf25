"""The job runner: validates files, trains one job at a time in a worker process, and publishes the result.

Jobs go validating_files → queued → running → succeeded / failed / cancelled. Validation runs as soon
as a job is created; training takes queued jobs in creation order, one at a time, each in a fresh
`spawn` process that calls the trainer, so neither the event loop nor the decode threads ever train.
The worker relays TrainingProgress / CheckpointSaved over a queue; they become events and checkpoint
rows. Cancel sets an Event that the trainer polls before every step (the process is terminated if it
has not stopped after CANCEL_GRACE_S). A server that stops mid-job marks the job failed on its next
start, and republishes every succeeded job's model and checkpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import importlib
import io
import json
import logging
import multiprocessing
import queue
import random
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from minerva.core.errors import InvalidRequestError, MinervaError
from minerva.finetune.hyperparameters import BASE_LEARNING_RATE, choose_beta, choose_hyperparameters
from minerva.finetune.preference import validate_preference_file
from minerva.finetune.store import FineTuneStore, InsufficientStorageError, Job, ensure_free_space, new_id, now
from minerva.finetune.trainer import CHECKPOINTS_KEPT, TrainingSpec
from minerva.finetune.validation import TrainingFileError, validate_chat_file
from minerva.formats.model_info import ModelInfo

logger = logging.getLogger(__name__)

DEFAULT_TRAINER = "minerva.finetune.trainer:train"
CANCEL_GRACE_S = 30.0  # a cancelled worker still running after this long is terminated
POLL_S = 0.5
MAX_SEED = 2147483647
GGUF_TRAINABLE_ARCHITECTURES = frozenset({
    "llama", "mistral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3", "gemma2", "gemma3", "stablelm",
    "starcoder2", "falcon", "bloom", "gpt2", "nemotron", "lfm2",
})
"""GGUF architectures transformers can dequantise into a trainable model (its gguf_file support)."""
CAUSAL_LM_CLASS_SUFFIXES = ("ForCausalLM", "LMHeadModel")  # transformers class names PEFT trains as causal LMs
MIN_EXAMPLES_FOR_CHECK = 10  # hyperparameters are range-checked at creation, before the file is read
TRAINING_METHODS = ("supervised", "dpo")
RESULT_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")


@dataclass(frozen=True)
class FineTunedModel:
    """A servable result of a job: the final adapter or one checkpoint, on its base model."""

    model_id: str
    base_id: str
    adapter_path: Path  # a PEFT directory (transformers engine) or a llama.cpp LoRA GGUF file


Publisher = Callable[[FineTunedModel], None]


@dataclass(frozen=True)
class TrainableModel:
    """What the runner needs to know of a base model: its id and header metadata."""

    id: str
    info: ModelInfo


@dataclass(frozen=True)
class JobRequest:
    """A validated create-job request, dialect-neutral."""

    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = None
    metadata: Mapping[str, str] | None = None
    method: str = "supervised"
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)


def untrainable_reason(base: TrainableModel) -> str | None:
    """Why this model cannot be fine-tuned here, or None when it can."""
    info = base.info
    if base.id.startswith("ft:"):
        return f"Model {base.id} is itself fine-tuned; fine-tune its base model instead."
    if info.kind == "embedding":
        return f"Model {base.id} is an embedding model; only chat and completion models can be fine-tuned."
    if info.format == "gguf" and info.architecture not in GGUF_TRAINABLE_ARCHITECTURES:
        return (f"Model {base.id} has the GGUF architecture {info.architecture!r}, which cannot be read back "
                f"into a trainable model here.")
    hf_class = dict(info.extra).get("hf_architecture", "")
    if info.format == "safetensors" and not hf_class.endswith(CAUSAL_LM_CLASS_SUFFIXES):
        return (f"Model {base.id} is a {hf_class or info.architecture!r} model; only causal language models "
                f"(…ForCausalLM) can be fine-tuned.")
    return None


def fine_tuned_model_id(base_id: str, suffix: str | None, tag: str) -> str:
    """OpenAI's naming: ft:{base}:{org}:{suffix}:{8 chars}, with org `local`."""
    return f"ft:{base_id}:local:{suffix or ''}:{tag}"


def checkpoint_model_id(model_id: str, step: int) -> str:
    """The model id of a checkpoint of a fine-tuned model."""
    return f"{model_id}:ckpt-step-{step}"


def _resolve(path: str) -> Callable:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _payload(item: Any) -> tuple[str, dict]:
    if hasattr(item, "path"):  # CheckpointSaved
        return "checkpoint", {"step": item.step, "path": str(item.path), "metrics": asdict(item.metrics)}
    return "progress", asdict(item)


def train_in_worker(spec: Any, messages: Any, stop: Any, trainer: str = DEFAULT_TRAINER) -> None:
    """The worker process's body: train, relaying each report, then ("done", result) or ("error", text)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s finetune-worker %(levelname)s %(message)s")
    try:
        result = _resolve(trainer)(spec, lambda item: messages.put(_payload(item)), stop.is_set)
        done = None if result is None else {"adapter_dir": str(result.adapter_dir),
                                            "trained_tokens": result.trained_tokens, "steps": result.steps}
        messages.put(("done", done))
    except BaseException as exc:  # noqa: BLE001 - every failure is reported to the job, then the process ends
        logger.exception("fine-tuning failed")
        messages.put(("error", f"{type(exc).__name__}: {exc}"))


def approximate_tokens(lines: tuple[dict, ...]) -> int:
    """A tokenizer-free estimate of the tokens in chat lines (about four characters a token)."""
    return sum(len(json.dumps(line.get("messages", line), ensure_ascii=False)) for line in lines) // 4


def adapter_bytes_bound(info: ModelInfo) -> int:
    """Disk a job's adapters may take: the final one, its GGUF and the kept checkpoints, each ≤ 2% of the base."""
    return (CHECKPOINTS_KEPT + 2) * 4 * max(1, info.parameter_count // 50)


def results_csv(rows: list[dict]) -> bytes:
    """The job's result file: one line per step, OpenAI's columns."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(RESULT_COLUMNS)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row[c] for c in RESULT_COLUMNS])
    return out.getvalue().encode()


def _metrics(progress: Mapping[str, Any]) -> dict:
    return {"step": progress["step"], "train_loss": progress["train_loss"],
            "train_mean_token_accuracy": progress["train_accuracy"], "valid_loss": progress.get("valid_loss"),
            "valid_mean_token_accuracy": progress.get("valid_accuracy"),
            "full_valid_loss": progress.get("valid_loss"),
            "full_valid_mean_token_accuracy": progress.get("valid_accuracy")}


@dataclass
class _Active:
    job_id: str
    stop: Any
    process: Any
    cancelled_at: float | None = None


class JobRunner:
    """Owns the job lifecycle; `start()` inside the server's event loop, `close()` on shutdown."""

    def __init__(self, store: FineTuneStore, *, publish: Publisher,
                 lora_gguf: Callable[[Path, Path, Path], Path] | None = None, trainer: str = DEFAULT_TRAINER,
                 threads: int | None = None):
        self.store = store
        self._publish = publish
        self._lora_gguf = lora_gguf
        self._trainer = trainer
        self._threads = threads
        self._context = multiprocessing.get_context("spawn")
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._active: _Active | None = None

    # lifecycle

    def start(self) -> None:
        """Recover from the last run (fail interrupted jobs, republish models) and start taking jobs."""
        for job in self.store.jobs_with_status("running"):
            self._fail(job.id, "server_restarted", "The server stopped while this job was running, so its "
                       "training was lost. Create a new job to train again.")
        for job in self.store.jobs_with_status("failed", "cancelled"):
            self._discard_work(job.id)
        for job in self.store.jobs_with_status("succeeded"):
            self._republish(job)
        for job in self.store.jobs_with_status("validating_files"):
            self._spawn(self._validate(job.id))
        self._loop_task = asyncio.get_running_loop().create_task(self._train_queued())

    async def close(self) -> None:
        """Stop taking jobs; a job still training is stopped and marked failed."""
        active = self._active
        if active is not None:
            active.stop.set()
            await asyncio.to_thread(self._end_process, active.process, 5.0)
            self._fail(active.job_id, "server_stopped", "The server shut down while this job was running.")
        for task in [self._loop_task, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # requests

    def create(self, request: JobRequest, base: TrainableModel) -> Job:
        """Check a request, store the job and start validating its files."""
        if request.method not in TRAINING_METHODS:
            raise InvalidRequestError(f"method.type {request.method!r} is not supported here; use one of "
                                      f"{', '.join(map(repr, TRAINING_METHODS))}.", param="method.type",
                                      code="unsupported_method")
        reason = untrainable_reason(base)
        if reason:
            raise InvalidRequestError(reason, param="model", code="model_not_trainable")
        for param, file_id in (("training_file", request.training_file), ("validation_file", request.validation_file)):
            if file_id is None:
                continue
            try:
                stored = self.store.get_file(file_id)
            except MinervaError:
                raise InvalidRequestError(f"invalid {param}: {file_id}", param=param) from None
            if stored.purpose != "fine-tune":
                raise InvalidRequestError(f"File {file_id} has purpose {stored.purpose!r}; a {param} needs "
                                          "purpose 'fine-tune'.", param=param)
        choose_hyperparameters(MIN_EXAMPLES_FOR_CHECK, 0, request.hyperparameters)  # 400 on out-of-range values
        names = ("n_epochs", "batch_size", "learning_rate_multiplier")
        if request.method == "dpo":
            choose_beta(request.hyperparameters)
            names += ("beta",)
        elif request.hyperparameters.get("beta", "auto") not in ("auto", None):
            raise InvalidRequestError("hyperparameters.beta is a DPO hyperparameter; use method.type 'dpo'.",
                                      param="beta", code="invalid_hyperparameters")
        seed = request.seed if request.seed is not None else random.randrange(MAX_SEED)
        hyperparameters = {k: request.hyperparameters.get(k, "auto") or "auto" for k in names}
        job = self.store.add_job({
            "model": base.id, "training_file": request.training_file, "validation_file": request.validation_file,
            "user_provided_suffix": request.suffix, "seed": seed, "metadata": dict(request.metadata or {}) or None,
            "hyperparameters": hyperparameters, "method": request.method, "fine_tuned_model": None, "finished_at": None,
            "trained_tokens": None, "estimated_finish": None, "result_files": [], "error": None,
            "tag": new_id("", 8), "base_path": str(base.info.path), "base_format": base.info.format,
            "adapter_bytes_bound": adapter_bytes_bound(base.info),
        })
        self.store.add_event(job.id, f"Created fine-tuning job: {job.id}")
        self._spawn(self._validate(job.id))
        return job

    def cancel(self, job_id: str) -> Job:
        """Cancel a job that has not finished; the trainer stops before its next step."""
        job = self.store.get_job(job_id)
        if job.finished:
            done = "been cancelled" if job.status == "cancelled" else "completed"
            raise InvalidRequestError(f"Job {job_id} has already {done}.", param="fine_tuning_job_id",
                                      code="job_finished")
        job = self.store.update_job(job_id, "cancelled", finished_at=now(), estimated_finish=None)
        self.store.add_event(job_id, "Fine-tuning job cancelled")
        active = self._active
        if active is not None and active.job_id == job_id:
            active.stop.set()
            active.cancelled_at = time.monotonic()
        return job

    def forget_model(self, model_id: str) -> None:
        """A published model was deleted: remove its adapter files and stop republishing it (others: ignored)."""
        for job in self.store.jobs_with_status("succeeded"):
            if job.get("fine_tuned_model") == model_id and not job.get("fine_tuned_model_deleted"):
                self.store.update_job(job.id, fine_tuned_model_deleted=True)
                _remove(Path(job.get("adapter_path")))
                _remove(self.store.job_dir(job.id) / "final")
                return
            for checkpoint in self.store.list_checkpoints(job.id, limit=1000).items:
                if checkpoint.model_id == model_id:
                    self.store.delete_checkpoint(checkpoint.id)
                    _remove(Path(checkpoint.path))
                    _remove(self.store.job_dir(job.id) / "checkpoints" / str(checkpoint.step))
                    return

    # validation

    def _read_lines(self, job: Job) -> tuple[tuple[dict, ...], tuple[dict, ...]]:
        lines = []
        for kind in ("training", "validation"):
            file_id = job.get(f"{kind}_file")
            if file_id is None:
                lines.append(())
                continue
            try:
                data = self.store.read_file(file_id)
            except (MinervaError, OSError):
                raise TrainingFileError("invalid_training_file", f"The {kind} file {file_id} no longer exists.",
                                        f"{kind}_file") from None
            validate = validate_preference_file if job.get("method") == "dpo" else validate_chat_file
            lines.append(validate(data, kind=kind, min_examples=10 if kind == "training" else 1))
        return lines[0], lines[1]

    async def _validate(self, job_id: str) -> None:
        job = self.store.get_job(job_id)
        self.store.add_event(job_id, f"Validating training file: {job.get('training_file')}")
        if job.get("validation_file"):
            self.store.add_event(job_id, f"Validating validation file: {job.get('validation_file')}")
        try:
            await asyncio.to_thread(self._read_lines, job)
        except TrainingFileError as exc:
            self._fail(job_id, exc.code, exc.message, exc.param)
            return
        if self.store.get_job(job_id).status != "validating_files":  # cancelled meanwhile
            return
        self.store.update_job(job_id, "queued")
        self.store.add_event(job_id, "Files validated, moving job to queued state")
        self._wake.set()

    # training

    async def _train_queued(self) -> None:
        while True:
            queued = self.store.jobs_with_status("queued")
            if not queued:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._run(queued[0].id)
            except Exception as exc:  # noqa: BLE001 - one job's failure must not stop the queue
                logger.exception("fine-tuning job %s failed", queued[0].id)
                self._fail(queued[0].id, "internal_error", f"The job failed: {exc}")

    def _spec(self, job: Job, train_lines: tuple, valid_lines: tuple) -> TrainingSpec:
        n_epochs, batch_size, learning_rate = choose_hyperparameters(
            len(train_lines), approximate_tokens(train_lines), job.get("hyperparameters") or {})
        chosen = {"n_epochs": n_epochs, "batch_size": batch_size,
                  "learning_rate_multiplier": learning_rate / BASE_LEARNING_RATE}
        method = job.get("method") or "supervised"
        beta = choose_beta(job.get("hyperparameters") or {})
        self.store.update_job(job.id, hyperparameters={**chosen, **({"beta": beta} if method == "dpo" else {})})
        return TrainingSpec(base=Path(job.get("base_path")), train_lines=train_lines, valid_lines=valid_lines,
                            method=method, beta=beta,
                            output_dir=self.store.job_dir(job.id), n_epochs=n_epochs, batch_size=batch_size,
                            learning_rate=learning_rate, seed=job.get("seed"), threads=self._threads)

    async def _run(self, job_id: str) -> None:
        job = self.store.get_job(job_id)
        try:
            train_lines, valid_lines = await asyncio.to_thread(self._read_lines, job)
        except TrainingFileError as exc:
            self._fail(job_id, exc.code, exc.message, exc.param)
            return
        try:
            ensure_free_space(self.store.data_dir, job.get("adapter_bytes_bound") or 0)
        except InsufficientStorageError as exc:
            self._fail(job_id, exc.code, exc.message)
            return
        spec = self._spec(job, train_lines, valid_lines)
        messages, stop = self._context.Queue(), self._context.Event()
        process = self._context.Process(target=train_in_worker, args=(spec, messages, stop, self._trainer),
                                        name=f"minerva-finetune-{job_id}", daemon=True)
        self.store.update_job(job_id, "running")
        self.store.add_event(job_id, "Fine-tuning job started")
        self._active = _Active(job_id, stop, process)
        started, rows = time.monotonic(), []
        try:
            process.start()
            outcome = await self._relay(job_id, messages, process, started, rows)
        finally:
            self._active = None
            await asyncio.to_thread(self._end_process, process, 10.0)
        if self.store.get_job(job_id).status == "running":
            kind, payload = outcome
            if kind == "error":
                self._fail(job_id, "training_failed", f"Fine-tuning failed: {payload}")
            elif payload is None:
                self.store.update_job(job_id, "cancelled", finished_at=now(), estimated_finish=None)
            else:
                await self._succeed(job_id, payload, rows)
        if self.store.get_job(job_id).status != "succeeded":  # cancelled or failed: nothing of it is served
            await asyncio.to_thread(self._discard_work, job_id)

    def _discard_work(self, job_id: str) -> None:
        """Remove what an unfinished job left on disk (checkpoints, adapters) and its checkpoint rows."""
        for checkpoint in self.store.list_checkpoints(job_id, limit=1000).items:
            self.store.delete_checkpoint(checkpoint.id)
        _remove(self.store.job_dir(job_id))

    async def _relay(self, job_id: str, messages: Any, process: Any, started: float, rows: list) -> tuple[str, Any]:
        while True:
            try:
                kind, payload = await asyncio.to_thread(messages.get, True, POLL_S)
            except queue.Empty:
                active = self._active
                if active and active.cancelled_at and time.monotonic() - active.cancelled_at > CANCEL_GRACE_S:
                    process.terminate()
                if not process.is_alive():  # what it sent before it ended may still be in the pipe
                    try:
                        kind, payload = await asyncio.to_thread(messages.get, True, POLL_S)
                    except queue.Empty:
                        return "error", f"the training process exited with code {process.exitcode}"
                else:
                    continue
            if kind not in ("progress", "checkpoint"):
                return kind, payload
            if self._active and self._active.cancelled_at:  # steps that were under way at cancel are dropped
                continue
            if kind == "progress":
                self._on_progress(job_id, payload, started, rows)
            else:
                self._on_checkpoint(job_id, payload)

    def _on_progress(self, job_id: str, progress: dict, started: float, rows: list) -> None:
        step, total = progress["step"], progress["total_steps"]
        rows.append({"step": step, "train_loss": progress["train_loss"], "train_accuracy": progress["train_accuracy"],
                     "valid_loss": progress.get("valid_loss"),
                     "valid_mean_token_accuracy": progress.get("valid_accuracy")})
        elapsed = time.monotonic() - started
        data = {**_metrics(progress), "total_steps": total}
        self.store.add_event(job_id, f"Step {step}/{total}: training loss={progress['train_loss']:.2f}",
                             type="metrics", data=data)
        self.store.update_job(job_id, trained_tokens=progress.get("trained_tokens") or None,
                              estimated_finish=int(time.time() + elapsed / step * (total - step)) if step else None)

    def _on_checkpoint(self, job_id: str, saved: dict) -> None:
        job = self.store.get_job(job_id)
        model_id = checkpoint_model_id(self._model_id(job), saved["step"])
        self.store.add_checkpoint(job_id, saved["step"], model_id, Path(saved["path"]), _metrics(saved["metrics"]))
        self.store.add_event(job_id, f"Checkpoint created at step {saved['step']}")

    @staticmethod
    def _model_id(job: Job) -> str:
        return fine_tuned_model_id(job.get("model"), job.get("user_provided_suffix"), job.get("tag"))

    def _servable(self, job: Job, adapter: Path, name: str) -> tuple[Path, str]:
        """The adapter as its engine loads it: the PEFT dir, or a llama.cpp LoRA GGUF written from it."""
        if job.get("base_format") != "gguf":
            return adapter, "peft"
        if self._lora_gguf is None:
            raise InvalidRequestError("This server cannot write llama.cpp LoRA adapters for a GGUF base.")
        out = self.store.job_dir(job.id) / "gguf" / f"{name}.gguf"
        out.parent.mkdir(parents=True, exist_ok=True)
        return self._lora_gguf(adapter, Path(job.get("base_path")), out), "gguf"

    async def _succeed(self, job_id: str, result: dict, rows: list) -> None:
        job = self.store.get_job(job_id)
        model_id = self._model_id(job)
        try:
            adapter, adapter_format = await asyncio.to_thread(self._servable, job, Path(result["adapter_dir"]), "final")
            for checkpoint in self.store.list_checkpoints(job_id, limit=1000).items:
                if not Path(checkpoint.path).exists():  # pruned by the trainer: only the last few are kept
                    self.store.delete_checkpoint(checkpoint.id)
                    continue
                path, _ = await asyncio.to_thread(self._servable, job, Path(checkpoint.path), f"ckpt-{checkpoint.step}")
                self.store.update_checkpoint_path(checkpoint.id, path)
            csv_bytes = results_csv(rows)
            (self.store.job_dir(job_id) / "results.csv").write_bytes(csv_bytes)
            result_file = self.store.add_file("step_metrics.csv", "fine-tune-results", csv_bytes)
        except (MinervaError, OSError) as exc:
            self._fail(job_id, getattr(exc, "code", None) or "internal_error", f"Publishing the adapter failed: {exc}")
            return
        job = self.store.update_job(job_id, adapter_path=str(adapter), adapter_format=adapter_format,
                                    trained_tokens=result["trained_tokens"], result_files=[result_file.id])
        self._republish(job)
        self.store.add_event(job_id, f"New fine-tuned model created: {model_id}")
        self.store.update_job(job_id, "succeeded", fine_tuned_model=model_id, finished_at=now(), estimated_finish=None)
        self.store.add_event(job_id, "The job has successfully completed")

    def _republish(self, job: Job) -> None:
        if not job.get("adapter_path"):
            return
        base_id = job.get("model")
        published = [] if job.get("fine_tuned_model_deleted") else [
            FineTunedModel(self._model_id(job), base_id, Path(job.get("adapter_path")))]
        published += [FineTunedModel(c.model_id, base_id, Path(c.path))
                      for c in self.store.list_checkpoints(job.id, limit=1000).items]
        for model in published:
            if not model.adapter_path.exists():
                logger.warning("fine-tuned model %s: adapter %s is gone", model.model_id, model.adapter_path)
                continue
            try:
                self._publish(model)
            except MinervaError as exc:
                logger.warning("cannot serve fine-tuned model %s: %s", model.model_id, exc.message)

    def _fail(self, job_id: str, code: str, message: str, param: str | None = None) -> None:
        if self.store.get_job(job_id).finished:
            return
        self.store.update_job(job_id, "failed", error={"code": code, "message": message, "param": param},
                              finished_at=now(), estimated_finish=None)
        self.store.add_event(job_id, message, level="error")

    @staticmethod
    def _end_process(process: Any, grace_s: float) -> None:
        if process.pid is None:
            return
        process.join(grace_s)
        if process.is_alive():
            process.terminate()
            process.join(5.0)
        if process.is_alive():
            process.kill()
            process.join(5.0)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
