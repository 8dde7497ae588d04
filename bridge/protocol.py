"""The local socket protocol, version 1, without I/O: bytes in, typed events out.

docs/protocol.md is the normative description; this module is its reference implementation. It is
written in the style of websockets' sans-I/O core: a :class:`ServerProtocol` (the daemon's side)
and a :class:`ClientProtocol` (a client's side) are fed whatever bytes arrived with
``receive_data`` and hand back typed, frozen events from ``events_received``; the ``send_*``
methods (and the module-level ``encode_*`` functions) return the bytes to write. Nothing here
touches a socket or an event loop, so every rule is tested by feeding bytes.

Wire format: each frame is a 6-byte header ``type u8, flags u8, length u32 big-endian`` followed
by ``length`` bytes of payload. Flag bit ``0x01`` (IGNORABLE) lets a receiver skip a frame type it
does not know; an unknown type without it is a fatal ``bad_frame``. A length over the frame
type's limit is a fatal ``frame_too_large`` decided from the header alone, before any of the
payload is buffered.

A parser never raises on input: every byte sequence maps to events, a malformed one to a
:class:`ProtocolViolation` carrying the :class:`~bridge.errors.ErrorCode` to send back. After a
fatal violation (or a CLOSE) the parser ignores all further input.

Audio payloads are ``memoryview`` slices of the bytes that were received, not copies, whenever a
frame arrived within one ``receive_data`` chunk; a frame spread over several chunks is joined once.
The bytes passed to ``receive_data`` must therefore not be mutated afterwards (``bytes`` never are;
a ``bytearray`` is copied on entry).
"""

from __future__ import annotations

import json
import re
import struct
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final, TypeAlias, TypeGuard

from bridge.errors import BridgeError, ErrorCode
from bridge.media import AudioFormat

PROTOCOL_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = (1,)

HEADER: Final = struct.Struct(">BBI")
HEADER_SIZE: Final = HEADER.size  # 6
FLAG_IGNORABLE: Final = 0x01

MAX_PAYLOAD: Final = 1 << 20  # 1 MiB: AUDIO, and skipped (ignorable) unknown frames
MAX_JSON: Final = 64 << 10  # 64 KiB: every JSON payload
MAX_PING: Final = 64  # PING/PONG opaque payload
MAX_MARK_NAME: Final = 256

MIN_SAMPLE_RATE: Final = 8000
MAX_SAMPLE_RATE: Final = 48000
CHANNELS: Final = (1, 2)
ENCODING: Final = "s16le"
VIDEO_QUALITIES: Final = ("low", "medium", "high", "very_high")
VIDEO_ENCODINGS: Final = ("H264", "VP8")
MEDIA_PATHS: Final = ("auto", "relay", "transcode")
MAX_SESSION_DURATION_S: Final = 86400
MAX_STRING: Final = 256  # session_key, client

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f]+")


class FrameType(IntEnum):
    # client -> daemon
    HELLO = 0x01
    AUDIO = 0x10
    END_TURN = 0x11
    INTERRUPT = 0x12
    MARK = 0x13
    PING = 0x1E
    CLOSE = 0x1F
    # daemon -> client
    READY = 0x02
    EVENT = 0x20
    ERROR = 0x21
    PONG = 0x2E


# ---------------------------------------------------------------------------------------------
# Events. Server side: what a client sent. Client side: what the daemon sent. Both: violations.


@dataclass(frozen=True, slots=True)
class CallRef:
    """The Stream call a session joins: ``type`` and ``id``, each ``[A-Za-z0-9_-]{1,64}``."""

    type: str
    id: str

    def __str__(self) -> str:
        return f"{self.type}:{self.id}"


@dataclass(frozen=True, slots=True)
class AvatarOverrides:
    """Per-session overrides of the configured avatar; ``None`` = use the daemon's setting."""

    avatar_id: str | None = None
    video_quality: str | None = None
    video_encoding: str | None = None
    is_sandbox: bool | None = None
    max_session_duration: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """Only the fields the client set, ready to merge over the configuration."""
        return {
            name: value for name in _AVATAR_FIELDS if (value := getattr(self, name)) is not None
        }


_AVATAR_FIELDS: Final = (
    "avatar_id",
    "video_quality",
    "video_encoding",
    "is_sandbox",
    "max_session_duration",
)


