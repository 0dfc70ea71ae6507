"""The dashboard's files: `GET /` and each file of agent/platform/dashboard/, with no key and
strict headers; nothing outside the folder, however the path is written."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from aiohttp import web

from agent.platform import static
from tests.helpers import WAIT_S, Platform

REPO = Path(__file__).resolve().parents[2]


def _assert_strict(headers: httpx.Headers) -> None:
    policy = headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy
    assert "unsafe-inline" not in policy and "script-src 'self';" in policy
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-cache"


async def test_the_page_and_its_files_need_no_key_and_carry_strict_headers(
    platform: Platform,
) -> None:
    index = await platform.http.get(f"{platform.url}/")  # no Authorization header
    assert index.status_code == 200
    assert index.headers["content-type"] == "text/html; charset=utf-8"
    assert index.content == (static.FOLDER / "index.html").read_bytes()
    _assert_strict(index.headers)
    served = static.files()
    assert "index.html" in served
    for name in served:
        reply = await platform.http.get(f"{platform.url}/{name}")
        assert reply.status_code == 200, name
        assert reply.content == (static.FOLDER / name).read_bytes(), name
        assert reply.headers["content-type"] == static.CONTENT_TYPES[Path(name).suffix]
        _assert_strict(reply.headers)
    again = await platform.http.get(
        f"{platform.url}/", headers={"If-None-Match": index.headers["etag"]}
    )
    assert again.status_code == 304  # no-cache: asked again, answered cheaply
    _assert_strict(again.headers)
    head = await platform.http.head(f"{platform.url}/")
    assert head.status_code == 200 and head.content == b""


async def _raw_get(port: int, target: str) -> tuple[int, bytes]:
    """A request line sent as written: HTTP clients normalize `..` away before sending."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        answer = await asyncio.wait_for(reader.read(), WAIT_S)
    finally:
        writer.close()
    return int(answer.split(b" ", 2)[1]), answer


async def test_no_path_reaches_outside_the_folder(platform: Platform) -> None:
    secrets = {
        "pyproject.toml": (REPO / "pyproject.toml").read_bytes()[:200],
        "static.py": (REPO / "agent" / "platform" / "static.py").read_bytes()[:200],
        "__init__.py": (static.FOLDER / "__init__.py").read_bytes()[:60],
    }
    targets = [
        "/../../../pyproject.toml",
        "/..%2f..%2f..%2fpyproject.toml",
        "/%2e%2e/%2e%2e/%2e%2e/pyproject.toml",
        "/%2e%2e%2f%2e%2e%2f%2e%2e%2fpyproject.toml",
        "/index.html/../../static.py",
        "/..%5cstatic.py",
        "/../static.py",
        "/%2E%2E/static.py",
        "/__init__.py",
        "/dashboard/index.html",
        "//etc/passwd",
        "/index.html%00.js",
        "/./../static.py",
        "/..;/static.py",
    ]
    for target in targets:
        status, answer = await _raw_get(platform.server.port, target)
        assert status in (400, 404), (target, answer[:200])
        assert not any(secret in answer for secret in secrets.values()), target


async def _routes(folder: Path) -> set[str]:
    app = web.Application()
    static.add_routes(app.router, folder)
    return {route.resource.canonical for route in app.router.routes() if route.method == "GET"}


async def test_only_files_of_a_known_type_inside_the_folder_get_a_route(tmp_path: Path) -> None:
    folder = tmp_path / "dashboard"
    (folder / "assets").mkdir(parents=True)
    (folder / "__pycache__").mkdir()
    outside = tmp_path / "outside.js"
    outside.write_text("secret")
    for name in ("index.html", "app.js", "assets/icon.svg", "__pycache__/x.js", ".hidden.js"):
        (folder / name).write_text("x")
    (folder / "__init__.py").write_text("")
    (folder / "notes.txt").write_text("x")
    (folder / "link.js").symlink_to(outside)  # a symlink out of the folder
    (folder / "inside.js").symlink_to(folder / "app.js")  # one that stays inside

    assert await _routes(folder) == {
        "/",
        "/index.html",
        "/app.js",
        "/assets/icon.svg",
        "/inside.js",
    }
