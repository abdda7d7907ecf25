"""The OpenAI files routes: multipart upload, list, retrieve, content and delete, over the fine-tuning store."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse

from minerva.api.state import server_state
from minerva.core.errors import InvalidRequestError
from minerva.dialects.openai.protocol import error_responses
from minerva.finetune.store import StoredFile

router = APIRouter()

UPLOAD_PURPOSES = ("fine-tune", "assistants", "batch", "vision", "user_data", "evals")
"""Purposes a client may upload with; fine-tune-results files are written by jobs."""


def file_object(stored: StoredFile) -> dict:
    """The OpenAI FileObject of a stored file."""
    return {"id": stored.id, "object": "file", "bytes": stored.bytes, "created_at": stored.created_at,
            "filename": stored.filename, "purpose": stored.purpose, "status": stored.status,
            "status_details": stored.status_details, "expires_at": None}


@router.post("/v1/files", responses=error_responses(400, 401, 413, 507))
async def create_file(request: Request, file: UploadFile = File(...), purpose: str = Form(...)) -> JSONResponse:
    """Upload a file (multipart `file` and `purpose`); it is processed at once."""
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequestError(f"'{purpose}' is not one of {', '.join(map(repr, UPLOAD_PURPOSES))} - 'purpose'",
                                  param="purpose", code="invalid_value")
    filename = file.filename or "upload"
    if purpose == "fine-tune" and not filename.lower().endswith(".jsonl"):
        raise InvalidRequestError("Invalid file format for Fine-Tuning API. Must be .jsonl", param="file")
    store = server_state(request).fine_tuning().store
    size = file.size if file.size is not None else len(await file.read())
    await file.seek(0)
    stored = await asyncio.to_thread(store.add_file_from, filename, purpose, file.file, size)
    return JSONResponse(file_object(stored))


@router.get("/v1/files", responses=error_responses(400, 401))
async def list_files(request: Request, after: str | None = None, limit: int = Query(10000, ge=1, le=10000),
                     order: Literal["asc", "desc"] = "desc", purpose: str | None = None) -> JSONResponse:
    """Files, newest first by default, paged with `after`/`limit`."""
    page = server_state(request).fine_tuning().store.list_files(after, limit, order, purpose)
    data = [file_object(f) for f in page.items]
    return JSONResponse({"object": "list", "data": data, "has_more": page.has_more,
                         "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})


@router.get("/v1/files/{file_id}", responses=error_responses(401, 404))
async def retrieve_file(file_id: str, request: Request) -> JSONResponse:
    """One file's metadata."""
    return JSONResponse(file_object(server_state(request).fine_tuning().store.get_file(file_id)))


@router.get("/v1/files/{file_id}/content", responses=error_responses(401, 404))
async def file_content(file_id: str, request: Request) -> FileResponse:
    """A file's bytes."""
    store = server_state(request).fine_tuning().store
    stored = store.get_file(file_id)
    return FileResponse(store.file_path(stored.id), media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}", responses=error_responses(401, 404))
async def delete_file(file_id: str, request: Request) -> JSONResponse:
    """Delete a file and its bytes."""
    server_state(request).fine_tuning().store.delete_file(file_id)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})
