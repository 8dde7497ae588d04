"""The admin HTTP API: health, readiness, Prometheus metrics, and session control.

Loopback by default. Reads are open to whoever can reach the port; mutating endpoints require the
bearer token when ``admin.token`` is set.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, generate_latest

from bridge import __version__
from bridge.sessions import SessionManager

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _asyncio_tasks() -> float:
    # Evaluated at scrape time, on the loop that serves /metrics (the daemon's only loop).
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # scraped off the loop (e.g. a test's registry dump)
        return float("nan")


ASYNCIO_TASKS = Gauge("bridge_asyncio_tasks", "Asyncio tasks alive in the daemon (leak watch).")
ASYNCIO_TASKS.set_function(_asyncio_tasks)


class AdminApp:
    """Builds the aiohttp application; the daemon owns its runner."""

    def __init__(
        self,
        sessions: SessionManager,
        *,
        is_ready: Callable[[], tuple[bool, str]],
        on_drain: Callable[[], None],
        token: str | None = None,
    ) -> None:
        self._sessions = sessions
        self._is_ready = is_ready
        self._on_drain = on_drain
        self._token = token

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/sessions", self.list_sessions)
        app.router.add_get("/sessions/{id}", self.get_session)
        app.router.add_delete("/sessions/{id}", self.delete_session)
        app.router.add_post("/drain", self.drain)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in ("GET", "HEAD") or self._token is None:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        given = header.removeprefix("Bearer ").strip()
        if not header.startswith("Bearer ") or not hmac.compare_digest(
            given.encode(), self._token.encode()
        ):
            return web.json_response(
                {"error": "unauthorized", "message": "send Authorization: Bearer <admin.token>"},
                status=401,
            )
        return await handler(request)

    async def healthz(self, request: web.Request) -> web.Response:
        # Liveness: the event loop answers. Cheap on purpose.
        return web.json_response({"status": "ok", "version": __version__})

    async def readyz(self, request: web.Request) -> web.Response:
        ready, reason = self._is_ready()
        body: dict[str, Any] = {"ready": ready, "reason": reason, **self._sessions.counts()}
        return web.json_response(body, status=200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(REGISTRY))
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return resp

    async def list_sessions(self, request: web.Request) -> web.Response:
        return web.json_response({"sessions": self._sessions.describe()})

    async def get_session(self, request: web.Request) -> web.Response:
        session = self._sessions.get(request.match_info["id"])
        if session is None:
            return web.json_response({"error": "not_found"}, status=404)
        return web.json_response(session.describe())

    async def delete_session(self, request: web.Request) -> web.Response:
        found = await self._sessions.stop(request.match_info["id"], "USER_CLOSED")
        if not found:
            return web.json_response({"error": "not_found"}, status=404)
        return web.json_response({"stopped": request.match_info["id"]})

    async def drain(self, request: web.Request) -> web.Response:
        """Start draining now (Kubernetes preStop); the process exits on SIGTERM as usual."""
        self._on_drain()
        return web.json_response({"draining": True, **self._sessions.counts()})
