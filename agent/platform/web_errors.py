"""The platform's aiohttp middleware that turns every failure into an `ErrorReply`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from agent.httpapi import ApiError
from agent.models import ErrorReply

log = logging.getLogger("envagent.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, error: str, message: str) -> web.Response:
    return web.json_response(ErrorReply(error=error, message=message).to_wire(), status=status)


def json_errors(max_body_bytes: int) -> Middleware:
    """Middleware: every failure becomes an `ErrorReply`; nothing unexpected kills a worker."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.error, exc.message)
        except web.HTTPRequestEntityTooLarge:
            message = f"request body is over the {max_body_bytes}-byte limit"
            return error_response(413, "too_large", message)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            error = exc.reason.lower().replace(" ", "_")
            detail = (exc.text or "").removeprefix(f"{exc.status}: ").replace("\n", " ").strip()
            return error_response(exc.status, error, f"{request.method} {request.path}: {detail}")
        except Exception:
            log.exception("unexpected error answering %s %s", request.method, request.path)
            return error_response(500, "internal", "the server failed to answer; see its log")

    return middleware
