"""Typed errors raised anywhere in minerva; each dialect turns them into its own envelope, once."""

from __future__ import annotations

from pathlib import Path


class MinervaError(Exception):
    """Base of every error minerva raises on purpose: an HTTP status, a message, a code and a param."""

    status_code: int = 500
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def headers(self) -> dict[str, str]:
        """Extra HTTP headers this error needs (e.g. Retry-After)."""
        return {}


class InvalidRequestError(MinervaError):
    """The client sent something we cannot serve (400)."""

    status_code = 400


class ContextLengthExceededError(InvalidRequestError):
    """The prompt does not fit the model's context window (400)."""

    code = "context_length_exceeded"

    def __init__(self, n_ctx: int, prompt_tokens: int, param: str = "messages"):
        super().__init__(
            f"This model's maximum context length is {n_ctx} tokens. However, your request has "
            f"{prompt_tokens} prompt tokens. Please reduce the length of the messages or prompt.",
            param=param,
        )
        self.n_ctx = n_ctx
        self.prompt_tokens = prompt_tokens


class AuthenticationError(MinervaError):
    """Missing or wrong API key (401)."""

    status_code = 401
    code = "invalid_api_key"


class NotFoundError(MinervaError):
    """A route or resource that does not exist (404)."""

    status_code = 404
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    """The request names a model the registry does not hold (404)."""

    code = "model_not_found"

    def __init__(self, model_id: str):
        super().__init__(f"The model '{model_id}' does not exist.", param="model")
        self.model_id = model_id


class PayloadTooLargeError(MinervaError):
    """Request body over the configured limit (413)."""

    status_code = 413
    code = "payload_too_large"


class QueueFullError(MinervaError):
    """Too many requests are waiting for this model (429, with Retry-After)."""

    status_code = 429
    code = "queue_full"

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class ModelLoadError(MinervaError):
    """A registered model could not be loaded (503: the server is fine, this model is not)."""

    status_code = 503
    code = "model_load_failed"


class ModelUnavailableError(MinervaError):
    """A registered model's file vanished or changed under us (503)."""

    status_code = 503
    code = "model_unavailable"


class ModelFormatError(MinervaError):
    """A model file is corrupt, truncated, hostile or not a format we read."""

    status_code = 400
    code = "invalid_model_file"

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class InternalError(MinervaError):
    """An unexpected failure inside the server, reported without its details (500)."""

    code = "internal_error"


class HttpStatusError(MinervaError):
    """An HTTP-level refusal (no such route, method not allowed…) with its own status."""

    def __init__(self, message: str, status_code: int, headers: dict[str, str] | None = None):
        super().__init__(message, code="not_found" if status_code == 404 else None)
        self.status_code = status_code
        self._headers = dict(headers or {})

    def headers(self) -> dict[str, str]:
        return dict(self._headers)


class UpstreamError(MinervaError):
    """An upstream server failed: refused, died, answered 5xx or malformed output (502)."""

    status_code = 502
    code = "upstream_error"


class UpstreamTimeoutError(UpstreamError):
    """An upstream server took longer than its configured timeout (504)."""

    status_code = 504
    code = "upstream_timeout"
