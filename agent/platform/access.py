"""Who may steer a row (docs/protocol.md, "Who may steer"): within an organization reading is
shared, steering is not.

Steering is anything that acts on a daemon: registering over its row, opening its socket,
sending it a frame. The rule is one pure function so that it can be read, and tested, alone;
organizations are kept apart before it is asked, by the store's lookups.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agent.protocol.constants import ROLES as ROLES
from agent.protocol.constants import Role as Role

log = logging.getLogger("envagent.platform")

ADMIN: Role = "admin"


@dataclass(frozen=True)
class ApiKey:
    """Who a key speaks for. The key itself is never stored, only its hash."""

    organization_id: str
    user_id: str
    owner: str | None
    role: Role = "member"


class Forbidden(PermissionError):
    """The key may read the row but not steer it; the message names the rule."""


def may_steer(key: ApiKey, owner_user_id: str) -> bool:
    """Only a key of the user that registered the row, or an admin key of its organization."""
    return key.role == ADMIN or key.user_id == owner_user_id


def refusal(key: ApiKey, owner_user_id: str) -> str:
    """The rule, in words short enough for a WebSocket close reason with usual ids."""
    return (
        f"only user {owner_user_id}, who registered this environment, "
        f"or an admin key of {key.organization_id} may steer it"
    )


def check_may_steer(key: ApiKey, owner_user_id: str, row_id: str) -> None:
    """Raise Forbidden unless `key` may steer the row; a refusal is logged, never the key."""
    if may_steer(key, owner_user_id):
        return
    log.warning(
        "refused user %s (key %r) of %s steering row %s, which user %s registered",
        key.user_id,
        key.owner,
        key.organization_id,
        row_id,
        owner_user_id,
    )
    raise Forbidden(refusal(key, owner_user_id))
