"""One daemon process: ledger sweep, ingest, sessions, admin HTTP, systemd, signals and drain.

Start order: sweep leftover paid sessions -> bind the socket -> admin -> READY=1.
Stop order (SIGTERM/SIGINT or ``POST /drain``): not ready + STOPPING=1 at once -> stop accepting
-> drain tasks (the warm pool stops its sessions), alongside: sessions finish for up to
``limits.drain_timeout_s`` -> close the rest (each stops its LiveAvatar session) for up to
``limits.close_timeout_s``, then cancel what is still closing (logged and counted; the ledger
keeps what was not stopped) -> close listeners -> exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import signal
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from bridge.admin import AdminApp
from bridge.config import Settings, secret_values
from bridge.ingest import IngestOptions, IngestServer
from bridge.logs import REDACTOR
from bridge.session import StageFactory
from bridge.sessions import SessionManager
from bridge.systemd import Notifier, listen_fds, watchdog_interval_s

log = structlog.get_logger(__name__)

# Work to run before the socket opens; the LiveAvatar ledger sweep plugs in here.
StartupTask = Callable[[], Awaitable[None]]


class Daemon:
    def __init__(
        self,
        settings: Settings,
        factory: StageFactory,
        *,
        startup: list[StartupTask] | None = None,
        drain: list[StartupTask] | None = None,
        shutdown: list[StartupTask] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = SessionManager(
            factory,
            max_sessions=settings.limits.max_sessions,
            linger_s=settings.limits.linger_s,
            on_change=self._report_status,
        )
        self._startup = startup or []
        self._drain_tasks = drain or []
        self._shutdown = shutdown or []
        self._notifier = Notifier()
        self._stop = asyncio.Event()
        self._ready = False
        self.ingest: IngestServer | None = None
        self._admin: web.AppRunner | None = None
        self.admin_port: int | None = None
        REDACTOR.add(secret_values(settings))

    # ----- state -------------------------------------------------------------------------

    def is_ready(self) -> tuple[bool, str]:
        if self.sessions.draining:
            return False, "draining"
        if not self._ready:
            return False, "starting"
        if len(self.sessions) >= self.sessions.max_sessions:
            return False, "full"
        return True, "ok"

    def _status_line(self) -> str:
        c = self.sessions.counts()
        state = "draining" if self.sessions.draining else "serving"
        return f"{state}: {c['sessions']} sessions ({c['attached']} attached)"

    def _report_status(self) -> None:
        self._notifier.status(self._status_line())

    def request_stop(self) -> None:
        self._stop.set()

    def start_drain(self) -> None:
        """Refuse new work now; the process keeps running until SIGTERM."""
        if not self.sessions.draining:
            self._notifier.stopping(self._status_line())
            self.sessions.start_drain()
            log.info("draining")

    # ----- run ---------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            async with asyncio.TaskGroup() as tg:
                await self._start()
                interval = watchdog_interval_s()
                if interval is not None:
                    tg.create_task(self._watchdog(interval), name="watchdog")
                await self._stop.wait()
                await self._drain()
                raise _Stopped
        except* _Stopped:
            pass
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self._close()
        log.info("stopped")
        return 0

    async def _start(self) -> None:
        for task in self._startup:
            await task()
        fds = listen_fds()
        opts = IngestOptions.from_settings(self.settings, fds)
        if opts.unix_group is not None:
            try:
                grp.getgrnam(opts.unix_group)
            except KeyError:
                raise SystemExit(
                    f"ingest.socket_group: group {opts.unix_group!r} does not exist"
                ) from None
        self.ingest = IngestServer(self.sessions, opts)
        await self.ingest.start()
        if self.settings.admin.enabled:
            await self._start_admin()
        self._ready = True
        self._notifier.ready(self._status_line())
        log.info(
            "ready",
            socket=str(opts.unix_path) if opts.unix_path else None,
            inherited_fds=len(fds),
            tcp_port=opts.tcp_port,
            admin_port=self.admin_port,
            dry_run=self.settings.dry_run,
        )

    async def _start_admin(self) -> None:
        adm = self.settings.admin
        app = AdminApp(
            self.sessions,
            is_ready=self.is_ready,
            on_drain=self.start_drain,
            token=adm.token.get_secret_value() if adm.token else None,
        ).build()
        self._admin = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._admin.setup()
        site = web.TCPSite(self._admin, adm.host, adm.port, shutdown_timeout=1.0)
        await site.start()
        addresses = self._admin.addresses
        self.admin_port = int(addresses[0][1]) if addresses else adm.port

    async def _watchdog(self, interval: float) -> None:
        # Sent from the loop itself: a stuck loop stops the pings and systemd restarts us.
        while True:
            self._notifier.watchdog()
            await asyncio.sleep(interval)

    async def _drain(self) -> None:
        self.start_drain()
        if self.ingest is not None:
            await self.ingest.stop_accepting()
        limits = self.settings.limits
        # The drain tasks (e.g. stop the warm pool: no new session will need it) run alongside
        # the sessions' drain, not before it: their stops would add to the stop deadline.
        async with asyncio.TaskGroup() as tg:
            for task in self._drain_tasks:
                tg.create_task(_drain_task(task))
            tg.create_task(self.sessions.drain(limits.drain_timeout_s, limits.close_timeout_s))

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            await self.sessions.aclose(self.settings.limits.close_timeout_s)
        if self.ingest is not None:
            await self.ingest.aclose()
        if self._admin is not None:
            await self._admin.cleanup()
        for task in self._shutdown:
            try:
                await task()
            except Exception:
                log.exception("shutdown_task_failed")
        self._notifier.close()


async def _drain_task(task: StartupTask) -> None:
    try:
        await task()
    except Exception:
        log.exception("drain_task_failed")


class _Stopped(Exception):
    """Ends the daemon's task group after a clean drain."""