@dataclass(frozen=True, slots=True)
class Hello:
    """A validated HELLO. ``token`` and ``session_key`` are credentials: kept out of ``repr``."""

    call: CallRef
    audio: AudioFormat
    avatar: AvatarOverrides = AvatarOverrides()
    session_key: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    media_path: str | None = None
    client: str | None = None
    v: int = PROTOCOL_VERSION

    def to_json(self) -> dict[str, Any]:
        """The HELLO payload, keys in the order docs/protocol.md uses, optional ones only if set."""
        obj: dict[str, Any] = {
            "v": self.v,
            "call": {"type": self.call.type, "id": self.call.id},
            "audio": {
                "sample_rate": self.audio.sample_rate,
                "channels": self.audio.channels,
                "encoding": ENCODING,
            },
        }
        if avatar := self.avatar.as_dict():
            obj["avatar"] = avatar
        for name in ("session_key", "token", "media_path", "client"):
            if (value := getattr(self, name)) is not None:
                obj[name] = value
        return obj


@dataclass(frozen=True, slots=True)
class Audio:
    """PCM in the negotiated format; a whole number of sample frames. A view, not a copy."""

    data: memoryview


@dataclass(frozen=True, slots=True)
class EndTurn:
    pass


@dataclass(frozen=True, slots=True)
class Interrupt:
    pass


@dataclass(frozen=True, slots=True)
class Mark:
    name: str


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    pass


@dataclass(frozen=True, slots=True)
class Ready:
    """The daemon's READY. ``raw`` is the whole payload (forward-compatible extra keys included)."""

    session_id: str
    session_key: str
    resumed: bool
    audio: AudioFormat
    limits: Mapping[str, Any]
    raw: Mapping[str, Any] = field(repr=False)
    v: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class EventMsg:
    """An EVENT: its name and the rest of its fields."""

    event: str
    fields: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Error:
    """An ERROR from the daemon. ``code`` is a string: a newer daemon may send codes we lack."""

    code: str
    message: str
    fatal: bool

    @property
    def error_code(self) -> ErrorCode | None:
        try:
            return ErrorCode(self.code)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The peer broke the protocol. The receiver reports ``code`` (an ERROR frame, on the daemon's
    side) and, when ``fatal``, closes the connection."""

    code: ErrorCode
    message: str
    fatal: bool

    def to_error(self) -> BridgeError:
        return BridgeError(self.code, self.message, fatal=self.fatal)


ServerEvent: TypeAlias = (
    Hello | Audio | EndTurn | Interrupt | Mark | Ping | Close | ProtocolViolation
)
ClientEvent: TypeAlias = Ready | EventMsg | Error | Pong | ProtocolViolation


# ---------------------------------------------------------------------------------------------
# Encoding. Every function returns the complete frame as bytes.


def dump_json(obj: Any) -> bytes:
    """The canonical JSON of the protocol: compact, UTF-8, no NaN/Infinity, keys as given."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def encode_header(ftype: int, length: int, flags: int = 0) -> bytes:
    return HEADER.pack(ftype, flags, length)


def encode_frame(ftype: int, payload: bytes | memoryview = b"", flags: int = 0) -> bytes:
    return HEADER.pack(ftype, flags, len(payload)) + payload


def encode_json_frame(ftype: int, obj: Any, flags: int = 0) -> bytes:
    payload = dump_json(obj)
    if len(payload) > MAX_JSON:
        raise ValueError(f"{FrameType(ftype).name} payload is {len(payload)} bytes > {MAX_JSON}")
    return encode_frame(ftype, payload, flags)


def encode_hello(hello: Hello) -> bytes:
    return encode_json_frame(FrameType.HELLO, hello.to_json())


def encode_audio(pcm: bytes | memoryview) -> bytes:
    if len(pcm) > MAX_PAYLOAD:
        raise ValueError(f"AUDIO payload is {len(pcm)} bytes > {MAX_PAYLOAD}: split it")
    return encode_frame(FrameType.AUDIO, pcm)


def encode_end_turn() -> bytes:
    return encode_frame(FrameType.END_TURN)


def encode_interrupt() -> bytes:
    return encode_frame(FrameType.INTERRUPT)


