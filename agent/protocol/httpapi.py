"""What the platform's HTTP API and the daemon's local API share: the errors they answer with
and the listing's query parsing, so both answer bad input the same way. No HTTP library here:
the daemon's local API and the platform are served by different ones."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError

from agent.protocol.models import ErrorReply, ListQuery, ListQueryError


class ApiError(Exception):
    """Raised by a handler to answer with `status` and a one-line message."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


class ClientError(Exception):
    """Something a client (the CLI) cannot do; the message is the one line it prints."""


def explain(content: bytes, status: int) -> str:
    """An error answer's own one-line message, else its status."""
    try:
        return ErrorReply.model_validate_json(content).message
    except ValidationError:
        return f"HTTP {status}"


def bearer_token(header: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, the scheme in any case; None for
    any other header, a bare token included."""
    parts = header.split(None, 1)
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return parts[1].strip()


def list_query(query: Mapping[str, str]) -> ListQuery:
    try:
        return ListQuery.from_query(query)
    except ListQueryError as exc:
        raise ApiError(400, "invalid_query", str(exc)) from None


def unknown_cursor(after: str | None) -> ApiError:
    return ApiError(400, "invalid_query", f"after: no row with id {after!r}")
