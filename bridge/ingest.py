"""The ingest server: the asyncio shell around :mod:`bridge.protocol` on the local socket.

It owns the listeners (a Unix socket, optional loopback TCP, inherited systemd sockets) and one
:class:`_Connection` per client. A connection authorises its peer, waits for HELLO (bounded by
``hello_timeout_s``), asks the :class:`SessionHost` to open a session, sends READY, then feeds
bytes to the sans-I/O parser and dispatches events to the :class:`SessionHandle`.

Backpressure: the read loop awaits ``SessionHandle.on_audio`` before it reads again. While the
session's bounded uplink queue is full, nothing is read from that connection, the kernel's socket
buffer fills, and the client's ``write``/``send`` blocks (an asyncio client's ``drain()`` waits).
Memory per connection therefore stays bounded by the StreamReader limit plus one frame.

Outgoing frames (READY, EVENT, ERROR, PONG) are written without waiting; the transport's buffer
is the connection's out-buffer. When a client stops reading and that buffer passes
``max_out_buffer`` the connection is dropped with a logged reason; its session lingers.

Bad input gets an ERROR with a specific code on that connection only; fatal ones close that
connection only. Nothing a client sends can disturb another connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import hashlib
import hmac
import ipaddress
import os
import socket
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import structlog
from prometheus_client import Counter, Gauge

from bridge import protocol as p
from bridge.config import IngestConfig, Settings, setting_default
from bridge.errors import BridgeError, ErrorCode
from bridge.media import PCM
from bridge.protocol import Hello

# ---------------------------------------------------------------------------------------------
# The interfaces between the ingest and the sessions (bridge/sessions.py implements them).


class ClientLink(Protocol):
    """The session's way back to its client; implemented here by the connection."""

    peer: str

    def send_event(self, event: str, fields: Mapping[str, Any]) -> None:
        """Never blocks; bounded out-buffer."""
        ...

    def send_error(self, err: BridgeError) -> None:
        """Closes the link when err.fatal."""
        ...

    async def aclose(self) -> None: ...


class SessionHandle(Protocol):
    ready: Mapping[str, Any]  # the READY payload to send

    async def on_audio(self, pcm: PCM) -> None:
        """Awaiting it is the backpressure: the connection stops reading meanwhile."""
        ...

    async def on_end_turn(self) -> None: ...

    async def on_interrupt(self) -> None: ...

    async def on_mark(self, name: str) -> None: ...

    async def on_close(self) -> None:
        """The client sent CLOSE: end the session now."""
        ...

    def on_disconnect(self) -> None:
        """Connection lost without CLOSE: the session lingers for re-attach."""
        ...


class SessionHost(Protocol):
    async def open(self, hello: Hello, link: ClientLink) -> SessionHandle:
        """Raises BridgeError (busy, draining, unknown_session, ...)."""
        ...


# ---------------------------------------------------------------------------------------------
# Metrics (default registry, served on /metrics by the admin API).

CONNECTIONS_TOTAL = Counter(
    "bridge_ingest_connections_total", "Client connections accepted, by transport.", ["transport"]
)
CONNECTIONS_ACTIVE = Gauge("bridge_ingest_connections_active", "Client connections open now.")
DISCONNECTS = Counter(
    "bridge_ingest_disconnects_total", "Client connections ended, by reason.", ["reason"]
)
FRAMES_IN = Counter(
    "bridge_ingest_frames_total", "Frames received from clients, by type.", ["type"]
)
BYTES_IN = Counter("bridge_ingest_bytes_total", "Bytes received from clients (all frames).")
PROTOCOL_ERRORS = Counter(
    "bridge_ingest_protocol_errors_total", "ERROR frames sent for client input, by code.", ["code"]
)

log = structlog.get_logger("bridge.ingest")