def encode_mark(name: str) -> bytes:
    if not 1 <= len(name) <= MAX_MARK_NAME:
        raise ValueError(f"a MARK name has 1 to {MAX_MARK_NAME} characters")
    return encode_json_frame(FrameType.MARK, {"name": name})


def encode_ping(payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PING:
        raise ValueError(f"a PING payload has at most {MAX_PING} bytes")
    return encode_frame(FrameType.PING, payload)


def encode_close() -> bytes:
    return encode_frame(FrameType.CLOSE)


def encode_ready(payload: Mapping[str, Any]) -> bytes:
    return encode_json_frame(FrameType.READY, dict(payload))


def encode_event(event: str, fields: Mapping[str, Any] | None = None) -> bytes:
    return encode_json_frame(FrameType.EVENT, {"event": event, **(fields or {})})


def encode_error(code: ErrorCode | str, message: str, fatal: bool) -> bytes:
    return encode_json_frame(
        FrameType.ERROR, {"code": str(code), "message": message, "fatal": fatal}
    )


def encode_pong(payload: bytes | memoryview = b"") -> bytes:
    if len(payload) > MAX_PING:
        raise ValueError(f"a PONG payload has at most {MAX_PING} bytes")
    return encode_frame(FrameType.PONG, bytes(payload))


# ---------------------------------------------------------------------------------------------
# Validation helpers. Each returns the value or raises _Invalid(code, message).


class _Invalid(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _load_json_object(payload: memoryview, what: str) -> dict[str, Any]:
    """Strict JSON: UTF-8, an object at the top, no NaN/Infinity, no lone surrogate escapes.
    Raises _Invalid(bad_json)."""
    try:
        text = bytes(payload).decode("utf-8")
        obj = json.loads(text, parse_constant=_reject_constant)
        # Valid UTF-8 cannot carry a surrogate, but a "\ud800" escape decodes to one, and a
        # string holding it can never be encoded again (a MARK's echo, a log line). Only an
        # escape can produce one, so the re-encoding check runs only when the text has one.
        if "\\u" in text:
            dump_json(obj)
    except UnicodeEncodeError:
        raise _Invalid(
            ErrorCode.BAD_JSON, f"{what} payload has a lone surrogate escape (not Unicode text)"
        ) from None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise _Invalid(ErrorCode.BAD_JSON, f"{what} payload is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _Invalid(ErrorCode.BAD_JSON, f"{what} payload must be a JSON object")
    return obj


def _is_int(value: Any) -> TypeGuard[int]:
    return type(value) is int  # bool is an int subclass: not accepted


def _str_field(obj: Mapping[str, Any], key: str, where: str, *, max_len: int = MAX_STRING) -> str:
    value = obj[key]
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise _Invalid(
            ErrorCode.BAD_HELLO, f"{where}{key} must be a string of 1 to {max_len} characters"
        )
    if not _PRINTABLE.fullmatch(value):
        raise _Invalid(ErrorCode.BAD_HELLO, f"{where}{key} must not contain control characters")
    return value


def _object(obj: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    value = obj[key]
    if not isinstance(value, dict):
        raise _Invalid(ErrorCode.BAD_HELLO, f"{key} must be a JSON object")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise _Invalid(
            ErrorCode.BAD_HELLO,
            f"{key} has unknown field(s) {', '.join(unknown)} (known: {', '.join(allowed)})",
        )
    return value


def parse_hello(payload: memoryview) -> Hello:
    """Validate a HELLO payload. Raises BridgeError with the code docs/protocol.md names."""
    try:
        return _parse_hello(payload)
    except _Invalid as exc:
        raise BridgeError(exc.code, exc.message, fatal=True) from None


def _parse_hello(payload: memoryview) -> Hello:
    obj = _load_json_object(payload, "HELLO")
    # The version first: a HELLO of another version may have another shape altogether.
    if "v" not in obj:
        raise _Invalid(ErrorCode.BAD_HELLO, "HELLO is missing v (the protocol version)")
    version = obj["v"]
    if not _is_int(version):
        raise _Invalid(ErrorCode.BAD_HELLO, "v must be an integer (the protocol version)")
    if version not in SUPPORTED_VERSIONS:
        raise _Invalid(
            ErrorCode.UNSUPPORTED_VERSION,
            f"protocol version {version} is not supported (supported: "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))})",
        )

    missing = [key for key in ("call", "audio") if key not in obj]
    if missing:
        raise _Invalid(ErrorCode.BAD_HELLO, f"HELLO is missing {', '.join(missing)}")
    call = _object(obj, "call", ("type", "id"))
    for key in ("type", "id"):
        value = call.get(key)
        if not isinstance(value, str) or not _ID.fullmatch(value):
            raise _Invalid(ErrorCode.BAD_HELLO, f"call.{key} must match [A-Za-z0-9_-]{{1,64}}")

    audio = _object(obj, "audio", ("sample_rate", "channels", "encoding"))
    missing = [key for key in ("sample_rate", "channels", "encoding") if key not in audio]
    if missing:
        raise _Invalid(ErrorCode.BAD_HELLO, f"audio is missing {', '.join(missing)}")
    rate, channels, encoding = audio["sample_rate"], audio["channels"], audio["encoding"]
    if not _is_int(rate) or not _is_int(channels) or not isinstance(encoding, str):
        raise _Invalid(
            ErrorCode.BAD_HELLO,
            "audio.sample_rate and audio.channels must be integers, audio.encoding a string",
        )
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise _Invalid(
            ErrorCode.UNSUPPORTED_FORMAT,
            f"sample_rate {rate} Hz is not supported ({MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE})",
        )
    if channels not in CHANNELS:
        raise _Invalid(ErrorCode.UNSUPPORTED_FORMAT, f"channels {channels} is not 1 or 2")
    if encoding != ENCODING:
        raise _Invalid(
            ErrorCode.UNSUPPORTED_FORMAT,
            f"encoding {encoding[:32]!r} is not supported (only {ENCODING})",
        )

    avatar = AvatarOverrides()
    if obj.get("avatar") is not None:
        a = _object(obj, "avatar", _AVATAR_FIELDS)
        values: dict[str, Any] = {}
        if a.get("avatar_id") is not None:
            values["avatar_id"] = _str_field(a, "avatar_id", "avatar.", max_len=128)
        for key, allowed in (
            ("video_quality", VIDEO_QUALITIES),
            ("video_encoding", VIDEO_ENCODINGS),
        ):
            if a.get(key) is not None:
                if a[key] not in allowed:
                    raise _Invalid(
                        ErrorCode.BAD_HELLO, f"avatar.{key} must be one of {', '.join(allowed)}"
                    )
                values[key] = a[key]
        if a.get("is_sandbox") is not None:
            if not isinstance(a["is_sandbox"], bool):
                raise _Invalid(ErrorCode.BAD_HELLO, "avatar.is_sandbox must be true or false")
            values["is_sandbox"] = a["is_sandbox"]
        if a.get("max_session_duration") is not None:
            seconds = a["max_session_duration"]
            if not _is_int(seconds) or not 1 <= seconds <= MAX_SESSION_DURATION_S:
                raise _Invalid(
                    ErrorCode.BAD_HELLO,
                    "avatar.max_session_duration must be whole seconds, "
                    f"1..{MAX_SESSION_DURATION_S}",
                )
            values["max_session_duration"] = seconds
        avatar = AvatarOverrides(**values)

    optional: dict[str, str | None] = {}
    for key in ("session_key", "client"):
        optional[key] = _str_field(obj, key, "") if obj.get(key) is not None else None
    # The token is compared, not validated: whatever string a client sends that is not the
    # configured token (too long, empty, odd characters) is the daemon's `unauthorized` on TCP,
    # and is ignored on a Unix socket, which a parser that cannot tell them apart must allow.
    token = obj.get("token")
    if token is not None and not isinstance(token, str):
        raise _Invalid(ErrorCode.BAD_HELLO, "token must be a string")
    media_path = obj.get("media_path")
    if media_path is not None and media_path not in MEDIA_PATHS:
        raise _Invalid(ErrorCode.BAD_HELLO, f"media_path must be one of {', '.join(MEDIA_PATHS)}")

    return Hello(
        call=CallRef(call["type"], call["id"]),
        audio=AudioFormat(rate, channels),
        avatar=avatar,
        session_key=optional["session_key"],
        token=token,
        media_path=media_path,
        client=optional["client"],
        v=version,
    )


