"""The dashboard's files (`agent/platform/dashboard/`): `GET /` is its index.html, every other
file is served at its path in the folder. No key: the page holds no data, it asks for a key and
reads the API with it.

Only the files found in the folder when the app is built get a route, each its own: a request
names one of them or is a 404, so no path, however encoded, reaches outside the folder. A file
added later is served after a restart; a file edited is served as it now is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

FOLDER = Path(__file__).with_name("dashboard")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".json": "application/json",
}
"""What is served, by suffix, typed here rather than guessed from the system's MIME table (a
script sent with another type is refused under `nosniff`)."""
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'none'"
)
"""Scripts, styles and requests from this origin only: no inline script or style, no frame."""
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # asked again each time (an ETag makes that cheap): never stale
}


def add_routes(router: web.UrlDispatcher, folder: Path = FOLDER) -> None:
    """A route for each file the folder holds (and `/` for its index.html)."""
    for name, path in sorted(files(folder).items()):
        handler = _serving(path)
        router.add_get(f"/{name}", handler)
        if name == "index.html":
            router.add_get("/", handler)


def files(folder: Path = FOLDER) -> dict[str, Path]:
    """The files to serve, by their path in `folder`: of a known type, inside the folder once
    symlinks are resolved, with no segment hidden (`.`) or private (`_`: `__pycache__`)."""
    root = folder.resolve()
    return {
        path.relative_to(folder).as_posix(): path
        for path in folder.rglob("*")
        if path.suffix in CONTENT_TYPES
        and not any(part.startswith((".", "_")) for part in path.relative_to(folder).parts)
        and path.is_file()
        and path.resolve().is_relative_to(root)
    }


def _serving(path: Path) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    headers = {**HEADERS, "Content-Type": CONTENT_TYPES[path.suffix]}

    async def serve(_: web.Request) -> web.StreamResponse:
        return web.FileResponse(path, headers=headers)

    return serve
