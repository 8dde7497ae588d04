"""Headless Chromium from Debian's package, driven over the DevTools protocol (CDP).

Generic: any browser test (Stream's or LiveKit's browser SDK) opens a page and evaluates script
in it. The browser is the system one (``chromium``, ``/usr/bin/chromium``); nothing is downloaded.
It runs as a child of this process, so inside the test network namespace when the caller is
(``bridge.sim.netns``): WebRTC then gathers the veth addresses, and pages are served on 127.0.0.1.

    async with Chromium.launch() as browser:
        page = await browser.open("http://127.0.0.1:8000/viewer.html")
        title = await page.evaluate("document.title")

A small CDP client over aiohttp's WebSocket (one connection per page target): requests carry an
id and are answered by id; events go to per-method listeners; console messages and uncaught
exceptions are kept (bounded) for failure messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import structlog

log = structlog.get_logger(__name__)

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
# Flags of a reproducible, offline, headless run that may use the fake camera and microphone.
FLAGS = (
    "--headless",
    "--no-sandbox",  # root in a container: Chromium's own sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--mute-audio",
)
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")
_START_TIMEOUT_S = 30.0
_CALL_TIMEOUT_S = 30.0
_KEPT_MESSAGES = 500


class BrowserError(Exception):
    """Chromium failed to start, a CDP call failed, or script in the page threw."""


def find_chromium() -> str | None:
    """The system Chromium's path, or None (callers skip with a reason)."""
    env = os.environ.get("AVATAR_BRIDGE_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Page:
    """One page target over its own CDP WebSocket."""

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        session: aiohttp.ClientSession,
        target_id: str = "",
    ):
        self._ws = ws
        self._http = session
        self.target_id = target_id
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._listeners: dict[str, list[Callable[[dict[str, Any]], None]]] = {}
        self.console: deque[str] = deque(maxlen=_KEPT_MESSAGES)
        self.errors: deque[str] = deque(maxlen=_KEPT_MESSAGES)
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="cdp-read")
        self.on("Runtime.consoleAPICalled", self._on_console)
        self.on("Runtime.exceptionThrown", self._on_exception)

    async def _read(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                if "id" in data:
                    fut = self._pending.pop(data["id"], None)
                    if fut is not None and not fut.done():
                        fut.set_result(data)
                    continue
                for listener in self._listeners.get(data.get("method", ""), []):
                    listener(data.get("params", {}))
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(BrowserError("the page's DevTools connection closed"))
            self._pending.clear()

    def on(self, method: str, listener: Callable[[dict[str, Any]], None]) -> None:
        self._listeners.setdefault(method, []).append(listener)

    def _on_console(self, params: dict[str, Any]) -> None:
        args = params.get("args", [])
        text = " ".join(str(a.get("value", a.get("description", ""))) for a in args)
        self.console.append(f"{params.get('type')}: {text}")

    def _on_exception(self, params: dict[str, Any]) -> None:
        details = params.get("exceptionDetails", {})
        exc = details.get("exception", {})
        self.errors.append(str(exc.get("description") or details.get("text")))

    async def call(
        self, method: str, params: dict[str, Any] | None = None, timeout_s: float = _CALL_TIMEOUT_S
    ) -> dict[str, Any]:
        """One CDP command; its ``result`` (BrowserError on a protocol error)."""
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        await self._ws.send_str(
            json.dumps({"id": msg_id, "method": method, "params": params or {}})
        )
        try:
            reply = await asyncio.wait_for(fut, timeout_s)
        finally:
            self._pending.pop(msg_id, None)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def evaluate(self, expression: str, timeout_s: float = _CALL_TIMEOUT_S) -> Any:
        """Evaluate ``expression`` in the page, awaiting a promise; its JSON value."""
        result = await self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            timeout_s=timeout_s + 1,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"script threw: {text}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, within_s: float = 20.0, every_s: float = 0.1) -> Any:
        """Poll ``expression`` until truthy (its value) or raise BrowserError after ``within_s``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + within_s
        value: Any = None
        while loop.time() < end:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(every_s)
        raise BrowserError(f"not true within {within_s} s: {expression} (last {value!r})")

    def diagnostics(self, lines: int = 40) -> str:
        """The page's recent console output and uncaught exceptions, for a failure message."""
        out = list(self.console)[-lines:] + [f"EXCEPTION {e}" for e in list(self.errors)[-10:]]
        return "\n".join(out)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._ws.close(), 5)


