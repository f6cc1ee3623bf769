"""Errors the service answers with, in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Handlers raise :class:`ApiError` for anything a client did wrong; the app turns it into that JSON with
its status. The library's own :class:`~altclip_onnx.errors.InputError` (a bad image, a label given
twice, ...) becomes a 400 with the same one-line message the command line prints.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

# OpenAI's clients pick their exception class from the status; "type" and "code" say more.
_TYPES = {401: "invalid_request_error", 404: "invalid_request_error", 500: "server_error", 503: "server_error"}


class ApiError(Exception):
    """A request the service refuses: HTTP ``status`` and one line saying what was wrong and what to send."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def too_large(message: str, param: str | None = None) -> ApiError:
    return ApiError(413, message, param=param, code="request_too_large")


def unsupported_media(message: str, param: str | None = None) -> ApiError:
    return ApiError(415, message, param=param, code="unsupported_media_type")


def not_found(message: str, code: str = "not_found") -> ApiError:
    return ApiError(404, message, code=code)
