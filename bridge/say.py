"""``avatar-bridge say``: speak a recording through the daemon's socket, as a client would."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from bridge.client import BridgeClient, ClientError, RemoteError, stream_pcm_realtime
from bridge.media import AudioFormat
from bridge.protocol import Error, EventMsg


class _Progress:
    """A one-line progress bar on stderr (only drawn on a terminal)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._last = -1

    def __call__(self, sent_s: float, total_s: float) -> None:
        if not self.enabled or total_s <= 0:
            return
        filled = int(30 * sent_s / total_s)
        if filled == self._last:
            return
        self._last = filled
        bar = "#" * filled + "-" * (30 - filled)
        sys.stderr.write(f"\r[{bar}] {sent_s:5.1f}/{total_s:.1f} s")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _print(out: TextIO, kind: str, body: Mapping[str, Any]) -> None:
    out.write(f"{kind} {json.dumps(dict(body), sort_keys=True)}\n")
    out.flush()


async def say(
    target: str | tuple[str, int],
    pcm: bytes,
    sample_rate: int,
    channels: int,
    *,
    call: tuple[str, str],
    avatar: Mapping[str, Any] | None = None,
    token: str | None = None,
    chunk_ms: int = 20,
    progress: bool = False,
    out: TextIO = sys.stdout,
    wait_s: float = 30.0,
    connect_timeout_s: float = 10.0,
) -> int:
    """Stream ``pcm`` in real time as one turn; print events. Returns the process exit code.

    0 when the turn was spoken (``speak_ended`` arrived or the wait ended without an error),
    1 on an ERROR from the daemon, 2 when the daemon cannot be reached.
    """
    fmt = AudioFormat(sample_rate, channels)
    try:
        async with asyncio.timeout(connect_timeout_s):
            client = await BridgeClient.connect(target)
    except (OSError, TimeoutError) as exc:
        sys.stderr.write(f"avatar-bridge say: cannot connect to {target}: {exc}\n")
        return 2
    failed = False
    ended = asyncio.Event()

    async def printer() -> None:
        nonlocal failed
        async for message in client.messages():
            if isinstance(message, Error):
                failed = True
                _print(
                    out,
                    "ERROR",
                    {"code": message.code, "message": message.message, "fatal": message.fatal},
                )
                if message.fatal:
                    ended.set()
            elif isinstance(message, EventMsg):
                if message.event != "credit":
                    _print(out, "EVENT", {"event": message.event, **message.fields})
                if message.event == "speak_ended":
                    ended.set()
        ended.set()

    bar = _Progress(progress)
    try:
        async with client:
            async with asyncio.timeout(connect_timeout_s + 30):
                ready = await client.hello(
                    f"{call[0]}:{call[1]}", fmt, avatar=avatar, token=token, client="say"
                )
            _print(out, "READY", {"session_id": ready.session_id})
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(printer())
                await stream_pcm_realtime(client, pcm, fmt, chunk_ms, on_progress=bar)
                bar.done()
                await client.end_turn()
                try:
                    async with asyncio.timeout(wait_s):
                        await ended.wait()
                except TimeoutError:
                    sys.stderr.write("avatar-bridge say: no speak_ended before --wait ran out\n")
                reader.cancel()
    except RemoteError as exc:
        _print(
            out,
            "ERROR",
            {"code": exc.error.code, "message": exc.error.message, "fatal": exc.error.fatal},
        )
        return 1
    except (ClientError, OSError, TimeoutError) as exc:
        sys.stderr.write(f"avatar-bridge say: {exc or type(exc).__name__}\n")
        return 1
    return 1 if failed else 0