# ---------------------------------------------------------------------------------------------
# The frame reader shared by both sides.

_EMPTY: Final = memoryview(b"")


class _FrameReader:
    """Splits a byte stream into frames; subclasses decide what each frame means.

    ``_limits`` maps every frame type this side accepts to its maximum payload; any other type is
    unknown here (skipped when IGNORABLE, else fatal ``bad_frame``).
    """

    def __init__(self, limits: Mapping[int, int], max_skip: int) -> None:
        self._limits = dict(limits)
        self._max_skip = max_skip
        self._chunks: deque[memoryview] = deque()
        self._buffered = 0
        self._skip = 0  # payload bytes of an ignored frame still to discard
        self._pending: tuple[int, int, int] | None = None  # header awaiting its payload
        self._events: list[Any] = []
        self._closed = False

    @property
    def closed(self) -> bool:
        """True after a fatal violation or a CLOSE: further input is ignored."""
        return self._closed

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed or not data:
            return
        if isinstance(data, bytes):
            view = memoryview(data)
        elif isinstance(data, memoryview) and data.readonly and data.format == "B":
            view = data
        else:
            view = memoryview(bytes(data))
        self._chunks.append(view)
        self._buffered += len(view)
        self._parse()

    def _parse(self) -> None:
        while not self._closed:
            if self._skip:
                self._skip -= self._discard(self._skip)
                if self._skip:
                    return
            if self._pending is None:
                if self._buffered < HEADER_SIZE:
                    return
                ftype, flags, length = HEADER.unpack(self._take(HEADER_SIZE))
                self._on_header(ftype, flags, length)
                continue
            ftype, flags, length = self._pending
            if self._buffered < length:
                return
            self._pending = None
            self._on_frame(ftype, flags, self._take(length))

    def _on_header(self, ftype: int, flags: int, length: int) -> None:
        limit = self._limits.get(ftype)
        if limit is None:
            if not flags & FLAG_IGNORABLE:
                self._fatal(ErrorCode.BAD_FRAME, f"unknown frame type 0x{ftype:02x}")
            elif length > self._max_skip:
                self._fatal(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"ignorable frame type 0x{ftype:02x} has length {length} > {self._max_skip}",
                )
            else:
                self._skip = length
            return
        if length > limit:
            name = FrameType(ftype).name
            self._fatal(
                ErrorCode.FRAME_TOO_LARGE,
                f"{name} has no payload, got length {length}"
                if limit == 0
                else f"{name} length {length} exceeds the limit of {limit} bytes",
            )
            return
        if self._admit(FrameType(ftype), length):
            self._pending = (ftype, flags, length)

    def _admit(self, ftype: FrameType, length: int) -> bool:
        """Header-time checks of a known type; False when handled (rejected or skipped)."""
        return True

    def _on_frame(self, ftype: int, flags: int, payload: memoryview) -> None:
        raise NotImplementedError

    def _take(self, n: int) -> memoryview:
        """The next ``n`` buffered bytes: a slice of one chunk when possible, else one join."""
        if n == 0:
            return _EMPTY
        self._buffered -= n
        first = self._chunks[0]
        if len(first) >= n:
            if len(first) == n:
                self._chunks.popleft()
            else:
                self._chunks[0] = first[n:]
            return first[:n]
        pieces: list[memoryview] = []
        while n:
            chunk = self._chunks.popleft()
            if len(chunk) > n:
                self._chunks.appendleft(chunk[n:])
                chunk = chunk[:n]
            pieces.append(chunk)
            n -= len(chunk)
        return memoryview(b"".join(pieces))

    def _discard(self, n: int) -> int:
        """Drop up to ``n`` buffered bytes; returns how many were dropped."""
        dropped = 0
        while self._chunks and dropped < n:
            chunk = self._chunks[0]
            k = min(len(chunk), n - dropped)
            if k == len(chunk):
                self._chunks.popleft()
            else:
                self._chunks[0] = chunk[k:]
            dropped += k
        self._buffered -= dropped
        return dropped

    def _emit(self, event: Any) -> None:
        self._events.append(event)

    def _violation(self, code: ErrorCode, message: str, *, fatal: bool) -> None:
        self._emit(ProtocolViolation(code, message, fatal))
        if fatal:
            self._shut()

    def _fatal(self, code: ErrorCode, message: str) -> None:
        self._violation(code, message, fatal=True)

    def _shut(self) -> None:
        self._closed = True
        self._chunks.clear()
        self._buffered = 0
        self._pending = None
        self._skip = 0

    def _pop_events(self) -> list[Any]:
        events, self._events = self._events, []
        return events