READ_SIZE: Final = 64 * 1024  # one read from the socket
READER_LIMIT: Final = 64 * 1024  # the StreamReader pauses the transport past twice this
# Connections the kernel queues before we accept them (asyncio's default is 100): a burst of
# clients beyond it gets EAGAIN on a non-blocking AF_UNIX connect. The kernel caps it at
# net.core.somaxconn, as systemd's Backlog= default does for an inherited socket.
LISTEN_BACKLOG: Final = socket.SOMAXCONN
CLOSE_TIMEOUT_S: Final = 2.0
# Closing after an ERROR: the daemon half-closes, then reads and discards what the client still
# sends for up to this long (and this many bytes) before closing. Closing a socket with unread
# input makes the kernel reset the connection, which can destroy the ERROR before it is read.
LINGER_S: Final = 1.0
LINGER_BYTES: Final = 4 << 20

_FRAME_NAMES: Final[dict[type, str]] = {
    p.Hello: "hello",
    p.Audio: "audio",
    p.EndTurn: "end_turn",
    p.Interrupt: "interrupt",
    p.Mark: "mark",
    p.Ping: "ping",
    p.Close: "close",
}


class IngestSetupError(Exception):
    """The listeners cannot be set up as configured (message names the option and the fix)."""


def _ingest(name: str) -> Any:
    return setting_default(IngestConfig, name)


@dataclass
class IngestOptions:
    """Defaults are the settings model's (bridge/config.py), but for ``unix_path``: a server
    built by hand binds no system path unless told to. :meth:`from_settings` builds them."""

    unix_path: Path | None = None
    unix_mode: int = int(_ingest("socket_mode"), 8)
    unix_group: str | None = _ingest("socket_group")  # group name or numeric gid
    # Empty (with allowed_gids empty) = anyone.
    allowed_uids: frozenset[int] = frozenset(_ingest("allowed_uids"))
    allowed_gids: frozenset[int] = frozenset(_ingest("allowed_gids"))
    tcp_host: str = _ingest("tcp_host")
    tcp_port: int | None = _ingest("tcp_port")  # 0 = an ephemeral port (IngestServer.tcp_address)
    tcp_token: str | None = field(default=None, repr=False)
    allow_non_loopback_tcp: bool = _ingest("allow_non_loopback_tcp")
    hello_timeout_s: float = _ingest("hello_timeout_s")
    inherited_fds: list[int] = field(default_factory=list)
    max_payload: int = p.MAX_PAYLOAD
    max_out_buffer: int = 1 << 20  # bytes queued to a client that does not read: then dropped

    @classmethod
    def from_settings(cls, settings: Settings, inherited_fds: list[int]) -> IngestOptions:
        """Inherited (socket-activated) listeners replace the configured Unix socket."""
        ing = settings.ingest
        return cls(
            unix_path=None if inherited_fds else ing.socket_path,
            unix_mode=int(ing.socket_mode, 8),
            unix_group=ing.socket_group,
            allowed_uids=frozenset(ing.allowed_uids),
            allowed_gids=frozenset(ing.allowed_gids),
            tcp_host=ing.tcp_host,
            tcp_port=ing.tcp_port,
            tcp_token=ing.tcp_token.get_secret_value() if ing.tcp_token else None,
            allow_non_loopback_tcp=ing.allow_non_loopback_tcp,
            hello_timeout_s=ing.hello_timeout_s,
            inherited_fds=inherited_fds,
        )


# ---------------------------------------------------------------------------------------------
# One connection.


