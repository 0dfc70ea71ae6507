"""What the platform is told about this machine: its identity and mode (persisted), its name, and
its metadata (read again on every heartbeat), with the changes the platform asks for."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from agent.daemon.state import DaemonState, LastConnection, StateStore
from agent.machine.metadata import MetadataCollector
from agent.protocol.models import ChangeDeviceStateFrame, DeviceStatus, Metadata, Mode

log = logging.getLogger("envagent")


class Environment:
    """The machine as one environment row: the session reads it, the platform and the local API
    change it. `changed` is set whenever the platform should hear about a change at once."""

    def __init__(
        self, store: StateStore, state: DaemonState, name: str, collector: MetadataCollector
    ):
        self.name = name
        self.collector = collector
        self.changed = asyncio.Event()
        self._store = store
        self._state = state
        self._metadata = Metadata()
        self._reported: Metadata | None = None

    @classmethod
    async def load(
        cls, store: StateStore, mode: Mode | None, name: str, collector: MetadataCollector
    ) -> Environment:
        """The persisted identity, with the mode the settings ask for (if any) made persistent."""

        def read() -> DaemonState:
            state = store.load()
            if mode is not None and mode != state.mode:
                state = store.update(mode=mode)
            return state

        return cls(store, await asyncio.to_thread(read), name, collector)

    @property
    def state(self) -> DaemonState:
        return self._state

    @property
    def device_id(self) -> str:
        return self._state.device_id

    @property
    def mode(self) -> Mode:
        return self._state.mode

    @property
    def metadata(self) -> Metadata:
        return self._metadata

    @property
    def workdir(self) -> Path:
        return self.collector.workdir

    async def set_mode(self, mode: Mode, origin: str) -> None:
        """The last one to set the mode wins; it is persisted and reported at once."""
        if mode != self.mode:
            log.info("mode %s → %s (from %s)", self.mode, mode, origin)
            self._state = await asyncio.to_thread(self._store.update, mode=mode)
        self.changed.set()

    async def remember(self, last: LastConnection) -> None:
        """Persist the connection the platform gave, for `envagent status` after a restart."""
        self._state = await asyncio.to_thread(self._store.update, last_connection=last)

    async def refresh(self) -> bool:
        """Re-read the machine; True when the platform was told something now out of date."""
        self._metadata = await self.collector.collect()
        return self._metadata != self._reported

    async def device_status(self, connection_id: str) -> DeviceStatus:
        metadata = self._metadata
        self._reported = metadata
        return DeviceStatus.report(
            metadata, connection_id=connection_id, connection_name=self.name, mode=self.mode
        )

    async def change_device_state(self, frame: ChangeDeviceStateFrame) -> None:
        if frame.payload.mode is not None:
            await self.set_mode(frame.payload.mode, "the platform")
        if frame.payload.cwd is not None:
            await self._change_workdir(Path(frame.payload.cwd))
        await self.refresh()

    async def _change_workdir(self, path: Path) -> None:
        if not path.is_absolute() or not await asyncio.to_thread(path.is_dir):
            log.warning("ignored a working directory that is not an absolute folder: %s", path)
            return
        log.info("working directory %s → %s (from the platform)", self.collector.workdir, path)
        self.collector.workdir = path
