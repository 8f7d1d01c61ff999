"""Errors in OpenAI's JSON shape: `{"error": {"message", "type", "param", "code"}}`.

Route code raises `OpenAIError`; `install_error_handlers` turns it, FastAPI's
validation errors (malformed JSON, wrong types, with pydantic's error type) and unknown
routes into that shape with the right status. Bad input is always a 4xx naming the
field; only a bug is a 500, which middleware.KeepAliveOnError answers without closing
the connection.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any, Iterable, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from nbllm.errors import InvalidParameter


class OpenAIError(Exception):
    """An error answered as OpenAI's error JSON with `status`."""

    def __init__(self, status: int, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def to_dict(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param)


def error_body(status: int, message: str, param: Optional[str] = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _error_type(status), "param": param, "code": status}}


def _error_type(status: int) -> str:
    """vLLM's names: BadRequestError, NotFoundError, UnauthorizedError, InternalServerError."""
    try:
        name = HTTPStatus(status).phrase.replace(" ", "")
    except ValueError:
        return "Error"
    return name if name.endswith("Error") else name + "Error"


def bad_request(message: str, param: Optional[str] = None) -> OpenAIError:
    return OpenAIError(400, message, param)


def invalid_value(exc: BaseException, fields: Iterable[str]) -> OpenAIError:
    """A 400 from the engine's ValueError/TypeError, whose messages start with the field name."""
    message = str(exc)
    if isinstance(exc, InvalidParameter):
        return OpenAIError(400, message, exc.param)
    first = re.match(r"[A-Za-z_]+", message)
    param = first.group() if first and first.group() in set(fields) else None
    return OpenAIError(400, message, param)


def _validation_error(exc: RequestValidationError) -> OpenAIError:
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return bad_request(f"malformed JSON body: {first.get('ctx', {}).get('error', first.get('msg'))}")
    # Drop "body" and the type tags pydantic adds for union members ("str", "list[int]").
    loc = [part for part in first.get("loc", ()) if part != "body" and not _is_type_tag(part)]
    param = str(loc[0]) if loc else None
    path = ".".join(str(part) for part in loc)
    message = f"{first.get('msg', 'invalid value')} [type={first.get('type', 'value_error')}]"
    return bad_request(f"{path}: {message}" if path else f"request body: {message}", param)


def _is_type_tag(part: object) -> bool:
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool", "list", "dict"})


def install_error_handlers(app: FastAPI) -> None:
    async def on_openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status)

    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = _validation_error(exc)
        return JSONResponse(error.to_dict(), status_code=error.status)

    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    app.add_exception_handler(OpenAIError, on_openai_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
