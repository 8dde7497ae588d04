"""All sessions of the daemon: admission, re-attach, linger, drain and shutdown.

The manager is the ingest server's :class:`bridge.ingest.SessionHost`. It owns every session's
task in one task group, so nothing outlives :meth:`SessionManager.aclose`.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from bridge import metrics
from bridge.config import LimitsConfig, setting_default
from bridge.errors import BridgeError, ErrorCode
from bridge.ingest import ClientLink
from bridge.media import PCM
from bridge.protocol import Hello
from bridge.session import Session, StageFactory

log = structlog.get_logger(__name__)

# After cancelling the closes that outlived limits.close_timeout_s: time for them to unwind.
ABANDON_GRACE_S = 1.0


class SessionManager:
    def __init__(
        self,
        factory: StageFactory,
        *,
        max_sessions: int,
        linger_s: float,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._factory = factory
        self.max_sessions = max_sessions
        self.linger_s = linger_s
        self._on_change = on_change
        self._sessions: dict[str, Session] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._draining = False
        self._all_closed = asyncio.Event()
        self._all_closed.set()

    # ----- SessionHost ---------------------------------------------------------------------

    async def open(self, hello: Hello, link: ClientLink) -> _Attachment:
        if hello.session_key:
            session = self._by_key(hello.session_key)
            if session is None:
                raise BridgeError(
                    ErrorCode.UNKNOWN_SESSION,
                    "no session with that key: it ended or its linger time passed; "
                    "send HELLO without session_key to start a new one",
                )
            return _Attachment(session, link, session.attach(link, resumed=True))
        if self._draining:
            metrics.SESSIONS_REJECTED.labels(reason="draining").inc()
            raise BridgeError(ErrorCode.DRAINING, "the daemon is shutting down; retry elsewhere")
        if len(self._sessions) >= self.max_sessions:
            metrics.SESSIONS_REJECTED.labels(reason="busy").inc()
            raise BridgeError(
                ErrorCode.BUSY,
                f"all {self.max_sessions} sessions are in use (limits.max_sessions); retry later",
            )
        session = Session(
            hello,
            self._factory,
            linger_s=self.linger_s,
            on_closed=self._closed,
            is_draining=lambda: self._draining,
        )
        self._sessions[session.id] = session
        self._all_closed.clear()
        ready = session.attach(link, resumed=False)
        self._tasks[session.id] = asyncio.get_running_loop().create_task(
            session.run(), name=f"session-{session.id}"
        )
        self._on_change()
        return _Attachment(session, link, ready)

    def _by_key(self, key: str) -> Session | None:
        for session in self._sessions.values():
            if hmac.compare_digest(session.key.encode(), key.encode()):
                return session
        return None

    def _closed(self, session: Session) -> None:
        self._sessions.pop(session.id, None)
        self._tasks.pop(session.id, None)
        if not self._sessions:
            self._all_closed.set()
        self._on_change()

    # ----- admin ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def draining(self) -> bool:
        return self._draining

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def describe(self) -> list[dict[str, Any]]:
        return [s.describe() for s in self._sessions.values()]

    def counts(self) -> dict[str, int]:
        attached = sum(1 for s in self._sessions.values() if s.attached)
        return {"sessions": len(self._sessions), "attached": attached}

    async def stop(self, session_id: str, reason: str = "USER_CLOSED") -> bool:
        """Close one session and wait until its remote resources are released."""
        session, task = self._sessions.get(session_id), self._tasks.get(session_id)
        if session is None or task is None:
            return False
        session.close(reason)
        await asyncio.shield(task)
        return True

    # ----- shutdown ------------------------------------------------------------------------

    def start_drain(self) -> None:
        """Refuse new sessions and tell every client the daemon is going away."""
        if self._draining:
            return
        self._draining = True
        metrics.DRAINING.set(1)
        for session in list(self._sessions.values()):
            session.drain()

    async def drain(self, timeout_s: float, close_timeout_s: float) -> None:
        """Let sessions end on their own for up to ``timeout_s``, then close the rest (bounded
        by ``close_timeout_s``, see :meth:`aclose`)."""
        self.start_drain()
        try:
            async with asyncio.timeout(timeout_s):
                await self._all_closed.wait()
        except TimeoutError:
            log.info("drain_timeout", sessions=len(self._sessions))
        await self.aclose(close_timeout_s)

    async def aclose(
        self, timeout_s: float = setting_default(LimitsConfig, "close_timeout_s")
    ) -> None:
        """Close every session and wait up to ``timeout_s`` for each to release its remote
        resources; cancel what is still closing then (a remote that does not answer must not
        outlast the service manager's stop timeout). What a cancelled close did not stop stays
        in the LiveAvatar ledger, stopped by the next start."""
        for session in list(self._sessions.values()):
            session.close("USER_CLOSED")
        # Not those an earlier call cancelled already: the bound is not to be paid twice.
        tasks = {t: s for s, t in self._tasks.items() if not t.done() and not t.cancelling()}
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        if not pending:
            return
        metrics.SESSIONS_CLOSE_ABANDONED.inc(len(pending))
        log.warning(
            "sessions_close_abandoned",
            sessions=len(pending),
            session_ids=sorted(tasks[t] for t in pending),
            close_timeout_s=timeout_s,
        )
        for task in pending:
            task.cancel()
        # Bounded too: a close that ignored its cancellation is left to the interpreter's exit.
        _, stuck = await asyncio.wait(pending, timeout=ABANDON_GRACE_S)
        if stuck:
            log.error("sessions_close_stuck", sessions=len(stuck))


class _Attachment:
    """One client connection's handle on a session (the ingest's SessionHandle)."""

    def __init__(self, session: Session, link: ClientLink, ready: Mapping[str, Any]) -> None:
        self.session = session
        self.link = link
        self.ready = ready

    async def on_audio(self, pcm: PCM) -> None:
        await self.session.on_audio(pcm)

    async def on_end_turn(self) -> None:
        await self.session.on_end_turn()

    async def on_interrupt(self) -> None:
        await self.session.on_interrupt()

    async def on_mark(self, name: str) -> None:
        await self.session.on_mark(name)

    async def on_close(self) -> None:
        await self.session.on_close()

    def on_disconnect(self) -> None:
        self.session.detach(self.link)