class ServerProtocol(_FrameReader):
    """The daemon's side of one connection.

    The first frame must be HELLO (anything else known is a fatal ``not_ready``); after it,
    ``audio_format`` holds the negotiated format and AUDIO payloads are checked against it.
    """

    def __init__(self, *, max_payload: int = MAX_PAYLOAD) -> None:
        if not 0 < max_payload <= MAX_PAYLOAD:
            raise ValueError(f"max_payload must be 1..{MAX_PAYLOAD}")
        super().__init__(
            {
                FrameType.HELLO: MAX_JSON,
                FrameType.AUDIO: max_payload,
                FrameType.END_TURN: 0,
                FrameType.INTERRUPT: 0,
                FrameType.MARK: MAX_JSON,
                FrameType.PING: MAX_PING,
                FrameType.CLOSE: 0,
            },
            max_skip=MAX_PAYLOAD,
        )
        self.max_payload = max_payload
        self.hello: Hello | None = None
        self.audio_format: AudioFormat | None = None
        self._frame_bytes = 0

    def events_received(self) -> list[ServerEvent]:
        return self._pop_events()

    def _admit(self, ftype: FrameType, length: int) -> bool:
        if self.hello is None:
            if ftype is not FrameType.HELLO:
                self._fatal(ErrorCode.NOT_READY, f"{ftype.name} before HELLO: send HELLO first")
                return False
        elif ftype is FrameType.HELLO:
            self._fatal(ErrorCode.BAD_HELLO, "HELLO was already received on this connection")
            return False
        elif ftype is FrameType.AUDIO and length % self._frame_bytes:
            # Decided from the header: the payload is skipped, never buffered.
            self._violation(
                ErrorCode.ODD_AUDIO_LENGTH,
                f"AUDIO of {length} bytes is not a whole number of {self._frame_bytes}-byte "
                "sample frames; the frame was dropped",
                fatal=False,
            )
            self._skip = length
            return False
        return True

    def _on_frame(self, ftype: int, flags: int, payload: memoryview) -> None:
        if ftype == FrameType.AUDIO:
            self._emit(Audio(payload))
        elif ftype == FrameType.HELLO:
            try:
                hello = _parse_hello(payload)
            except _Invalid as exc:
                self._fatal(exc.code, exc.message)
                return
            self.hello, self.audio_format = hello, hello.audio
            self._frame_bytes = 2 * hello.audio.channels
            self._emit(hello)
        elif ftype == FrameType.END_TURN:
            self._emit(EndTurn())
        elif ftype == FrameType.INTERRUPT:
            self._emit(Interrupt())
        elif ftype == FrameType.MARK:
            self._on_mark(payload)
        elif ftype == FrameType.PING:
            self._emit(Ping(bytes(payload)))
        elif ftype == FrameType.CLOSE:
            self._emit(Close())
            self._shut()

    def _on_mark(self, payload: memoryview) -> None:
        try:
            obj = _load_json_object(payload, "MARK")
        except _Invalid as exc:
            self._violation(exc.code, exc.message + "; the MARK was dropped", fatal=False)
            return
        name = obj.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_MARK_NAME:
            self._violation(
                ErrorCode.BAD_JSON,
                f'MARK needs {{"name": a string of 1 to {MAX_MARK_NAME} characters}}; dropped',
                fatal=False,
            )
            return
        self._emit(Mark(name))

    # Outgoing frames.

    def send_ready(self, payload: Mapping[str, Any]) -> bytes:
        return encode_ready(payload)

    def send_event(self, event: str, fields: Mapping[str, Any] | None = None) -> bytes:
        return encode_event(event, fields)

    def send_error(self, err: BridgeError | ProtocolViolation) -> bytes:
        return encode_error(err.code, err.message, err.fatal)

    def send_pong(self, payload: bytes | memoryview = b"") -> bytes:
        return encode_pong(payload)


