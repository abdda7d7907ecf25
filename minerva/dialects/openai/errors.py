"""OpenAI's error envelope: `{"error": {"message", "type", "param", "code"}}`, typed by HTTP status."""

from __future__ import annotations

from minerva.core.errors import MinervaError

ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
"""OpenAI's error type for a status; other client errors are invalid_request_error, 5xx server_error."""


def error_type(status_code: int) -> str:
    """The OpenAI `type` of an error with this HTTP status."""
    if status_code >= 500:
        return "server_error"
    return ERROR_TYPES.get(status_code, "invalid_request_error")


def openai_error(error: MinervaError) -> dict:
    """The OpenAI error body of a typed error."""
    return {"error": {"message": error.message, "type": error_type(error.status_code), "param": error.param,
                      "code": error.code}}
