"""Anthropic's error envelope: `{"type": "error", "error": {"type", "message"}}`, typed by HTTP status."""

from __future__ import annotations

from minerva.core.errors import ContextLengthExceededError, MinervaError

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
"""Anthropic's error type for a status; other 4xx are invalid_request_error, other 5xx api_error."""


def error_type(status_code: int) -> str:
    """The Anthropic `type` of an error with this HTTP status."""
    if status_code in ERROR_TYPES:
        return ERROR_TYPES[status_code]
    return "api_error" if status_code >= 500 else "invalid_request_error"


def error_message(error: MinervaError) -> str:
    """The message, in Anthropic's words for an overflow ("prompt is too long: …"), which Claude Code reads."""
    if isinstance(error, ContextLengthExceededError):
        return (f"prompt is too long: {error.prompt_tokens} tokens > {error.n_ctx - 1} maximum. "
                f"This model's context is {error.n_ctx} tokens and needs room for one to generate.")
    return error.message


def anthropic_error(error: MinervaError) -> dict:
    """The Anthropic error body of a typed error."""
    return {"type": "error", "error": {"type": error_type(error.status_code), "message": error_message(error)}}
