"""bridge.client against a real IngestServer with the fake host."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from bridge import protocol as p
from bridge.client import (
    BridgeClient,
    ConnectionClosed,
    RemoteError,
    parse_call,
    stream_pcm_realtime,
)
from bridge.ingest import IngestOptions, IngestServer
from bridge.media import AudioFormat
from tests.protocol.conftest import FakeHost, ramp

FMT = AudioFormat(16000, 1)


@pytest.fixture
async def small_frames(sock_dir: Path) -> AsyncIterator[tuple[IngestServer, FakeHost]]:
    host = FakeHost()
    srv = IngestServer(host, IngestOptions(unix_path=sock_dir / "c.sock", max_payload=4096))
    await srv.start()
    host.limits = srv.limits
    yield srv, host
    await srv.aclose()


async def test_hello_sends_every_field_and_returns_ready(
    server: tuple[IngestServer, FakeHost],
) -> None:
    srv, host = server
    assert srv.options.unix_path is not None
    async with await BridgeClient.connect(srv.options.unix_path) as client:
        ready = await client.hello(
            "livestream:show_1",
            AudioFormat(48000, 2),
            avatar={"avatar_id": "av-1", "video_quality": "low"},
            session_key="key-prev",
            media_path="relay",
            client="pytest",
        )
        assert ready.session_id == "ses-show_1" and ready.resumed
        assert ready.audio == AudioFormat(48000, 2)
        assert client.ready is ready
    hello = host.session("show_1").hello
    assert str(hello.call) == "livestream:show_1"
    assert hello.avatar.as_dict() == {"avatar_id": "av-1", "video_quality": "low"}
    assert (hello.session_key, hello.media_path, hello.client) == ("key-prev", "relay", "pytest")
    assert host.session("show_1").closed  # leaving the context sends CLOSE


async def test_refusals_raise_remote_error(server: tuple[IngestServer, FakeHost]) -> None:
    srv, _ = server
    assert srv.options.unix_path is not None
    client = await BridgeClient.connect(srv.options.unix_path)
    with pytest.raises(RemoteError) as info:
        await client.hello("default:busy", FMT)
    assert (info.value.code, info.value.fatal) == ("busy", True)
    with pytest.raises(ConnectionClosed):
        await client.send_audio(bytes(640))
    await client.close()

    client = await BridgeClient.connect(srv.options.unix_path)
    with pytest.raises(RemoteError) as info:
        await client.hello("default:x", AudioFormat(96000, 1))
    assert info.value.code == "unsupported_format"
    await client.close()


async def test_large_buffers_are_split_at_the_advertised_max_payload(
    small_frames: tuple[IngestServer, FakeHost],
) -> None:
    srv, host = small_frames
    assert srv.options.unix_path is not None
    async with await BridgeClient.connect(srv.options.unix_path) as client:
        await client.hello("default:split", AudioFormat(16000, 2))
        assert client.max_payload == 4096
        pcm = np.arange(10_000, dtype=np.int16)  # numpy buffers are accepted as they are
        await client.send_audio(pcm)
        await client.end_turn()
        await client.wait_for_event("speak_ended")
    session = host.session("split")
    assert bytes(session.audio) == pcm.tobytes()
    assert max(session.frames) == 4096 and all(n % 4 == 0 for n in session.frames)


async def test_odd_pcm_is_refused_before_sending(server: tuple[IngestServer, FakeHost]) -> None:
    srv, _ = server
    assert srv.options.unix_path is not None
    async with await BridgeClient.connect(srv.options.unix_path) as client:
        await client.hello("default:odd", AudioFormat(16000, 2))
        with pytest.raises(ValueError):
            await client.send_audio(bytes(6))


async def test_ping_mark_interrupt_and_messages(server: tuple[IngestServer, FakeHost]) -> None:
    srv, host = server
    assert srv.options.unix_path is not None
    client = await BridgeClient.connect(srv.options.unix_path)
    await client.hello("default:misc", FMT)
    rtt = await client.ping()
    assert 0 <= rtt < 1
    await client.mark("m-1")
    await client.interrupt()
    await client.end_turn()
    await client.close()
    messages = [m async for m in client]
    assert messages == [
        p.EventMsg("mark", {"name": "m-1"}),
        p.EventMsg("speak_ended", {"audio_bytes": 0}),
    ]
    assert host.session("misc").log == ["mark:m-1", "interrupt", "end_turn", "close"]


async def test_a_fatal_error_ends_the_message_stream(server: tuple[IngestServer, FakeHost]) -> None:
    srv, _ = server
    assert srv.options.unix_path is not None
    client = await BridgeClient.connect(srv.options.unix_path)
    await client.hello("default:failing", FMT)
    await client.mark("fail")
    messages = [m async for m in client]
    assert len(messages) == 1 and isinstance(messages[0], p.Error) and messages[0].fatal
    with pytest.raises(ConnectionClosed) as info:
        await client.recv()
    assert info.value.error == messages[0]
    await client.close()


async def test_realtime_pacing(server: tuple[IngestServer, FakeHost]) -> None:
    srv, host = server
    assert srv.options.unix_path is not None
    progress: list[tuple[float, float]] = []
    async with await BridgeClient.connect(srv.options.unix_path) as client:
        await client.hello("default:paced", FMT)
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = await stream_pcm_realtime(
            client, ramp(8000), FMT, chunk_ms=20, on_progress=lambda a, b: progress.append((a, b))
        )
        elapsed = loop.time() - start
        await client.end_turn()
        await client.wait_for_event("speak_ended")
    assert sent == pytest.approx(0.5)
    # 25 chunks of 20 ms: the last one leaves at 480 ms.
    assert 0.47 <= elapsed < 0.8
    assert len(progress) == 25 and progress[-1] == (pytest.approx(0.5), pytest.approx(0.5))
    assert bytes(host.session("paced").audio) == ramp(8000)


def test_parse_call() -> None:
    assert str(parse_call("default:abc")) == "default:abc"
    with pytest.raises(ValueError):
        parse_call("no-colon")
