"""OpenAI-style error bodies, the shape vLLM's server answers with.

{"error": {"message": ..., "type": "BadRequestError", "param": null, "code": 400}}
"""

from __future__ import annotations

import json

__all__ = ["ERROR_TYPES", "error_body", "error_event"]

ERROR_TYPES: dict[int, str] = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestTooLargeError",
    429: "RateLimitError",
    431: "RequestHeaderFieldsTooLargeError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


def error_object(status: int, message: str, param: str | None = None) -> dict[str, object]:
    return {
        "message": message,
        "type": ERROR_TYPES.get(status, "APIError"),
        "param": param,
        "code": status,
    }


def error_body(status: int, message: str, param: str | None = None) -> bytes:
    return json.dumps({"error": error_object(status, message, param)}).encode()


def error_event(status: int, message: str) -> bytes:
    """The end of a stream that failed after its first byte: an error event, then DONE."""
    payload = json.dumps({"error": error_object(status, message)})
    return f"data: {payload}\n\ndata: [DONE]\n\n".encode()
