"""A small on-disk ledger of started LiveAvatar sessions, so a crash never leaks a paid session.

A session id is recorded (atomic write + fsync) before ``start`` returns to the caller and
removed after a successful stop. At daemon start-up :meth:`SessionLedger.sweep` stops whatever a
previous process left behind; while the daemon runs, a session whose own stop failed (the service
unreachable or not answering) is an orphan, stopped again by :meth:`SessionLedger.retry_orphans`
on the daemon's schedule rather than billed until the next start. The file is JSON, mode 0600 (it
may hold session tokens).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from bridge.liveavatar.api import LiveAvatarError

log = structlog.get_logger(__name__)

LEDGER_FILE = "liveavatar-sessions.json"


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    session_id: str
    session_token: str | None
    recorded_at: float


class _Stopper(Protocol):
    async def stop(self, session_id: str, reason: str = ...) -> bool: ...


class _Log(Protocol):
    def info(self, event: str, /, **kw: Any) -> Any: ...

    def warning(self, event: str, /, **kw: Any) -> Any: ...


class SessionLedger:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LEDGER_FILE
        self._lock = threading.Lock()  # file writes happen in worker threads
        self._entries: dict[str, LedgerEntry] = self._load()
        # Entries whose owner gave up stopping them in this process (see retry_orphans).
        self._orphans: set[str] = set()

    def _load(self) -> dict[str, LedgerEntry]:
        try:
            raw = json.loads(self.path.read_text())
            sessions = raw.get("sessions", {})
            return {
                sid: LedgerEntry(sid, e.get("session_token"), float(e.get("recorded_at", 0)))
                for sid, e in sessions.items()
            }
        except FileNotFoundError:
            return {}
        except (ValueError, AttributeError, TypeError):
            # A corrupt ledger must not stop the daemon; keep it aside for inspection.
            log.warning("liveavatar_ledger_corrupt", path=str(self.path))
            bad = self.path.with_suffix(f".corrupt-{int(time.time())}")
            os.replace(self.path, bad)
            return {}

    def _write(self, entries: dict[str, LedgerEntry]) -> None:
        data = {
            "sessions": {
                e.session_id: {"session_token": e.session_token, "recorded_at": e.recorded_at}
                for e in entries.values()
            }
        }
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Unique name: two ledgers (or processes) on one directory never share a temp file.
            tmp = self.path.with_suffix(f".{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, json.dumps(data).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    async def record(self, session_id: str, session_token: str | None = None) -> None:
        """Persist ``session_id`` durably (returns after fsync)."""
        self._entries[session_id] = LedgerEntry(session_id, session_token, time.time())
        await asyncio.to_thread(self._write, dict(self._entries))

    async def remove(self, session_id: str) -> None:
        self._orphans.discard(session_id)
        if self._entries.pop(session_id, None) is not None:
            await asyncio.to_thread(self._write, dict(self._entries))

    def pending(self) -> list[LedgerEntry]:
        return list(self._entries.values())

    def orphan(self, session_id: str) -> None:
        """The session's own stop failed and its owner is gone: retry_orphans stops it."""
        if session_id in self._entries:
            self._orphans.add(session_id)

    @property
    def orphans(self) -> int:
        return len(self._orphans)

    async def sweep(self, api: _Stopper, log: _Log = log) -> int:
        """Stop every session a previous process left behind (reason SERVER_ERROR).

        Entries are removed when the stop succeeded or was definitively refused (the session no
        longer exists); kept when the service was unreachable, so the next start retries them.
        Returns the number of sessions removed from the ledger.
        """
        ids = [e.session_id for e in self.pending()]
        return await self._stop_all(ids, api, log, "previous_process")

    async def retry_orphans(self, api: _Stopper, log: _Log = log) -> int:
        """Stop again the sessions whose stop failed in this process; the number removed."""
        return await self._stop_all(sorted(self._orphans), api, log, "stop_failed")

    async def _stop_all(self, ids: list[str], api: _Stopper, log: _Log, origin: str) -> int:
        """Stop ``ids`` (``origin``: left by a previous process, or by a failed stop in this
        one), removing each entry whose session is stopped or gone."""
        removed = 0
        for session_id in ids:
            try:
                await api.stop(session_id, "SERVER_ERROR")
            except LiveAvatarError as exc:
                if not exc.definitive:
                    log.warning(
                        "liveavatar_leftover_stop_failed",
                        origin=origin,
                        session_id=session_id,
                        status=exc.status,
                        error=exc.message,
                    )
                    continue
                log.info(
                    "liveavatar_leftover_gone",
                    origin=origin,
                    session_id=session_id,
                    status=exc.status,
                )
            else:
                log.info("liveavatar_leftover_stopped", origin=origin, session_id=session_id)
            await self.remove(session_id)
            removed += 1
        return removed
