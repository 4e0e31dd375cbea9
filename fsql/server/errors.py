"""Every error a request can meet, as a JSON body ``{error, message, hint}`` and the status of its class.

Statuses come from ``FsqlError.status`` (bad input 400, not found 404, conflict 409, unavailable 503),
never from message text; the two below exist only at the HTTP edge.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from fsql.errors import BadInputError, FsqlError, InternalError, RequestError

log = logging.getLogger("fsql.server")


class UnauthorizedError(BadInputError):
    """No API key, or not a valid one."""

    status = 401


class BodyTooLargeError(RequestError):
    """The request body exceeds [server] max_body_bytes."""

    status = 413


def _default(value: Any) -> Any:
    return str(value)  # Decimal and anything else orjson does not know: exact text


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=_default, option=orjson.OPT_NON_STR_KEYS)


def error_response(error: FsqlError) -> JSON:
    body = {"error": type(error).__name__, "message": error.message, "hint": error.hint}
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, UnauthorizedError) else None
    return JSON(body, status_code=error.status, headers=headers)


async def fsql_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FsqlError)
    return error_response(exc)


async def http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    hint = "see /openapi.json for the routes" if exc.status_code in (404, 405) else None
    return JSON({"error": "HTTPError", "message": exc.detail, "hint": hint}, status_code=exc.status_code)


async def unexpected(_request: Request, exc: Exception) -> Response:
    # A bug, not bad input: logged with its traceback on the server, one line to the client.
    log.exception("unexpected error")
    return error_response(InternalError(f"internal error: {type(exc).__name__}", hint="see the server log"))
