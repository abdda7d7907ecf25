"""Every error leaves the server in the OpenAI envelope; translated here, once."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from minerva.errors import MinervaError

logger = logging.getLogger(__name__)

_HTTP_TYPES = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
               405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error"}


def envelope(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict:
    """The OpenAI error body."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _param_of(location: tuple) -> str | None:
    parts = [str(p) for p in location if p not in ("body", "query", "path", "header")]
    if not parts:
        return None
    text = parts[0]
    for part in parts[1:]:
        text += f"[{part}]" if part.isdigit() else f".{part}"
    return text


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 becomes a 400 naming the first offending parameter."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = _param_of(tuple(first.get("loc", ())))
    message = first.get("msg", "invalid request")
    if first.get("type") == "json_invalid":
        message, param = "the request body is not valid JSON", None
    elif param is None and first.get("type") == "missing":
        message = "a JSON request body is required"
    elif param:
        message = f"invalid value for '{param}': {message}"
    return JSONResponse(envelope(message, "invalid_request_error", param, "invalid_value"), status_code=400)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every failure into the envelope."""

    @app.exception_handler(MinervaError)
    async def _minerva(_: Request, exc: MinervaError) -> JSONResponse:
        if exc.status_code >= 500:
            logger.warning("%s: %s", type(exc).__name__, exc.message)
        return JSONResponse(exc.to_envelope(), status_code=exc.status_code, headers=exc.headers())

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return JSONResponse(
            envelope(str(exc.detail), _HTTP_TYPES.get(exc.status_code, "invalid_request_error"), None, code),
            status_code=exc.status_code, headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return JSONResponse(envelope("internal server error", "server_error", None, "internal_error"),
                            status_code=500)
