"""The OpenAI fine-tuning routes: jobs (create, list, retrieve, cancel, events, checkpoints) and model delete."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from minerva.api.state import server_state
from minerva.core.errors import InvalidRequestError
from minerva.dialects.openai.protocol import error_responses
from minerva.finetune.runner import MAX_SEED, JobRequest, TrainableModel
from minerva.finetune.store import Checkpoint, Job, JobEvent
from minerva.registry import unregister_fine_tuned

router = APIRouter()


class _Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: Literal["auto"] | int | None = "auto"
    batch_size: Literal["auto"] | int | None = "auto"
    learning_rate_multiplier: Literal["auto"] | float | None = "auto"
    beta: Literal["auto"] | float | None = None  # DPO only


class _MethodBody(BaseModel):
    hyperparameters: _Hyperparameters | None = None


class _Method(BaseModel):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: _MethodBody | None = None
    dpo: _MethodBody | None = None
    reinforcement: dict[str, Any] | None = None


class CreateFineTuningJobRequest(BaseModel):
    """POST /v1/fine_tuning/jobs, as OpenAI defines it."""

    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    metadata: dict[str, str] | None = Field(None, max_length=16)
    hyperparameters: _Hyperparameters | None = None  # deprecated: method.supervised.hyperparameters
    method: _Method | None = None
    integrations: list[dict[str, Any]] | None = None


def job_request_from(body: CreateFineTuningJobRequest) -> JobRequest:
    """The dialect-neutral job request; method.supervised.hyperparameters win over the deprecated top level."""
    method = body.method.type if body.method else "supervised"
    chosen = getattr(body.method, method, None) if body.method and method != "reinforcement" else None
    hyperparameters = (chosen.hyperparameters if chosen and chosen.hyperparameters else body.hyperparameters)
    if body.integrations:
        raise InvalidRequestError("integrations are not supported by a local server.", param="integrations")
    return JobRequest(body.model, body.training_file, body.validation_file, body.suffix, body.seed, body.metadata,
                      method, hyperparameters.model_dump(exclude_none=True) if hyperparameters else {})


def job_object(job: Job) -> dict:
    """The OpenAI FineTuningJob of a stored job."""
    hyperparameters = job.get("hyperparameters") or {}
    return {
        "id": job.id, "object": "fine_tuning.job", "created_at": job.created_at, "status": job.status,
        "model": job.get("model"), "fine_tuned_model": job.get("fine_tuned_model"),
        "finished_at": job.get("finished_at"), "organization_id": "local", "result_files": job.get("result_files", []),
        "training_file": job.get("training_file"), "validation_file": job.get("validation_file"),
        "hyperparameters": hyperparameters, "trained_tokens": job.get("trained_tokens"), "error": job.get("error"),
        "seed": job.get("seed"), "estimated_finish": job.get("estimated_finish"), "integrations": None,
        "metadata": job.get("metadata"), "user_provided_suffix": job.get("user_provided_suffix"),
        "method": {"type": job.get("method") or "supervised",
                   job.get("method") or "supervised": {"hyperparameters": hyperparameters}},
    }


def event_object(event: JobEvent) -> dict:
    """The OpenAI FineTuningJobEvent of a stored event."""
    return {"id": event.id, "object": "fine_tuning.job.event", "created_at": event.created_at, "level": event.level,
            "message": event.message, "type": event.type, "data": event.data or {}}


def checkpoint_object(checkpoint: Checkpoint) -> dict:
    """The OpenAI FineTuningJobCheckpoint of a stored checkpoint."""
    return {"id": checkpoint.id, "object": "fine_tuning.job.checkpoint", "created_at": checkpoint.created_at,
            "fine_tuned_model_checkpoint": checkpoint.model_id, "fine_tuning_job_id": checkpoint.job_id,
            "metrics": dict(checkpoint.metrics), "step_number": checkpoint.step}


def _list(data: list[dict], has_more: bool) -> JSONResponse:
    return JSONResponse({"object": "list", "data": data, "has_more": has_more,
                         "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})


@router.post("/v1/fine_tuning/jobs", responses=error_responses(400, 401, 404, 413))
async def create_job(body: CreateFineTuningJobRequest, request: Request) -> JSONResponse:
    """Create a job: its files are validated, then it queues and trains a LoRA adapter."""
    state = server_state(request)
    requested = job_request_from(body)
    model = state.registry.get(body.model)
    job = state.fine_tuning().create(requested, TrainableModel(model.id, model.info))
    return JSONResponse(job_object(job))


@router.get("/v1/fine_tuning/jobs", responses=error_responses(400, 401))
async def list_jobs(request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=100)) -> JSONResponse:
    """Jobs newest first; `metadata[key]=value` filters."""
    metadata = {key[len("metadata["):-1]: value for key, value in request.query_params.items()
                if key.startswith("metadata[") and key.endswith("]")}
    page = server_state(request).fine_tuning().store.list_jobs(after, limit, metadata)
    return _list([job_object(j) for j in page.items], page.has_more)


@router.get("/v1/fine_tuning/jobs/{job_id}", responses=error_responses(401, 404))
async def retrieve_job(job_id: str, request: Request) -> JSONResponse:
    """One job."""
    return JSONResponse(job_object(server_state(request).fine_tuning().store.get_job(job_id)))


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel", responses=error_responses(400, 401, 404))
async def cancel_job(job_id: str, request: Request) -> JSONResponse:
    """Cancel a job that has not finished; training stops within one step."""
    return JSONResponse(job_object(server_state(request).fine_tuning().cancel(job_id)))


@router.get("/v1/fine_tuning/jobs/{job_id}/events", responses=error_responses(400, 401, 404))
async def list_events(job_id: str, request: Request, after: str | None = None,
                      limit: int = Query(20, ge=1, le=1000)) -> JSONResponse:
    """A job's events, newest first."""
    store = server_state(request).fine_tuning().store
    store.get_job(job_id)
    page = store.list_events(job_id, after, limit)
    return _list([event_object(e) for e in page.items], page.has_more)


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints", responses=error_responses(400, 401, 404))
async def list_checkpoints(job_id: str, request: Request, after: str | None = None,
                           limit: int = Query(10, ge=1, le=100)) -> JSONResponse:
    """A job's checkpoints, newest first; each is a model of its own."""
    store = server_state(request).fine_tuning().store
    store.get_job(job_id)
    page = store.list_checkpoints(job_id, after, limit)
    return _list([checkpoint_object(c) for c in page.items], page.has_more)


@router.delete("/v1/models/{model_id:path}", responses=error_responses(400, 401, 404))
async def delete_model(model_id: str, request: Request) -> JSONResponse:
    """Delete a fine-tuned model (or checkpoint) and its adapter; base models cannot be deleted."""
    state = server_state(request)
    runner = state.fine_tuning() if state.has_fine_tuning_data() else None  # opening it publishes its models
    if state.registry.get(model_id).adapter is None:
        raise InvalidRequestError(f"The model '{model_id}' is not a fine-tuned model; only those can be deleted.",
                                  param="model")
    model = unregister_fine_tuned(state.registry, model_id)
    if model is not None:  # free the adapter's context (llama.cpp) or weights (PEFT) in the loaded base
        await state.pool.drop_adapter(model)
    if runner is not None:
        runner.forget_model(model_id)
    return JSONResponse({"id": model_id, "object": "model", "deleted": True})
