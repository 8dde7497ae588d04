"""The project's browser pages (``web/``), served on 127.0.0.1 for a local browser.

The pages are bundled from pinned npm packages by ``make web`` (``npm ci`` + esbuild, see
``web/README.md``); :func:`bundle_missing` says why they cannot be served when they are not built.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
BUNDLES = ("dist/stream-page.js", "dist/livekit-page.js")


def bundle_missing(web_dir: Path = WEB_DIR) -> str | None:
    """Why the pages cannot be served (a reason to skip), or None when they are built."""
    for bundle in BUNDLES:
        if not (web_dir / bundle).is_file():
            return f"{web_dir / bundle} is not built (make web: needs node and npm)"
    return None


class PageServer:
    """Serves ``web/`` (pages and their bundles) on 127.0.0.1 only. ``async with`` it."""

    def __init__(self, web_dir: Path = WEB_DIR, port: int = 0) -> None:
        self.web_dir = web_dir
        self._port = port
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> PageServer:
        app = web.Application()
        app.router.add_static("/", self.web_dir, show_index=False)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self._port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, page: str) -> str:
        return f"http://127.0.0.1:{self._port}/{page}"
