"""What the daemon's libraries cost in memory before any of envagent's own code runs.

    python tests/bench/stack_floor.py

Loads, step by step, what `envagent run` loads (asyncio; pydantic with a model validated;
websockets' client; httpx with an AsyncClient opened and closed, and tenacity; gitpython), reads
its own RSS and PSS after each step and prints them as one JSON object (step -> [rss KiB, pss
KiB]). It imports nothing from the project, so its last figure is the floor under any daemon
built on these libraries. The daemon benchmark runs it with the runtime-only install's
interpreter, beside the daemon it measures.
"""

from __future__ import annotations

import json


def memory_kib() -> list[int]:
    fields: dict[str, int] = {}
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss"):
                fields[name] = int(rest.split()[0])
    return [fields["Rss"], fields["Pss"]]


def main() -> None:
    steps = {"python": memory_kib()}

    import asyncio

    steps["+ asyncio (with ssl)"] = memory_kib()

    import pydantic

    class Row(pydantic.BaseModel):
        id: str
        online: bool

    Row.model_validate_json('{"id": "a", "online": true}')
    steps["+ pydantic, one model used"] = memory_kib()

    import websockets.asyncio.client  # noqa: F401

    steps["+ websockets client"] = memory_kib()

    import httpx
    import tenacity  # noqa: F401

    async def open_client() -> None:
        async with httpx.AsyncClient(timeout=5.0):
            pass

    asyncio.run(open_client())
    steps["+ httpx AsyncClient, tenacity"] = memory_kib()

    import git  # noqa: F401

    steps["+ gitpython"] = memory_kib()
    print(json.dumps(steps))


if __name__ == "__main__":
    main()
