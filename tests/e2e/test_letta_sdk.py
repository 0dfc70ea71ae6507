"""The official Letta SDK reads the reference platform's listing with strict validation."""

from __future__ import annotations

from letta_client import AsyncLetta

from agent.platform.access import ApiKey
from agent.platform.keys import create_key
from tests.helpers import Platform

METADATA = {
    "os": "linux",
    "nodeVersion": "v22.19.0",
    "lettaCodeVersion": "0.1.0",
    "gitBranch": "main",
    "workingDirectory": "/srv/app",
    "self_update": {
        "supported": False,
        "writable": False,
        "install_path": "/srv/envagent",
        "manual_command": "pip install -U envagent",
        "reason": "this is a source checkout",
    },
    "supported_commands": ["sync"],
    "environmentMessageProtocol": 2,
}


def sdk(platform: Platform, key: str | None = None) -> AsyncLetta:
    return AsyncLetta(
        base_url=platform.url, api_key=key or platform.key, _strict_response_validation=True
    )


async def test_sdk_lists_rows_with_every_query_parameter(platform: Platform) -> None:
    other_user = await create_key(platform.server.store, ApiKey("org-dev", "user-two", "Two"))
    online = await platform.connect(
        "laptop", currentMode="acceptEdits", source="local", metadata=METADATA
    )
    await platform.register("vm-1", source="remote", currentMode="unrestricted")
    await platform.register("vm-2", other_user, source="remote")
    client = sdk(platform)

    everything = await client.environments.list()
    assert [c.device_id for c in everything.connections] == ["laptop", "vm-1", "vm-2"]
    assert everything.has_next_page is False
    laptop = everything.connections[0]
    registered = online.registration["environment"]
    assert laptop.id == registered["id"]
    assert laptop.connection_id == online.connection_id
    assert laptop.connection_name == "laptop-name"
    assert laptop.first_seen_at == registered["firstSeenAt"]
    assert laptop.organization_id == "org-dev" and laptop.user_id == "user-dev"
    assert laptop.api_key_owner == "development key"
    assert laptop.current_mode == "acceptEdits"
    assert laptop.pod_id == platform.server.settings.pod_id
    assert laptop.connected_at is not None and laptop.last_heartbeat is not None
    assert laptop.metadata is not None
    assert laptop.metadata.os == "linux"
    assert laptop.metadata.node_version == "v22.19.0"
    assert laptop.metadata.git_branch == "main"
    assert laptop.metadata.working_directory == "/srv/app"
    assert laptop.metadata.letta_code_version == "0.1.0"
    assert laptop.metadata.model_dump(by_alias=True) == METADATA

    page = await client.environments.list(limit="2")
    assert [c.device_id for c in page.connections] == ["laptop", "vm-1"] and page.has_next_page
    rest = await client.environments.list(limit="2", after=page.connections[-1].id)
    assert [c.device_id for c in rest.connections] == ["vm-2"] and not rest.has_next_page
    only_online = await client.environments.list(online_only="true")
    assert [c.device_id for c in only_online.connections] == ["laptop"]
    remote = await client.environments.list(source="remote")
    assert [c.device_id for c in remote.connections] == ["vm-1", "vm-2"]
    by_user = await client.environments.list(user_id="user-two", source="remote")
    assert [c.device_id for c in by_user.connections] == ["vm-2"]
    assert by_user.connections[0].connection_id is None
    assert by_user.connections[0].current_mode is None
    combined = await client.environments.list(
        after=everything.connections[0].id, limit="1", online_only="false", source="remote",
        user_id="user-dev",
    )  # fmt: skip
    assert [c.device_id for c in combined.connections] == ["vm-1"]
    assert not combined.has_next_page

    retrieved = await client.environments.retrieve("laptop")
    assert retrieved.id == laptop.id and retrieved.metadata is not None
    await online.ws.close()