class _Connection:
    """One client connection; the :class:`ClientLink` of its session."""

    def __init__(
        self,
        server: IngestServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        tcp: bool,
        peer: str,
    ) -> None:
        self.peer = peer
        self._server = server
        self._opts = server.options
        self._reader = reader
        self._writer = writer
        self._tcp = tcp
        self._proto = p.ServerProtocol(max_payload=self._opts.max_payload)
        self._ready_sent = False
        self._early_events: list[bytes] = []  # EVENTs the session sent before READY went out
        self._closing = False
        self._by_session = False  # the session closed the link: no on_disconnect
        self._client_closed = False  # the client sent CLOSE
        self._reason = "eof"
        self._abort_timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None

    # ClientLink ----------------------------------------------------------------------------

    def send_event(self, event: str, fields: Mapping[str, Any]) -> None:
        if self._closing:
            return
        try:
            frame = p.encode_event(event, fields)
        except (TypeError, ValueError) as exc:
            log.error("ingest_event_not_sent", peer=self.peer, event_name=event, error=str(exc))
            return
        if self._ready_sent:
            self._write(frame)
        else:
            self._early_events.append(frame)

    def send_error(self, err: BridgeError) -> None:
        if self._closing:
            return
        self._write(p.encode_error(err.code, err.message, err.fatal))
        if err.fatal:
            self._by_session = True
            self._close(f"error:{err.code}")

    async def aclose(self) -> None:
        self._by_session = True
        self._close("session_closed")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), LINGER_S + CLOSE_TIMEOUT_S)

    # Writing and closing ---------------------------------------------------------------------

    def _write(self, frame: bytes) -> None:
        transport = self._writer.transport
        if self._closing or transport.is_closing():
            return
        self._writer.write(frame)
        buffered = transport.get_write_buffer_size()
        if buffered > self._opts.max_out_buffer:
            log.warning(
                "ingest_client_not_reading",
                peer=self.peer,
                buffered=buffered,
                limit=self._opts.max_out_buffer,
            )
            self._abort("out_buffer_full")

    def _close(self, reason: str) -> None:
        """Stop sending: flush what is queued, then half-close (the client reads EOF).

        The socket itself is closed by :meth:`shutdown` at the end of the connection's task, or
        by a timer if that task is held up (in a session call that does not return).
        """
        if self._closing:
            return
        self._closing, self._reason = True, reason
        transport = self._writer.transport
        if transport.is_closing():
            return
        with contextlib.suppress(OSError, RuntimeError):  # the peer may be gone already
            if self._writer.can_write_eof():
                self._writer.write_eof()
        loop = asyncio.get_running_loop()
        self._abort_timer = loop.call_later(LINGER_S + CLOSE_TIMEOUT_S, transport.abort)

    def _abort(self, reason: str) -> None:
        """Close now, dropping anything queued."""
        if not self._closing:
            self._closing, self._reason = True, reason
        self._writer.transport.abort()

    async def shutdown(self) -> None:
        """Close the connection; after an orderly close, first drain what the client still sends."""
        self._close(self._reason)
        try:
            if not self._writer.transport.is_closing():
                discarded = 0
                async with asyncio.timeout(LINGER_S):
                    while discarded < LINGER_BYTES and (data := await self._reader.read(READ_SIZE)):
                        discarded += len(data)
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            if self._abort_timer is not None:
                self._abort_timer.cancel()
            self._writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), CLOSE_TIMEOUT_S)

    def _reject(self, err: BridgeError, *, protocol: bool = True) -> None:
        """Send a fatal ERROR and close (the connection's own decision, not the session's).

        ``protocol``: the client's input was at fault (counted in the protocol error metric).
        """
        if protocol:
            PROTOCOL_ERRORS.labels(str(err.code)).inc()
        log.info("ingest_rejected", peer=self.peer, code=str(err.code), reason=err.message)
        self._write(p.encode_error(err.code, err.message, True))
        self._close(f"error:{err.code}")

    # The connection's life -------------------------------------------------------------------

    async def run(self, host: SessionHost) -> None:
        handle: SessionHandle | None = None
        try:
            hello, backlog = await self._read_hello()
            if hello is None:
                return
            if self._tcp and not self._token_ok(hello):
                self._reject(
                    BridgeError(ErrorCode.UNAUTHORIZED, "TCP clients must send the right token")
                )
                return
            try:
                handle = await host.open(hello, self)
            except BridgeError as err:
                self._reject(BridgeError(err.code, err.message, fatal=True), protocol=False)
                return
            except Exception:
                log.exception("ingest_open_failed", peer=self.peer)
                self._reject(
                    BridgeError(ErrorCode.INTERNAL, "could not open the session"), protocol=False
                )
                return
            if self._closing:  # the session closed the link while opening
                return
            self._write(p.encode_ready(handle.ready))
            self._ready_sent = True
            for frame in self._early_events:
                self._write(frame)
            self._early_events.clear()
            log.info("ingest_ready", peer=self.peer, call=str(hello.call), client=hello.client)
            await self._serve(handle, backlog)
        except (ConnectionError, OSError) as exc:
            if not self._closing:
                self._reason = f"connection_error:{type(exc).__name__}"
        finally:
            self._close(self._reason)
            if handle is not None and not self._by_session and not self._client_closed:
                try:
                    handle.on_disconnect()
                except Exception:
                    log.exception("ingest_on_disconnect_failed", peer=self.peer)
            log.info("ingest_disconnected", peer=self.peer, reason=self._reason)

    async def _read(self) -> bytes:
        data = await self._reader.read(READ_SIZE)
        BYTES_IN.inc(len(data))
        return data

    async def _read_hello(self) -> tuple[Hello | None, list[p.ServerEvent]]:
        """Read until HELLO; returns it with any events that followed it in the same reads."""
        try:
            async with asyncio.timeout(self._opts.hello_timeout_s):
                while True:
                    data = await self._read()
                    if not data:
                        return None, []
                    self._proto.receive_data(data)
                    events = self._proto.events_received()
                    for i, event in enumerate(events):
                        if isinstance(event, Hello):
                            FRAMES_IN.labels("hello").inc()
                            return event, events[i + 1 :]
                        if isinstance(event, p.ProtocolViolation):
                            self._reject(event.to_error())
                            return None, []
        except TimeoutError:
            self._reject(
                BridgeError(
                    ErrorCode.HELLO_TIMEOUT,
                    f"no HELLO within {self._opts.hello_timeout_s:g} s of connecting",
                )
            )
            return None, []

    def _token_ok(self, hello: Hello) -> bool:
        expected = self._opts.tcp_token
        if not expected or hello.token is None:
            return False
        # Digests of equal length: the comparison's time reveals neither the token's content
        # nor its length, whatever length (up to a whole HELLO) the client sent.
        given = hashlib.sha256(hello.token.encode()).digest()
        return hmac.compare_digest(given, hashlib.sha256(expected.encode()).digest())

    async def _serve(self, handle: SessionHandle, events: list[p.ServerEvent]) -> None:
        while True:
            for event in events:
                if not await self._dispatch(handle, event) or self._closing:
                    return
            if self._closing:
                return
            data = await self._read()
            if not data:
                return  # reason stays "eof" unless something closed the link first
            self._proto.receive_data(data)
            events = self._proto.events_received()

    async def _dispatch(self, handle: SessionHandle, event: p.ServerEvent) -> bool:
        """Hand one event to the session; False ends the connection."""
        name = _FRAME_NAMES.get(type(event))
        if name is not None:
            FRAMES_IN.labels(name).inc()
        try:
            if isinstance(event, p.Audio):
                if len(event.data):
                    # Backpressure: no read happens until the session has taken this audio.
                    await handle.on_audio(np.frombuffer(event.data, dtype=np.int16))
            elif isinstance(event, p.EndTurn):
                await handle.on_end_turn()
            elif isinstance(event, p.Interrupt):
                await handle.on_interrupt()
            elif isinstance(event, p.Mark):
                await handle.on_mark(event.name)
            elif isinstance(event, p.Ping):
                self._write(p.encode_pong(event.payload))
            elif isinstance(event, p.Close):
                self._client_closed = True
                await handle.on_close()
                self._close("client_close")
                return False
            elif isinstance(event, p.ProtocolViolation):
                if event.fatal:
                    self._reject(event.to_error())
                    return False
                PROTOCOL_ERRORS.labels(str(event.code)).inc()
                log.info("ingest_frame_rejected", peer=self.peer, code=str(event.code))
                self._write(p.encode_error(event.code, event.message, False))
        except BridgeError as err:
            self.send_error(err)
            return not err.fatal
        except Exception:
            log.exception("ingest_session_failed", peer=self.peer, frame=name)
            self._write(p.encode_error(ErrorCode.INTERNAL, "internal error in the session", True))
            self._close("internal")
            return False
        return True