class Chromium:
    """A headless Chromium process and its DevTools endpoint. Use :meth:`launch`."""

    def __init__(
        self, proc: asyncio.subprocess.Process | None, endpoint: str, profile: Path | None
    ) -> None:
        self.proc = proc  # None when attached to a browser this object does not own
        self.endpoint = endpoint  # http://127.0.0.1:PORT
        self._profile = profile
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_CALL_TIMEOUT_S))
        self._pages: list[Page] = []
        self.stderr_tail: deque[str] = deque(maxlen=200)

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(
        cls, *extra_flags: str, executable: str | None = None
    ) -> AsyncIterator[Chromium]:
        exe = executable or find_chromium()
        if exe is None:
            raise BrowserError("no chromium executable (apt-get install chromium)")
        profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
        args = [
            exe,
            *FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            *extra_flags,
            "about:blank",
        ]
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        browser: Chromium | None = None
        try:
            endpoint = await asyncio.wait_for(_read_endpoint(proc), _START_TIMEOUT_S)
            browser = cls(proc, endpoint, profile)
            browser._drain = asyncio.get_running_loop().create_task(  # type: ignore[attr-defined]
                browser._drain_stderr(), name="chromium-stderr"
            )
            log.info("chromium_started", pid=proc.pid, endpoint=endpoint)
            yield browser
        finally:
            if browser is not None:
                await browser._close()
            await _stop(proc)
            shutil.rmtree(profile, ignore_errors=True)

    @classmethod
    @contextlib.asynccontextmanager
    async def attach(cls, shared: ChromiumProcess) -> AsyncIterator[Chromium]:
        """This loop's handle on a browser started by :class:`ChromiumProcess` (one browser for
        many tests, each in its own event loop). On exit the tabs opened through it are closed
        (their pages, peer connections and fake devices with them); the browser stays."""
        browser = cls(None, shared.ensure(), None)
        browser.stderr_tail = shared.stderr_tail
        try:
            yield browser
        finally:
            await browser._close()

    async def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                return
            self.stderr_tail.append(line.decode(errors="replace").rstrip())

    async def open(self, url: str) -> Page:
        """A new tab at ``url`` (its console captured from the start)."""
        async with self._http.put(f"{self.endpoint}/json/new?about:blank") as resp:
            if resp.status != 200:
                raise BrowserError(f"/json/new answered {resp.status}")
            target = await resp.json()
        ws = await self._http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=1 << 26)
        page = Page(ws, self._http, target.get("id", ""))
        self._pages.append(page)
        await page.call("Runtime.enable")
        await page.call("Page.enable")
        await page.call("Page.navigate", {"url": url})
        await page.wait_for("document.readyState === 'complete'", within_s=20)
        return page

    async def _close(self) -> None:
        for page in self._pages:
            await page.close()
            if self.proc is None and page.target_id:
                # A shared browser outlives this handle: its tabs must not (bounded).
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        async with self._http.get(
                            f"{self.endpoint}/json/close/{page.target_id}"
                        ) as resp:
                            await resp.read()
        drain = getattr(self, "_drain", None)
        await self._http.close()
        if self.proc is None:
            return
        await _stop(self.proc)
        if drain is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(drain, 5)


class ChromiumProcess:
    """A headless Chromium shared by many event loops (a test session's browser): a plain child
    process, started without a loop; each loop drives it through :meth:`Chromium.attach`.
    Started again if it died, so one crash costs one test, not the rest of the session."""

    def __init__(self, *extra_flags: str, executable: str | None = None) -> None:
        self._extra = extra_flags
        self._executable = executable
        self._proc: subprocess.Popen[bytes] | None = None
        self._profile: Path | None = None
        self._endpoint = ""
        self.stderr_tail: deque[str] = deque(maxlen=200)

    def ensure(self) -> str:
        """The DevTools endpoint of a running browser (started now if none is)."""
        if self._proc is None or self._proc.poll() is not None:
            self.stop()
            self._start()
        return self._endpoint

    def _start(self) -> None:
        exe = self._executable or find_chromium()
        if exe is None:
            raise BrowserError("no chromium executable (apt-get install chromium)")
        self._profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
        args = [
            exe,
            *FLAGS,
            f"--user-data-dir={self._profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            *self._extra,
            "about:blank",
        ]
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,  # a killed test session must not leave it running
        )
        self._proc = proc
        found = threading.Event()

        def drain() -> None:  # keeps the pipe from filling; the tail is kept for failures
            assert proc.stderr is not None
            for raw in proc.stderr:
                text = raw.decode(errors="replace").rstrip()
                self.stderr_tail.append(text)
                match = _LISTENING.search(text)
                if match and not found.is_set():
                    self._endpoint = "http://" + match.group(1).removeprefix("ws://").split("/")[0]
                    found.set()
            found.set()  # exited: the waiter sees no endpoint

        threading.Thread(target=drain, name="chromium-stderr", daemon=True).start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not found.wait(0.1) and time.monotonic() < deadline:
            pass
        if not self._endpoint:
            tail = "\n".join(self.stderr_tail)
            self.stop()
            raise BrowserError("chromium did not start its DevTools endpoint:\n" + tail)
        log.info("chromium_started", pid=proc.pid, endpoint=self._endpoint, shared=True)

    def stop(self) -> None:
        """Terminate the browser by its PID (its child processes follow it), then kill."""
        proc, self._proc, self._endpoint = self._proc, None, ""
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None


def _die_with_parent() -> None:
    """In the child: SIGTERM when the parent dies (Linux's PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


async def _read_endpoint(proc: asyncio.subprocess.Process) -> str:
    assert proc.stderr is not None
    seen: list[str] = []
    while True:
        line = await proc.stderr.readline()
        if not line:
            raise BrowserError("chromium exited before DevTools listened:\n" + "\n".join(seen))
        text = line.decode(errors="replace").rstrip()
        seen.append(text)
        match = _LISTENING.search(text)
        if match:
            ws = match.group(1)  # ws://127.0.0.1:PORT/devtools/browser/ID
            return "http://" + ws.removeprefix("ws://").split("/", 1)[0]


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """Terminate the browser by its PID (its child processes follow it), then kill if stuck."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.wait_for(proc.wait(), 10)
