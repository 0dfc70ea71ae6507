"""What the platform's HTTP API and the daemon's local API share: the errors they answer with
and the listing's query parsing, so both answer bad input the same way. No HTTP library here:
the daemon's local API and the platform are served by different ones."""

from __future__ import annotations

from collections.abc import Mapping

from agent.protocol.models import ListQuery, ListQueryError
from agent.protocol.views import ClientError as ClientError
from agent.protocol.views import explain as explain


class ApiError(Exception):
    """Raised by a handler to answer with `status` and a one-line message."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


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