class ClientProtocol(_FrameReader):
    """A client's side of one connection: parses READY, EVENT, ERROR and PONG."""

    def __init__(self) -> None:
        super().__init__(
            {
                FrameType.READY: MAX_JSON,
                FrameType.EVENT: MAX_JSON,
                FrameType.ERROR: MAX_JSON,
                FrameType.PONG: MAX_PING,
            },
            max_skip=MAX_PAYLOAD,
        )
        self.audio_format: AudioFormat | None = None

    def events_received(self) -> list[ClientEvent]:
        return self._pop_events()

    def _on_frame(self, ftype: int, flags: int, payload: memoryview) -> None:
        if ftype == FrameType.PONG:
            self._emit(Pong(bytes(payload)))
            return
        name = FrameType(ftype).name
        try:
            obj = _load_json_object(payload, name)
            if ftype == FrameType.READY:
                self._emit(_parse_ready(obj))
            elif ftype == FrameType.EVENT:
                event = obj.pop("event", None)
                if not isinstance(event, str) or not event:
                    raise _Invalid(ErrorCode.BAD_JSON, 'EVENT needs {"event": a name}')
                self._emit(EventMsg(event, obj))
            else:
                code, message, fatal = obj.get("code"), obj.get("message", ""), obj.get("fatal")
                if not isinstance(code, str) or not isinstance(message, str):
                    raise _Invalid(ErrorCode.BAD_JSON, "ERROR needs a string code and message")
                self._emit(Error(code, message, fatal is not False))
        except _Invalid as exc:
            # A broken READY leaves the client without a session: fatal. Others are skipped.
            self._violation(exc.code, exc.message, fatal=ftype == FrameType.READY)

    # Outgoing frames.

    def send_hello(self, hello: Hello) -> bytes:
        self.audio_format = hello.audio
        return encode_hello(hello)

    def send_audio(self, pcm: bytes | memoryview) -> bytes:
        if self.audio_format is not None and len(pcm) % (2 * self.audio_format.channels):
            raise ValueError("PCM must be a whole number of sample frames")
        return encode_audio(pcm)

    def send_end_turn(self) -> bytes:
        return encode_end_turn()

    def send_interrupt(self) -> bytes:
        return encode_interrupt()

    def send_mark(self, name: str) -> bytes:
        return encode_mark(name)

    def send_ping(self, payload: bytes = b"") -> bytes:
        return encode_ping(payload)

    def send_close(self) -> bytes:
        return encode_close()


