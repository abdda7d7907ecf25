"""Pure ASGI middleware: request ids and one log line per request, API keys, body-size limit."""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import tempfile
import time
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from minerva.api.errors import ErrorEnvelopes
from minerva.core.errors import AuthenticationError, MinervaError, PayloadTooLargeError
from minerva.metrics import RequestRecord, ServerMetrics

logger = logging.getLogger("minerva.access")

OPEN_PATHS = frozenset({"/health", "/metrics", "/"})
OPEN_PREFIXES = ("/web/",)  # the web page's static files: they hold no data, and the page asks for the key
UPLOAD_SPOOL_BYTES = 1024 * 1024  # an upload larger than this waits for the app in a temporary file
REPLAY_CHUNK_BYTES = 1024 * 1024


async def send_error(send: Send, scope: Scope, envelopes: ErrorEnvelopes, error: MinervaError,
                     extra_headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answer with an error in the envelope of the path's API, straight from middleware."""
    body = json.dumps(envelopes.for_path(scope.get("path", ""))(error)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *[(k.lower().encode(), v.encode()) for k, v in error.headers().items()], *extra_headers]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class RequestContextMiddleware:
    """Gives each request an id (echoed as x-request-id) and logs one line when it ends."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics | None = None):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = (_header(scope, b"x-request-id") or "")[:64] or f"req_{secrets.token_hex(8)}"
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        record = RequestRecord(started=started, request_id=request_id)
        scope["state"]["access"] = record

        async def tagged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body" and record.first_byte is None:
                record.first_byte = time.perf_counter()
            await send(message)

        outcome = "ok"
        try:
            await self.app(scope, receive, tagged_send)
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            ended = time.perf_counter()
            elapsed_ms = (ended - started) * 1000
            if self.metrics is not None:
                self.metrics.observe_request(scope, record, ended)
            usage = record.usage
            logger.info(
                "%s %s %s status=%s model=%s prompt_tokens=%s completion_tokens=%s cached_tokens=%s "
                "draft_accepted=%s ttft_ms=%s total_ms=%.1f outcome=%s",
                request_id, scope.get("method"), scope.get("path"), record.status, record.model or "-",
                usage.prompt_tokens if usage else "-", usage.completion_tokens if usage else "-",
                usage.cached_tokens if usage else "-",
                f"{usage.draft_accepted}/{usage.draft_tokens}" if usage and usage.draft_tokens else "-",
                f"{(record.first_token - started) * 1000:.1f}" if record.first_token is not None else "-",
                elapsed_ms, record.outcome or outcome,
            )


def presented_key(scope: Scope) -> bytes:
    """The API key a request carries: `Authorization: Bearer <key>` (OpenAI, Ollama) or `x-api-key` (Anthropic)."""
    header = _header(scope, b"authorization") or ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip().encode()
    return (_header(scope, b"x-api-key") or "").strip().encode()


class ApiKeyMiddleware:
    """With keys configured, every request but the open paths needs a key (constant-time check)."""

    def __init__(self, app: ASGIApp, keys: Iterable[str], envelopes: ErrorEnvelopes):
        self.app = app
        self._keys = [k.encode() for k in keys if k]
        self._envelopes = envelopes

    def _authorized(self, scope: Scope) -> bool:
        presented = presented_key(scope)
        matched = False
        for key in self._keys:  # compare against every key so timing does not reveal which matched
            matched |= hmac.compare_digest(presented, key)
        return matched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._keys and scope["path"] not in OPEN_PATHS \
                and not scope["path"].startswith(OPEN_PREFIXES) \
                and scope.get("method") != "OPTIONS" and not self._authorized(scope):
            message = "Incorrect or missing API key. Send 'Authorization: Bearer <key>' or 'x-api-key: <key>'."
            await send_error(send, scope, self._envelopes, AuthenticationError(message),
                             [(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses request bodies over the limit with a 413 before the app sees them.

    The body is read here (the app would read it whole anyway to parse it), stopping at the limit,
    then replayed to the app; later receive() calls go to the client so disconnects are still seen.
    Uploads (`upload_paths`) have their own, larger limit and are spooled to a temporary file, not memory.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, envelopes: ErrorEnvelopes,
                 upload_paths: Iterable[str] = (), max_upload_bytes: int | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self._envelopes = envelopes
        self._upload_paths = frozenset(upload_paths)
        self.max_upload_bytes = max_upload_bytes or max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        upload = scope["path"] in self._upload_paths
        limit = self.max_upload_bytes if upload else self.max_bytes
        too_large = PayloadTooLargeError(f"Request body exceeds the limit of {limit} bytes.")
        declared = _header(scope, b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            await send_error(send, scope, self._envelopes, too_large)
            return
        with tempfile.SpooledTemporaryFile(max_size=UPLOAD_SPOOL_BYTES if upload else limit + 1) as body:
            size = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    await send_error(send, scope, self._envelopes, too_large)
                    return
                body.write(chunk)
                if not message.get("more_body", False):
                    break
            body.seek(0)
            done = False

            async def replay() -> Message:
                nonlocal done
                if not done:
                    chunk = body.read(REPLAY_CHUNK_BYTES)
                    done = body.tell() >= size
                    return {"type": "http.request", "body": chunk, "more_body": not done}
                return await receive()

            await self.app(scope, replay, send)
