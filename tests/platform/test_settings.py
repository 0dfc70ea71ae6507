"""Where the platform keeps its data, and its pod's name."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from agent.platform.settings import PlatformSettings, default_db


def test_the_default_database_is_a_sqlite_file_in_the_state_folder(tmp_path: Path) -> None:
    settings = PlatformSettings()
    assert (
        settings.db == default_db() == tmp_path / "state" / "envagent" / "platform" / "platform.db"
    )
    assert settings.database == settings.db


def test_a_database_url_wins_and_the_development_key_stays_beside_the_file(tmp_path: Path) -> None:
    url = "postgresql://envagent@db.example/fleet"
    settings = PlatformSettings(db=tmp_path / "p.db", database_url=url)
    assert settings.database == url
    assert settings.dev_key_file == tmp_path / "p.db.dev-api-key"


def test_each_process_is_a_pod_of_its_own_name() -> None:
    assert PlatformSettings().pod_id == f"{socket.gethostname()}-{os.getpid()}"