def _parse_ready(obj: dict[str, Any]) -> Ready:
    session_id, session_key = obj.get("session_id"), obj.get("session_key", "")
    audio, limits = obj.get("audio"), obj.get("limits", {})
    if not isinstance(session_id, str) or not isinstance(session_key, str):
        raise _Invalid(ErrorCode.BAD_JSON, "READY needs string session_id and session_key")
    if not isinstance(audio, dict) or not isinstance(limits, dict):
        raise _Invalid(ErrorCode.BAD_JSON, "READY needs audio and limits objects")
    rate, channels = audio.get("sample_rate"), audio.get("channels")
    if not _is_int(rate) or not _is_int(channels):
        raise _Invalid(ErrorCode.BAD_JSON, "READY audio needs integer sample_rate and channels")
    version = obj.get("v", PROTOCOL_VERSION)
    return Ready(
        session_id=session_id,
        session_key=session_key,
        resumed=obj.get("resumed") is True,
        audio=AudioFormat(rate, channels),
        limits=limits,
        raw=obj,
        v=version if _is_int(version) else PROTOCOL_VERSION,
    )


__all__ = [
    "FLAG_IGNORABLE",
    "HEADER",
    "HEADER_SIZE",
    "MAX_JSON",
    "MAX_PAYLOAD",
    "MAX_PING",
    "PROTOCOL_VERSION",
    "Audio",
    "AvatarOverrides",
    "CallRef",
    "ClientEvent",
    "ClientProtocol",
    "Close",
    "EndTurn",
    "Error",
    "EventMsg",
    "FrameType",
    "Hello",
    "Interrupt",
    "Mark",
    "Ping",
    "Pong",
    "ProtocolViolation",
    "Ready",
    "ServerEvent",
    "ServerProtocol",
    "dump_json",
    "encode_audio",
    "encode_close",
    "encode_end_turn",
    "encode_error",
    "encode_event",
    "encode_frame",
    "encode_header",
    "encode_hello",
    "encode_interrupt",
    "encode_json_frame",
    "encode_mark",
    "encode_ping",
    "encode_pong",
    "encode_ready",
    "parse_hello",
]
