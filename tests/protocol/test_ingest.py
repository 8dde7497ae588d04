"""The ingest server over real sockets, with a fake SessionHost (tests/protocol/conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import subprocess
import tempfile
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from bridge import protocol as p
from bridge.client import BridgeClient
from bridge.errors import ErrorCode
from bridge.ingest import IngestOptions, IngestServer, IngestSetupError
from bridge.media import AudioFormat
from tests.protocol.conftest import TOKEN, FakeHost, RawClient, hello_frame, ramp

Server = tuple[IngestServer, FakeHost]
FMT = AudioFormat(16000, 1)


def errors_sent(code: str) -> float:
    return REGISTRY.get_sample_value("bridge_ingest_protocol_errors_total", {"code": code}) or 0.0


# ---------------------------------------------------------------------------------------------
# Every ERROR code, each on its own connection, while another client keeps streaming.


class Streamer:
    """A well-behaved client streaming a counter ramp in 20 ms frames as fast as allowed."""

    def __init__(self, client: BridgeClient) -> None:
        self.client = client
        self.sent = 0
        self.stop = asyncio.Event()
        self.warm = asyncio.Event()  # set once some audio went through
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self.stop.is_set():
            await self.client.send_audio(ramp(320, self.sent // 2))
            self.sent += 640
            if self.sent >= 6400:
                self.warm.set()
            await asyncio.sleep(0.002)

    async def finish(self, host: FakeHost) -> None:
        self.stop.set()
        await self.task
        await self.client.end_turn()
        event = await asyncio.wait_for(self.client.wait_for_event("speak_ended"), 5)
        assert event.fields["audio_bytes"] == self.sent
        assert bytes(host.session("streamer").audio) == ramp(self.sent // 2)
        errors = []
        while not self.client._messages.empty():
            message = self.client._messages.get_nowait()
            if isinstance(message, p.Error):
                errors.append(message)
        assert errors == []


@pytest.fixture
async def streamer(server: Server) -> AsyncIterator[Streamer]:
    srv, _ = server
    assert srv.options.unix_path is not None
    client = await BridgeClient.connect(srv.options.unix_path)
    await client.hello("default:streamer", FMT)
    s = Streamer(client)
    await asyncio.wait_for(s.warm.wait(), 5)  # streaming for real before the bad client arrives
    yield s
    await client.close()


AFTER_HELLO = hello_frame("bad")
CASES = {
    # name: (transport, bytes sent, expected ERROR code, fatal)
    "unknown_type": ("unix", AFTER_HELLO + p.encode_frame(0x7F, b"x"), "bad_frame", True),
    "oversize_length": (
        "unix",
        AFTER_HELLO + p.encode_header(p.FrameType.AUDIO, 64 << 20),
        "frame_too_large",
        True,
    ),
    "bad_json_hello": ("unix", p.encode_frame(p.FrameType.HELLO, b"{"), "bad_json", True),
    "bad_json_mark": (
        "unix",
        AFTER_HELLO + p.encode_frame(p.FrameType.MARK, b"{"),
        "bad_json",
        False,
    ),
    "audio_before_hello": ("unix", p.encode_audio(bytes(640)), "not_ready", True),
    "odd_byte_count": ("unix", AFTER_HELLO + p.encode_audio(bytes(641)), "odd_audio_length", False),
    "unsupported_rate": ("unix", hello_frame("bad", rate=96000), "unsupported_format", True),
    "unsupported_version": ("unix", p.encode_json_frame(1, {"v": 9}), "unsupported_version", True),
    "hello_timeout": ("unix", b"", "hello_timeout", True),
    "slowloris_hello": ("unix", AFTER_HELLO[:10], "hello_timeout", True),
    "bad_token_tcp": ("tcp", hello_frame("bad", token="wrong"), "unauthorized", True),
    "no_token_tcp": ("tcp", hello_frame("bad"), "unauthorized", True),
    # docs/protocol.md §4.1: a token that is not the configured one, whatever its length.
    "long_token_tcp": ("tcp", hello_frame("bad", token="t" * 300), "unauthorized", True),
    "right_token_then_more_tcp": (
        "tcp",
        hello_frame("bad", token=TOKEN + "x" * 300),
        "unauthorized",
        True,
    ),
    "empty_token_tcp": ("tcp", hello_frame("bad", token=""), "unauthorized", True),
    "token_not_a_string_tcp": ("tcp", hello_frame("bad", token=7), "bad_hello", True),
    "lone_surrogate_hello": (
        "unix",
        hello_frame("bad")[:-1] + b',"client":"tts\\ud800"}',
        "bad_json",
        True,
    ),
    "lone_surrogate_mark": (
        "unix",
        AFTER_HELLO + p.encode_frame(p.FrameType.MARK, b'{"name":"\\ud800"}'),
        "bad_json",
        False,
    ),
    "busy": ("unix", hello_frame("busy"), "busy", True),
    "session_failure": (
        "unix",
        AFTER_HELLO + p.encode_mark("fail"),
        ErrorCode.LIVEAVATAR_UNAVAILABLE.value,
        True,
    ),
}


@pytest.mark.parametrize("case", CASES)
async def test_error_codes_hit_only_the_offender(
    server: Server, streamer: Streamer, case: str
) -> None:
    srv, host = server
    transport, data, code, fatal = CASES[case]
    before = errors_sent(code)
    if transport == "tcp":
        assert srv.tcp_address is not None
        bad = await RawClient.tcp(srv.tcp_address)
    else:
        assert srv.options.unix_path is not None
        bad = await RawClient.unix(srv.options.unix_path)
    await bad.send(data)
    if not fatal:
        await bad.send(p.encode_ping(b"still-here"))
    events = [await bad.next_event() for _ in range(3 if not fatal else 1)]
    events = [e for e in events if not isinstance(e, p.Ready)] or [await bad.next_event()]
    error = events[0]
    assert isinstance(error, p.Error), events
    assert (error.code, error.fatal) == (code, fatal)
    assert error.message
    if fatal:
        assert await bad.until_eof() == []  # and then the daemon hangs up
    else:
        rest = events[1:] or [await bad.next_event()]
        assert rest == [p.Pong(b"still-here")]
        bad.close()
    if case not in ("busy", "session_failure"):
        assert errors_sent(code) == before + 1
    await streamer.finish(host)


async def test_hello_timeout_is_enforced_from_connect(server: Server) -> None:
    srv, _ = server
    assert srv.options.unix_path is not None
    bad = await RawClient.unix(srv.options.unix_path)
    loop = asyncio.get_running_loop()
    start = loop.time()
    error = await bad.next_event()
    assert isinstance(error, p.Error) and error.code == "hello_timeout"
    assert 0.4 <= loop.time() - start < 2.0
    assert await bad.until_eof() == []


# ---------------------------------------------------------------------------------------------
# Session hand-off: READY, dispatch, CLOSE versus disconnect.


async def test_frames_reach_the_session_in_order(server: Server) -> None:
    srv, host = server
    assert srv.options.unix_path is not None
    raw = await RawClient.unix(srv.options.unix_path)
    # Everything pipelined in one write, before READY: processed once the session is open.
    await raw.send(
        hello_frame("order")
        + p.encode_audio(ramp(100))
        + p.encode_mark("m1")
        + p.encode_interrupt()
        + p.encode_audio(ramp(50, 100))
        + p.encode_end_turn()
        + p.encode_close()
    )
    events = await raw.until_eof()
    ready = events[0]
    assert isinstance(ready, p.Ready) and ready.session_id == "ses-order"
    assert ready.limits["max_payload"] == p.MAX_PAYLOAD
    assert [e for e in events[1:]] == [
        p.EventMsg("mark", {"name": "m1"}),
        p.EventMsg("speak_ended", {"audio_bytes": 300}),
    ]
    session = host.session("order")
    assert bytes(session.audio) == ramp(150)
    assert session.log == ["mark:m1", "interrupt", "end_turn", "close"]
    assert session.closed and not session.disconnected


async def test_dropping_the_connection_lets_the_session_linger(server: Server) -> None:
    srv, host = server
    assert srv.options.unix_path is not None
    client = await BridgeClient.connect(srv.options.unix_path)
    await client.hello("default:dropper", FMT)
    await client.abort()
    session = host.session("dropper")
    for _ in range(100):
        if session.disconnected:
            break
        await asyncio.sleep(0.01)
    assert session.disconnected and not session.closed
    assert srv.connections == 0


async def test_a_fatal_violation_after_ready_disconnects_the_session(server: Server) -> None:
    srv, host = server
    assert srv.options.unix_path is not None
    raw = await RawClient.unix(srv.options.unix_path)
    await raw.send(hello_frame("violator") + p.encode_frame(0x55, b""))
    events = await raw.until_eof()
    assert [type(e) for e in events] == [p.Ready, p.Error]
    await asyncio.sleep(0.05)
    assert host.session("violator").disconnected


async def test_events_sent_during_open_follow_ready(sock_dir: Path) -> None:
    class EagerHost(FakeHost):
        async def open(self, hello: p.Hello, link):  # type: ignore[no-untyped-def]
            link.send_event("state", {"state": "starting"})
            return await super().open(hello, link)

    srv = IngestServer(EagerHost(), IngestOptions(unix_path=sock_dir / "s"))
    await srv.start()
    try:
        raw = await RawClient.unix(sock_dir / "s")
        await raw.send(hello_frame("eager"))
        assert isinstance(await raw.next_event(), p.Ready)
        assert await raw.next_event() == p.EventMsg("state", {"state": "starting"})
    finally:
        await srv.aclose()


# ---------------------------------------------------------------------------------------------
# Backpressure and the bounded out-buffer.


async def test_a_blocked_session_blocks_the_writer_with_bounded_buffering(server: Server) -> None:
    srv, host = server
    assert srv.options.unix_path is not None
    slow = await BridgeClient.connect(srv.options.unix_path)
    await slow.hello("default:slow-1", FMT)
    session = host.session("slow-1")
    assert session.gate is not None
    sent = 0
    chunk = 32 * 1024

    async def pump() -> None:
        nonlocal sent
        while sent < 64 << 20:
            await slow.send_audio(ramp(chunk // 2, sent // 2))
            sent += chunk

    pumping = asyncio.create_task(pump())
    await asyncio.wait_for(session.got_audio.wait(), 5)
    await asyncio.sleep(0.5)
    plateau = sent
    await asyncio.sleep(0.5)
    assert sent == plateau, "the writer must be blocked while the session does not take audio"
    # What the client got rid of: its transport buffer + both kernel socket buffers + the
    # daemon's StreamReader (2 x 64 KiB) + one frame. Far below what it tried to send.
    assert plateau < 2 << 20
    assert not pumping.done()

    # Meanwhile another client on the same daemon streams undisturbed.
    other = await BridgeClient.connect(srv.options.unix_path)
    await other.hello("default:other", FMT)
    await other.send_audio(ramp(16000))
    await other.end_turn()
    assert (await asyncio.wait_for(other.wait_for_event("speak_ended"), 5)).fields == {
        "audio_bytes": 32000
    }
    await other.close()

    # Releasing the session drains everything, in order, with nothing lost.
    session.gate.set()
    pumping.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pumping
    await slow.end_turn()
    event = await asyncio.wait_for(slow.wait_for_event("speak_ended"), 10)
    assert event.fields["audio_bytes"] == len(session.audio)
    assert bytes(session.audio) == ramp(len(session.audio) // 2)
    assert len(session.audio) >= plateau - chunk
    await slow.close()


async def test_a_client_that_stops_reading_is_dropped_and_its_session_lingers(
    server: Server,
) -> None:
    srv, host = server
    assert srv.options.unix_path is not None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(str(srv.options.unix_path))
    sock.sendall(hello_frame("deaf") + p.encode_mark("flood"))  # 4 MB of events, never read
    session = None
    # Both are awaited (bounded): the session is marked disconnected before the connection's
    # own cleanup has run, which a loaded machine can delay past the first check.
    deadline = asyncio.get_running_loop().time() + 15
    while asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(StopIteration):
            session = host.session("deaf")
        if session is not None and session.disconnected and srv.connections == 0:
            break
        await asyncio.sleep(0.02)
    assert session is not None and session.disconnected
    assert srv.connections == 0
    sock.close()


# ---------------------------------------------------------------------------------------------
# The Unix socket file.


async def test_socket_mode_and_parent_dir(server: Server) -> None:
    srv, _ = server
    path = srv.options.unix_path
    assert path is not None
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o750  # created by the server


async def test_socket_group_is_set(sock_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("changing a file's group to another group needs root")
    srv = IngestServer(FakeHost(), IngestOptions(unix_path=sock_dir / "g.sock", unix_group="65534"))
    await srv.start()
    try:
        assert os.stat(sock_dir / "g.sock").st_gid == 65534
    finally:
        await srv.aclose()


async def test_stale_socket_is_replaced_and_removed_on_exit(sock_dir: Path) -> None:
    path = sock_dir / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # bound, never listening: what a crashed daemon leaves behind
    dead.close()
    assert path.exists()
    srv = IngestServer(FakeHost(), IngestOptions(unix_path=path))
    await srv.start()
    client = await BridgeClient.connect(path)
    assert (await client.hello("default:fresh", FMT)).session_id == "ses-fresh"
    await client.close()
    await srv.aclose()
    assert not path.exists()


async def test_a_live_socket_is_not_taken_over(sock_dir: Path) -> None:
    path = sock_dir / "live.sock"
    first = IngestServer(FakeHost(), IngestOptions(unix_path=path))
    await first.start()
    try:
        with pytest.raises(IngestSetupError, match="another process is listening"):
            await IngestServer(FakeHost(), IngestOptions(unix_path=path)).start()
        client = await BridgeClient.connect(path)  # the first server is untouched
        await client.hello("default:still", FMT)
        await client.close()
    finally:
        await first.aclose()


async def test_symlink_and_non_socket_paths_are_refused(sock_dir: Path) -> None:
    target = sock_dir / "target.sock"
    link = sock_dir / "link.sock"
    link.symlink_to(target)
    with pytest.raises(IngestSetupError, match="symlink"):
        await IngestServer(FakeHost(), IngestOptions(unix_path=link)).start()
    assert not target.exists()
    regular = sock_dir / "file.sock"
    regular.write_text("not a socket")
    with pytest.raises(IngestSetupError, match="not a socket"):
        await IngestServer(FakeHost(), IngestOptions(unix_path=regular)).start()
    assert regular.read_text() == "not a socket"


async def test_the_socket_file_of_a_successor_is_not_removed(sock_dir: Path) -> None:
    path = sock_dir / "succ.sock"
    srv = IngestServer(FakeHost(), IngestOptions(unix_path=path))
    await srv.start()
    path.unlink()
    successor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    successor.bind(str(path))
    try:
        await srv.aclose()
        assert path.exists()
    finally:
        successor.close()


async def test_stop_accepting_keeps_open_connections(server: Server) -> None:
    srv, _ = server
    assert srv.options.unix_path is not None
    client = await BridgeClient.connect(srv.options.unix_path)
    await client.hello("default:keep", FMT)
    await srv.stop_accepting()
    with pytest.raises(OSError):
        await BridgeClient.connect(srv.options.unix_path)
    assert await client.ping() >= 0
    await client.close()


async def test_aclose_closes_connections(server: Server) -> None:
    srv, host = server
    assert srv.options.unix_path is not None
    client = await BridgeClient.connect(srv.options.unix_path)
    await client.hello("default:victim", FMT)
    await srv.aclose()
    assert [m async for m in client] == []  # the stream just ends
    assert srv.connections == 0 and host.session("victim").disconnected
    assert not srv.options.unix_path.exists()


# ---------------------------------------------------------------------------------------------
# Peer credentials.


@pytest.mark.parametrize(
    ("uids", "gids", "allowed"),
    [
        (frozenset({os.getuid()}), frozenset(), True),
        (frozenset(), frozenset({os.getgid()}), True),
        (frozenset({os.getuid() + 4242}), frozenset(), False),
        (frozenset({os.getuid() + 4242}), frozenset({os.getgid() + 4242}), False),
    ],
)
async def test_peer_credentials_allow_list(
    sock_dir: Path, uids: frozenset[int], gids: frozenset[int], allowed: bool
) -> None:
    path = sock_dir / "cred.sock"
    srv = IngestServer(
        FakeHost(), IngestOptions(unix_path=path, allowed_uids=uids, allowed_gids=gids)
    )
    await srv.start()
    try:
        raw = await RawClient.unix(path)
        await raw.send(hello_frame("cred"))
        first = await raw.next_event()
        if allowed:
            assert isinstance(first, p.Ready)
        else:
            assert isinstance(first, p.Error) and (first.code, first.fatal) == (
                "unauthorized",
                True,
            )
            assert f"uid={os.getuid()}" in first.message
            assert await raw.until_eof() == []
    finally:
        await srv.aclose()


NOBODY = 65534
PROBE = textwrap.dedent(
    """
    import socket, struct, sys
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(sys.argv[1])
    except PermissionError:
        print("EACCES"); sys.exit(0)
    s.sendall(bytes.fromhex(sys.argv[2]))
    t, f, n = struct.unpack(">BBI", s.recv(6, socket.MSG_WAITALL))
    print(hex(t), s.recv(n, socket.MSG_WAITALL).decode())
    """
)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    if os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs root (to run a probe as another user) and /usr/bin/python3")
    with tempfile.TemporaryDirectory(prefix="abp-shared-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


def probe_as_nobody(path: Path) -> str:
    run = subprocess.run(
        ["/usr/bin/python3", "-c", PROBE, str(path), hello_frame("nobody").hex()],
        user=NOBODY,
        group=NOBODY,
        capture_output=True,
        text=True,
        timeout=20,
        cwd="/",
    )
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


async def test_mode_0660_keeps_other_users_out(shared_dir: Path) -> None:
    srv = IngestServer(FakeHost(), IngestOptions(unix_path=shared_dir / "m.sock"))
    await srv.start()
    try:
        assert await asyncio.to_thread(probe_as_nobody, shared_dir / "m.sock") == "EACCES"
    finally:
        await srv.aclose()


async def test_another_uid_is_refused_by_so_peercred(shared_dir: Path) -> None:
    opts = IngestOptions(
        unix_path=shared_dir / "p.sock", unix_mode=0o666, allowed_uids=frozenset({0})
    )
    srv = IngestServer(FakeHost(), opts)
    await srv.start()
    try:
        out = await asyncio.to_thread(probe_as_nobody, shared_dir / "p.sock")
        assert out.startswith("0x21 ") and '"unauthorized"' in out and f"uid={NOBODY}" in out
        srv.options.allowed_uids = frozenset({0, NOBODY})
        out = await asyncio.to_thread(probe_as_nobody, shared_dir / "p.sock")
        assert out.startswith("0x2 ") and '"session_id":"ses-nobody"' in out
    finally:
        await srv.aclose()


# ---------------------------------------------------------------------------------------------
# TCP and inherited sockets.


async def test_tcp_with_the_right_token(server: Server) -> None:
    srv, _ = server
    assert srv.tcp_address is not None and srv.tcp_address[0] == "127.0.0.1"
    client = await BridgeClient.connect(srv.tcp_address)
    ready = await client.hello("default:tcp", FMT, token=TOKEN)
    assert ready.session_id == "ses-tcp"
    await client.close()


async def test_a_token_of_any_length_is_ignored_on_a_unix_socket(server: Server) -> None:
    srv, _ = server
    assert srv.options.unix_path is not None
    client = await BridgeClient.connect(srv.options.unix_path)
    ready = await client.hello("default:unix-token", FMT, token="t" * 300)
    assert ready.session_id == "ses-unix-token"
    await client.close()


async def test_a_lone_surrogate_mark_never_reaches_the_session(server: Server) -> None:
    # The mark is refused at parse time, so the session neither sees it nor tries to echo it;
    # the marks around it are echoed in order.
    srv, host = server
    assert srv.options.unix_path is not None
    raw = await RawClient.unix(srv.options.unix_path)
    await raw.send(hello_frame("surrogate"))
    assert isinstance(await raw.next_event(), p.Ready)
    await raw.send(
        p.encode_mark("before")
        + p.encode_frame(p.FrameType.MARK, b'{"name":"x\\udfffy"}')
        + p.encode_frame(p.FrameType.MARK, b'{"name":"\\ud83d\\ude00"}')  # a pair: fine
        + p.encode_close()
    )
    events = await raw.until_eof()
    assert events[0] == p.EventMsg("mark", {"name": "before"})
    assert isinstance(events[1], p.Error)
    assert (events[1].code, events[1].fatal) == ("bad_json", False)
    assert events[2:] == [p.EventMsg("mark", {"name": "\U0001f600"})]
    assert [e for e in host.session("surrogate").log if e.startswith("mark:")] == [
        "mark:before",
        "mark:\U0001f600",
    ]


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::"])
async def test_tcp_refuses_a_non_loopback_bind(host: str) -> None:
    srv = IngestServer(FakeHost(), IngestOptions(tcp_host=host, tcp_port=0, tcp_token=TOKEN))
    with pytest.raises(IngestSetupError, match="not a loopback address"):
        await srv.start()


async def test_tcp_needs_a_token_and_accepts_localhost() -> None:
    with pytest.raises(IngestSetupError, match="tcp_token is required"):
        await IngestServer(FakeHost(), IngestOptions(tcp_port=0)).start()
    srv = IngestServer(FakeHost(), IngestOptions(tcp_host="localhost", tcp_port=0, tcp_token=TOKEN))
    await srv.start()
    try:
        assert srv.tcp_address is not None
    finally:
        await srv.aclose()


async def test_an_inherited_unix_listener_serves_clients(sock_dir: Path) -> None:
    path = sock_dir / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    fd = listener.detach()  # as systemd would pass it: fd 3+ in LISTEN_FDS
    srv = IngestServer(FakeHost(), IngestOptions(inherited_fds=[fd]))
    await srv.start()
    try:
        client = await BridgeClient.connect(path)
        assert (await client.hello("default:activated", FMT)).session_id == "ses-activated"
        await client.close()
    finally:
        await srv.aclose()
    assert path.exists()  # systemd owns the file of an inherited socket


async def test_an_inherited_tcp_listener_requires_the_token() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    address = listener.getsockname()
    fd = listener.detach()
    with pytest.raises(IngestSetupError, match="tcp_token"):
        await IngestServer(FakeHost(), IngestOptions(inherited_fds=[fd])).start()
    os.close(fd)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    address = listener.getsockname()
    srv = IngestServer(
        FakeHost(), IngestOptions(inherited_fds=[listener.detach()], tcp_token=TOKEN)
    )
    await srv.start()
    try:
        raw = await RawClient.tcp(address)
        await raw.send(hello_frame("tcp-inherited"))
        error = await raw.next_event()
        assert isinstance(error, p.Error) and error.code == "unauthorized"
    finally:
        await srv.aclose()


# ---------------------------------------------------------------------------------------------
# Metrics.


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def test_metrics_count_connections_frames_bytes_and_errors(server: Server) -> None:
    srv, _ = server
    assert srv.options.unix_path is not None
    before = {
        "conns": sample("bridge_ingest_connections_total", {"transport": "unix"}),
        "active": sample("bridge_ingest_connections_active"),
        "audio": sample("bridge_ingest_frames_total", {"type": "audio"}),
        "marks": sample("bridge_ingest_frames_total", {"type": "mark"}),
        "bytes": sample("bridge_ingest_bytes_total"),
        "busy": errors_sent("busy"),
        "odd": errors_sent("odd_audio_length"),
    }
    raw = await RawClient.unix(srv.options.unix_path)
    stream = hello_frame("metrics") + p.encode_audio(ramp(160)) * 3 + p.encode_audio(b"\x00")
    stream += p.encode_mark("m") + p.encode_close()
    await raw.send(stream)
    await raw.until_eof()
    client = await BridgeClient.connect(srv.options.unix_path)
    with pytest.raises(Exception, match="busy"):
        await client.hello("default:busy", FMT)
    await client.close()
    for _ in range(100):  # the connection tasks finish just after the clients see EOF
        if sample("bridge_ingest_connections_active") == before["active"]:
            break
        await asyncio.sleep(0.01)
    assert sample("bridge_ingest_connections_total", {"transport": "unix"}) == before["conns"] + 2
    assert sample("bridge_ingest_connections_active") == before["active"]
    assert sample("bridge_ingest_frames_total", {"type": "audio"}) == before["audio"] + 3
    assert sample("bridge_ingest_frames_total", {"type": "mark"}) == before["marks"] + 1
    assert sample("bridge_ingest_bytes_total") >= before["bytes"] + len(stream)
    assert errors_sent("odd_audio_length") == before["odd"] + 1
    assert errors_sent("busy") == before["busy"]  # a refusal, not a protocol error
    assert sample("bridge_ingest_disconnects_total", {"reason": "client_close"}) >= 1
