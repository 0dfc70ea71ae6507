"""Every error the platform answers is an `ErrorReply`: from its handlers (the middleware) and
from aiohttp itself, for requests too malformed to reach a handler (`JsonErrorRunner`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestHandler

from agent.platform.access import Forbidden
from agent.platform.store.base import StoreUnavailable
from agent.protocol.httpapi import ApiError
from agent.protocol.models import ErrorReply

log = logging.getLogger("envagent.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

RETRY_AFTER_S = 30
"""What a 503 asks a client to wait: a full disk or a failing one needs a person, not a spin."""
_MAX_DETAIL = 200
_INTERNAL = "the server failed to answer; see its log"


def error_response(
    status: int, error: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(
        ErrorReply(error=error, message=message).to_wire(), status=status, headers=headers
    )


def json_errors(max_body_bytes: int) -> Middleware:
    """Middleware: every failure becomes an `ErrorReply`; nothing unexpected kills a worker."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.error, exc.message)
        except Forbidden as exc:
            return error_response(403, "forbidden", str(exc))
        except StoreUnavailable as exc:  # logged by the store, once per outage
            message = f"{exc}; retry in {RETRY_AFTER_S} s"
            retry = {"Retry-After": str(RETRY_AFTER_S)}
            return error_response(503, "unavailable", message, retry)
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
            return error_response(500, "internal", _INTERNAL)

    return middleware


def _describe(exc: BaseException | None, message: str | None) -> str:
    """aiohttp's reason for refusing a request, on one short line."""
    if isinstance(exc, LineTooLong):
        return f"the request line or a header is over the {exc.args[1]}-byte limit"
    # aiohttp's own text spans lines, with a caret under the offending byte: keep the words.
    words = (line.strip(" ^") for line in (message or str(exc or "")).splitlines())
    return " ".join(word for word in words if word)[:_MAX_DETAIL] or "unreadable request"


class _JsonErrorHandler(RequestHandler):
    """aiohttp's connection handler, answering the errors it raises itself (requests it cannot
    parse, a handler's escaped exception) with an `ErrorReply` instead of text/plain."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A client's malformed request is its own business: one info line, no traceback."""
        if status >= 500:
            log.error("error answering a request from %s", request.remote, exc_info=exc)
            error, text = "internal", _INTERNAL
        else:
            detail = _describe(exc, message)
            log.info("refused a malformed request from %s: %s", request.remote, detail)
            error = HTTPStatus(status).phrase.lower().replace(" ", "_")
            text = f"malformed HTTP request: {detail}"
        if request.writer.output_size > 0:  # as aiohttp: the response has begun, too late
            raise ConnectionError("the response was sent already: cannot send an error")
        response = error_response(status, error, text)
        response.force_close()  # what follows on this connection cannot be trusted
        return response


class _JsonErrorServer(web.Server):
    """aiohttp's low-level server, making `_JsonErrorHandler`s for its connections."""

    def __init__(self, made: web.Server) -> None:
        # The handler arguments aiohttp gave the server it made are kept in `_kwargs`: no
        # public accessor (aiohttp 3.14).
        self._handler_kwargs = made._kwargs
        super().__init__(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            **self._handler_kwargs,
        )

    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=asyncio.get_running_loop(), **self._handler_kwargs)


class JsonErrorRunner(web.AppRunner):
    """An `AppRunner` whose connections answer aiohttp's own errors as `ErrorReply`.

    aiohttp 3.14 offers no public hook for the errors its protocol handler answers before a
    request reaches the application (`RequestHandler.handle_error`); `_make_server`, the
    runner's factory method, is the one place the handler's class can be chosen.
    """

    async def _make_server(self) -> web.Server:
        return _JsonErrorServer(await super()._make_server())
