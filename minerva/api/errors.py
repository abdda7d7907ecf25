"""Every error leaves the server in the envelope of the API its path belongs to; translated here, once."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from minerva.core.errors import HttpStatusError, InternalError, InvalidRequestError, MinervaError

logger = logging.getLogger(__name__)

Envelope = Callable[[MinervaError], dict]


@dataclass(frozen=True)
class Dialect:
    """A client API: its routes and the envelope its errors are written in (for paths under its prefixes)."""

    name: str
    router: APIRouter
    error_envelope: Envelope
    path_prefixes: tuple[str, ...] = ()  # empty: the default envelope, for every path no other dialect owns


@dataclass(frozen=True)
class ErrorEnvelopes:
    """Which dialect's envelope a path's errors are written in: the longest matching prefix, else the default."""

    default: Envelope
    by_prefix: tuple[tuple[str, Envelope], ...] = ()

    @classmethod
    def of(cls, dialects: tuple[Dialect, ...]) -> ErrorEnvelopes:
        """The envelopes of these dialects; the first without path prefixes is the default."""
        default = next(d.error_envelope for d in dialects if not d.path_prefixes)
        return cls(default, tuple((p, d.error_envelope) for d in dialects for p in d.path_prefixes))

    def for_path(self, path: str) -> Envelope:
        """The envelope for errors of a request to this path."""
        best = max((p for p in self.by_prefix if path.startswith(p[0])), key=lambda p: len(p[0]), default=None)
        return best[1] if best else self.default


def _param_of(location: tuple) -> str | None:
    parts = [str(p) for p in location if p not in ("body", "query", "path", "header")]
    if not parts:
        return None
    text = parts[0]
    for part in parts[1:]:
        text += f"[{part}]" if part.isdigit() else f".{part}"
    return text


def validation_error(exc: RequestValidationError) -> InvalidRequestError:
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
    return InvalidRequestError(message, param=param, code="invalid_value")


def error_response(error: MinervaError, envelope: Envelope) -> JSONResponse:
    """The JSON response of a typed error in one dialect's envelope."""
    return JSONResponse(envelope(error), status_code=error.status_code, headers=error.headers() or None)


def _leaf_routes(routes: list) -> Iterator:
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI wraps each include_router (no prefixes here)
        yield from _leaf_routes(included.routes) if included is not None else (route,)


def allowed_methods(app: FastAPI, scope: dict) -> list[str]:
    """Every method some route of the app serves at this request's path."""
    methods: set[str] = set()
    for route in _leaf_routes(app.router.routes):
        route_methods = getattr(route, "methods", None)
        if route_methods and route.matches(scope)[0] != Match.NONE:
            methods.update(route_methods)
    return sorted(methods)


def install_error_handlers(app: FastAPI, envelopes: ErrorEnvelopes) -> None:
    """Register the handlers that turn every failure into the envelope of its path's API."""

    def respond(request: Request, error: MinervaError) -> JSONResponse:
        return error_response(error, envelopes.for_path(request.url.path))

    @app.exception_handler(MinervaError)
    async def _minerva(request: Request, exc: MinervaError) -> JSONResponse:
        if exc.status_code >= 500:
            logger.warning("%s: %s", type(exc).__name__, exc.message)
        return respond(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(request, validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(getattr(exc, "headers", None) or {})
        allowed = allowed_methods(app, request.scope) if exc.status_code == 405 else []
        if allowed:  # Starlette names only the first matching route's methods; a path may have several routes
            headers["Allow"] = ", ".join(allowed)
        return respond(request, HttpStatusError(str(exc.detail), exc.status_code, headers))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return respond(request, InternalError("internal server error"))