# ---------------------------------------------------------------------------------------------
# The server.


class IngestServer:
    """Accepts clients on the configured listeners and runs one connection task per client."""

    def __init__(self, host: SessionHost, options: IngestOptions) -> None:
        self.host = host
        self.options = options
        self._servers: list[asyncio.Server] = []
        self._connections: set[_Connection] = set()
        self._unix_file: tuple[Path, int, int] | None = None  # path, st_dev, st_ino we created
        self._tcp_address: tuple[str, int] | None = None

    @property
    def connections(self) -> int:
        return len(self._connections)

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        """The bound (host, port) of the TCP listener, once started."""
        return self._tcp_address

    @property
    def limits(self) -> dict[str, int]:
        """The protocol limits this server enforces, for the READY payload's ``limits``."""
        return {"max_payload": self.options.max_payload, "max_json": p.MAX_JSON}

    async def start(self) -> None:
        opts = self.options
        if not 0 < opts.max_payload <= p.MAX_PAYLOAD:
            raise IngestSetupError(f"ingest max_payload must be 1..{p.MAX_PAYLOAD}")
        if opts.tcp_port is not None and not opts.tcp_token:
            raise IngestSetupError(
                "ingest.tcp_token is required when ingest.tcp_port is set "
                "(TCP clients send it in HELLO)"
            )
        try:
            if opts.unix_path is not None:
                sock = _bind_unix(opts.unix_path, opts.unix_mode, opts.unix_group)
                st = os.stat(opts.unix_path)
                self._unix_file = (opts.unix_path, st.st_dev, st.st_ino)
                await self._serve_unix(sock)
                log.info("ingest_listening", unix=str(opts.unix_path), mode=oct(opts.unix_mode))
            if opts.tcp_port is not None:
                await self._check_tcp_host(opts.tcp_host)
                server = await asyncio.start_server(
                    self._accept_tcp,
                    opts.tcp_host,
                    opts.tcp_port,
                    limit=READER_LIMIT,
                    backlog=LISTEN_BACKLOG,
                )
                self._servers.append(server)
                host, port = server.sockets[0].getsockname()[:2]
                self._tcp_address = (host, port)
                log.info("ingest_listening", tcp=f"{host}:{port}")
            for fd in opts.inherited_fds:
                await self._serve_inherited(fd)
        except BaseException:
            await self.aclose()
            raise

    async def _serve_unix(self, sock: socket.socket) -> None:
        server = await asyncio.start_unix_server(
            self._accept_unix, sock=sock, limit=READER_LIMIT, backlog=LISTEN_BACKLOG
        )
        self._servers.append(server)

    async def _serve_inherited(self, fd: int) -> None:
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_STREAM:
            sock.detach()
            raise IngestSetupError(f"inherited fd {fd} is not a stream socket (ListenStream=)")
        sock.setblocking(False)
        if sock.family == socket.AF_UNIX:
            await self._serve_unix(sock)
            log.info("ingest_listening", inherited_fd=fd, unix=str(sock.getsockname()))
        elif sock.family in (socket.AF_INET, socket.AF_INET6):
            if not self.options.tcp_token:
                sock.detach()
                raise IngestSetupError(
                    f"inherited fd {fd} is a TCP socket: set ingest.tcp_token for its clients"
                )
            server = await asyncio.start_server(
                self._accept_tcp, sock=sock, limit=READER_LIMIT, backlog=LISTEN_BACKLOG
            )
            self._servers.append(server)
            log.info("ingest_listening", inherited_fd=fd, tcp=str(sock.getsockname()))
        else:
            sock.detach()
            raise IngestSetupError(f"inherited fd {fd} has unsupported address family")

    async def _check_tcp_host(self, host: str) -> None:
        if self.options.allow_non_loopback_tcp:
            return
        try:
            addresses = {ipaddress.ip_address(host)}
        except ValueError:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None)
            addresses = {ipaddress.ip_address(info[4][0]) for info in infos}
        if not addresses or not all(address.is_loopback for address in addresses):
            raise IngestSetupError(
                f"ingest.tcp_host {host!r} is not a loopback address: the PCM socket carries no "
                "encryption; use 127.0.0.1 or set ingest.allow_non_loopback_tcp"
            )

    async def stop_accepting(self) -> None:
        """Close the listeners; open connections carry on."""
        for server in self._servers:
            server.close()

    async def aclose(self) -> None:
        """Close listeners and every connection, and remove the socket file we created."""
        await self.stop_accepting()
        connections = list(self._connections)
        for conn in connections:
            conn._abort("server_closing")
            if conn.task is not None:
                conn.task.cancel()
        tasks = [c.task for c in connections if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), CLOSE_TIMEOUT_S)
        self._servers.clear()
        if self._unix_file is not None:
            path, dev, ino = self._unix_file
            self._unix_file = None
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) == (dev, ino):  # still ours, not a successor's
                    path.unlink()

    # Accepting -------------------------------------------------------------------------------

    async def _accept_unix(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        creds = _peer_credentials(writer)
        peer = f"unix:pid={creds[0]},uid={creds[1]},gid={creds[2]}" if creds else "unix:?"
        conn = _Connection(self, reader, writer, tcp=False, peer=peer)
        opts = self.options
        allowed = not (opts.allowed_uids or opts.allowed_gids) or (
            creds is not None and (creds[1] in opts.allowed_uids or creds[2] in opts.allowed_gids)
        )
        await self._run(conn, "unix", refuse=None if allowed else "peer is not in the allow-list")

    async def _accept_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = writer.get_extra_info("peername")
        peer = f"tcp:{address[0]}:{address[1]}" if address else "tcp:?"
        await self._run(_Connection(self, reader, writer, tcp=True, peer=peer), "tcp", refuse=None)

    async def _run(self, conn: _Connection, transport: str, refuse: str | None) -> None:
        CONNECTIONS_TOTAL.labels(transport).inc()
        CONNECTIONS_ACTIVE.inc()
        conn.task = asyncio.current_task()
        self._connections.add(conn)
        try:
            try:
                if refuse is not None:
                    conn._reject(BridgeError(ErrorCode.UNAUTHORIZED, f"{conn.peer}: {refuse}"))
                else:
                    await conn.run(self.host)
            except Exception:
                log.exception("ingest_connection_failed", peer=conn.peer)
            finally:
                await conn.shutdown()
        except asyncio.CancelledError:
            # aclose() cancels connection tasks; the task must not end cancelled (asyncio's
            # stream callback would log that as an error).
            conn._abort("server_closing")
        finally:
            self._connections.discard(conn)
            CONNECTIONS_ACTIVE.dec()
            DISCONNECTS.labels(conn._reason.split(":")[0]).inc()


# ---------------------------------------------------------------------------------------------
# Unix socket set-up.


def _peer_credentials(writer: asyncio.StreamWriter) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the peer process, from SO_PEERCRED (Linux)."""
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def _is_listening(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        raise IngestSetupError(f"cannot tell whether something listens on {path}: {exc}") from exc
    finally:
        probe.close()
    return True


def _group_id(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise IngestSetupError(f"ingest.socket_group {group!r} does not exist") from None


def _bind_unix(path: Path, mode: int, group: str | None) -> socket.socket:
    """A bound, not yet listening Unix socket at ``path`` with ``mode`` (and ``group``) set.

    No client can connect before listen(), which the caller does after this returns, so the mode
    and group are in place before anyone can reach the socket.
    """
    gid = _group_id(group) if group is not None else None
    parent = path.parent
    if not parent.exists():
        parent.mkdir(parents=True, mode=0o750)
        os.chmod(parent, 0o750)  # mkdir's mode is filtered by the umask
    try:
        st: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise IngestSetupError(f"ingest socket path {path} is a symlink: refusing to use it")
        if not stat.S_ISSOCK(st.st_mode):
            raise IngestSetupError(f"ingest socket path {path} exists and is not a socket")
        if _is_listening(path):
            raise IngestSetupError(
                f"another process is listening on {path}: stop it or choose another socket_path"
            )
        path.unlink()  # a stale socket left by a process that died
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # bind() creates the file with 0777 & ~umask: set the umask so the file is born with at
        # most `mode`. The umask is process-wide; it only ever narrows, for these few lines.
        old_umask = os.umask(0o777 & ~mode)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        if gid is not None:
            os.chown(path, -1, gid)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


__all__ = [
    "ClientLink",
    "IngestOptions",
    "IngestServer",
    "IngestSetupError",
    "SessionHandle",
    "SessionHost",
]
