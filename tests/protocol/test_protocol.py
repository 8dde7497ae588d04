"""Sans-I/O details the vectors do not pin down: limits at their edges, copies, state, repr."""

from __future__ import annotations

import json

import pytest

from bridge import protocol as p
from bridge.errors import BridgeError, ErrorCode
from bridge.media import AudioFormat
from tests.protocol.conftest import hello_frame


def opened(**kwargs: int) -> p.ServerProtocol:
    proto = p.ServerProtocol(**kwargs)
    proto.receive_data(hello_frame())
    assert isinstance(proto.events_received()[0], p.Hello)
    return proto


def test_header_is_six_bytes_big_endian() -> None:
    assert p.encode_header(0x10, 0x01020304) == b"\x10\x00\x01\x02\x03\x04"
    assert p.HEADER_SIZE == 6


def test_audio_of_exactly_max_payload_is_accepted_one_byte_more_is_not() -> None:
    proto = opened()
    proto.receive_data(p.encode_header(p.FrameType.AUDIO, p.MAX_PAYLOAD) + bytes(p.MAX_PAYLOAD))
    (event,) = proto.events_received()
    assert isinstance(event, p.Audio) and len(event.data) == p.MAX_PAYLOAD
    proto.receive_data(p.encode_header(p.FrameType.AUDIO, p.MAX_PAYLOAD + 1))
    (event,) = proto.events_received()
    assert isinstance(event, p.ProtocolViolation) and event.code is ErrorCode.FRAME_TOO_LARGE


def test_a_lower_max_payload_is_enforced() -> None:
    proto = opened(max_payload=4096)
    proto.receive_data(p.encode_header(p.FrameType.AUDIO, 4098))
    (event,) = proto.events_received()
    assert isinstance(event, p.ProtocolViolation) and event.code is ErrorCode.FRAME_TOO_LARGE


def test_json_limit_is_64_kib() -> None:
    proto = p.ServerProtocol()
    proto.receive_data(p.encode_header(p.FrameType.HELLO, p.MAX_JSON + 1))
    (event,) = proto.events_received()
    assert isinstance(event, p.ProtocolViolation) and event.code is ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(ValueError):
        p.encode_event("stats", {"pad": "x" * p.MAX_JSON})


def test_oversize_is_decided_from_the_header_without_buffering() -> None:
    proto = opened()
    proto.receive_data(p.encode_header(p.FrameType.AUDIO, 0xFFFFFFFF))
    assert proto.closed
    proto.receive_data(bytes(1 << 20))  # the would-be payload is not kept
    assert proto._buffered == 0
    assert [e.code for e in proto.events_received()] == [ErrorCode.FRAME_TOO_LARGE]


def test_odd_audio_is_skipped_without_buffering_and_the_stream_resyncs() -> None:
    proto = opened()
    proto.receive_data(p.encode_header(p.FrameType.AUDIO, 100_001))
    proto.receive_data(bytes(50_000))
    assert proto._buffered == 0
    proto.receive_data(bytes(50_001) + p.encode_end_turn())
    events = proto.events_received()
    assert [type(e) for e in events] == [p.ProtocolViolation, p.EndTurn]
    assert not events[0].fatal  # type: ignore[union-attr]


def test_audio_is_a_view_of_the_received_bytes_not_a_copy() -> None:
    proto = opened()
    data = p.encode_audio(bytes(range(200)))
    proto.receive_data(data)
    (event,) = proto.events_received()
    assert isinstance(event, p.Audio)
    assert event.data.obj is data  # a slice of the caller's buffer
    assert bytes(event.data) == bytes(range(200))


def test_a_frame_split_over_chunks_is_joined_once() -> None:
    proto = opened()
    data = p.encode_audio(bytes(range(200)))
    proto.receive_data(data[:50])
    proto.receive_data(data[50:])
    (event,) = proto.events_received()
    assert isinstance(event, p.Audio) and bytes(event.data) == bytes(range(200))


def test_mutable_input_is_copied_on_entry() -> None:
    proto = opened()
    buf = bytearray(p.encode_audio(b"\x01\x00\x02\x00"))
    proto.receive_data(buf)
    buf[:] = bytes(len(buf))
    (event,) = proto.events_received()
    assert isinstance(event, p.Audio) and bytes(event.data) == b"\x01\x00\x02\x00"


def test_negotiated_format_is_kept() -> None:
    proto = p.ServerProtocol()
    assert proto.audio_format is None
    proto.receive_data(hello_frame(rate=24000, channels=2))
    proto.events_received()
    assert proto.audio_format == AudioFormat(24000, 2)


@pytest.mark.parametrize("first", [p.encode_ping(), p.encode_mark("m"), p.encode_close()])
def test_every_frame_but_hello_is_not_ready_before_hello(first: bytes) -> None:
    proto = p.ServerProtocol()
    proto.receive_data(first + hello_frame())
    (event,) = proto.events_received()
    assert isinstance(event, p.ProtocolViolation)
    assert (event.code, event.fatal) == (ErrorCode.NOT_READY, True)


def test_hello_errors_name_the_field() -> None:
    obj = {"v": 1, "call": {"type": "default", "id": "x"}, "audio": {"sample_rate": 16000}}
    with pytest.raises(BridgeError) as info:
        p.parse_hello(memoryview(json.dumps(obj).encode()))
    assert info.value.code is ErrorCode.BAD_HELLO
    assert "channels" in info.value.message and "encoding" in info.value.message


@pytest.mark.parametrize(
    ("patch", "code"),
    [
        ({"v": True}, ErrorCode.BAD_HELLO),  # a bool is not a version
        (
            {"audio": {"sample_rate": 16000.0, "channels": 1, "encoding": "s16le"}},
            ErrorCode.BAD_HELLO,
        ),
        (
            {"audio": {"sample_rate": 8000, "channels": 0, "encoding": "s16le"}},
            ErrorCode.UNSUPPORTED_FORMAT,
        ),
        ({"call": {"type": "default", "id": "x" * 65}}, ErrorCode.BAD_HELLO),
        ({"call": {"type": "", "id": "x"}}, ErrorCode.BAD_HELLO),
        ({"avatar": {"is_sandbox": "yes"}}, ErrorCode.BAD_HELLO),
        ({"avatar": {"max_session_duration": 0}}, ErrorCode.BAD_HELLO),
        ({"avatar": {"video_encoding": "h264"}}, ErrorCode.BAD_HELLO),
        ({"avatar": {"avatar": "x"}}, ErrorCode.BAD_HELLO),
        ({"token": 5}, ErrorCode.BAD_HELLO),
        ({"token": ["a"]}, ErrorCode.BAD_HELLO),
        ({"client": "a\nb"}, ErrorCode.BAD_HELLO),
        ({"session_key": "k" * 257}, ErrorCode.BAD_HELLO),
    ],
)
def test_hello_validation(patch: dict[str, object], code: ErrorCode) -> None:
    obj = {
        "v": 1,
        "call": {"type": "default", "id": "x"},
        "audio": {"sample_rate": 16000, "channels": 1, "encoding": "s16le"},
        **patch,
    }
    proto = p.ServerProtocol()
    proto.receive_data(p.encode_json_frame(p.FrameType.HELLO, obj))
    (event,) = proto.events_received()
    assert isinstance(event, p.ProtocolViolation)
    assert (event.code, event.fatal) == (code, True)


@pytest.mark.parametrize("token", ["", "t" * 257, "t" * 5000, "a\nb", "\u00e9\u2713"])
def test_the_parser_leaves_any_string_token_to_the_daemon(token: str) -> None:
    # Only the daemon knows whether the connection is TCP (token checked: `unauthorized`) or
    # Unix (token ignored), so no string token may be a HELLO error.
    proto = p.ServerProtocol()
    proto.receive_data(hello_frame(token=token))
    (hello,) = proto.events_received()
    assert isinstance(hello, p.Hello) and hello.token == token


_HELLO_HEAD = b'{"v":1,"call":{"type":"default","id":"x"},'
_AUDIO = b'"audio":{"sample_rate":16000,"channels":1,"encoding":"s16le"}'


@pytest.mark.parametrize(
    "payload",
    [
        # JSON text \\ud800 is a backslash and "ud800", not an escape.
        _HELLO_HEAD + _AUDIO + b',"client":"\\\\ud800"}',
        _HELLO_HEAD + _AUDIO + b',"client":"a\\\\\\\\ud800"}',
        _HELLO_HEAD + _AUDIO + b',"client":"\\\\ud83d\\\\ude00"}',
    ],
)
def test_escaped_backslashes_are_not_surrogates(payload: bytes) -> None:
    proto = p.ServerProtocol()
    proto.receive_data(p.encode_frame(p.FrameType.HELLO, payload))
    (hello,) = proto.events_received()
    assert isinstance(hello, p.Hello) and hello.client is not None and "ud8" in hello.client


LONE = ["\\\\\\ud800", "\\ud800", "\\udfff", "a\\udc00b", "\\ude00\\ud83d", "\\uD834x"]


@pytest.mark.parametrize("lone", LONE)
@pytest.mark.parametrize(
    "template",
    [
        _HELLO_HEAD + _AUDIO + b',"client":"@"}',
        _HELLO_HEAD + _AUDIO + b',"token":"@"}',
        _HELLO_HEAD + _AUDIO + b',"session_key":"@"}',
        _HELLO_HEAD + _AUDIO + b',"avatar":{"avatar_id":"@"}}',
        _HELLO_HEAD + _AUDIO + b',"future":["ok",{"deep":"@"}]}',  # ignored key, still checked
        _HELLO_HEAD + _AUDIO + b',"@":1}',  # in a key
        _HELLO_HEAD + b'"audio":{"sample_rate":16000,"channels":1,"encoding":"@"}}',
    ],
    ids=["client", "token", "session_key", "avatar_id", "nested", "key", "encoding"],
)
def test_a_lone_surrogate_anywhere_in_hello_is_fatal_bad_json(template: bytes, lone: str) -> None:
    proto = p.ServerProtocol()
    proto.receive_data(p.encode_frame(p.FrameType.HELLO, template.replace(b"@", lone.encode())))
    (event,) = proto.events_received()
    assert isinstance(event, p.ProtocolViolation)
    assert (event.code, event.fatal) == (ErrorCode.BAD_JSON, True)
    assert proto.hello is None and proto.closed


@pytest.mark.parametrize("lone", LONE)
@pytest.mark.parametrize(
    "payload", [b'{"name":"@"}', b'{"name":"ok","extra":"@"}', b'{"name":"ok","@":0}']
)
def test_a_lone_surrogate_in_a_mark_drops_it_and_keeps_the_connection(
    payload: bytes, lone: str
) -> None:
    proto = opened()
    proto.receive_data(
        p.encode_frame(p.FrameType.MARK, payload.replace(b"@", lone.encode())) + p.encode_ping()
    )
    violation, ping = proto.events_received()
    assert isinstance(violation, p.ProtocolViolation)
    assert (violation.code, violation.fatal) == (ErrorCode.BAD_JSON, False)
    assert isinstance(ping, p.Ping) and not proto.closed


def test_a_surrogate_pair_escape_is_one_character_and_its_echo_encodes() -> None:
    proto = opened()
    proto.receive_data(p.encode_frame(p.FrameType.MARK, b'{"name":"\\ud83d\\ude00!"}'))
    (mark,) = proto.events_received()
    assert mark == p.Mark("\U0001f600!")
    assert p.encode_event("mark", {"name": mark.name})  # the echo the daemon will send


@pytest.mark.parametrize(
    ("ftype", "payload", "fatal"),
    [
        (p.FrameType.READY, b'{"session_id":"s","audio":{},"limits":{},"x":"@"}', True),
        (p.FrameType.EVENT, b'{"event":"mark","name":"@"}', False),
        (p.FrameType.EVENT, b'{"event":"@"}', False),
        (p.FrameType.ERROR, b'{"code":"busy","message":"@","fatal":true}', False),
    ],
)
def test_the_client_side_rejects_lone_surrogates_too(
    ftype: p.FrameType, payload: bytes, fatal: bool
) -> None:
    client = p.ClientProtocol()
    client.receive_data(p.encode_frame(ftype, payload.replace(b"@", b"\\udbff")))
    (event,) = client.events_received()
    assert isinstance(event, p.ProtocolViolation)
    assert (event.code, event.fatal) == (ErrorCode.BAD_JSON, fatal)


@pytest.mark.parametrize("payload", [b'{"v":NaN}', b'{"v":1e999}', b"[" * 50_000, b"1" * 5000])
def test_hostile_json_is_a_clean_error(payload: bytes) -> None:
    proto = p.ServerProtocol()
    proto.receive_data(p.encode_frame(p.FrameType.HELLO, payload))
    (event,) = proto.events_received()
    assert isinstance(event, p.ProtocolViolation) and event.fatal


def test_avatar_overrides_and_defaults() -> None:
    proto = p.ServerProtocol()
    proto.receive_data(hello_frame(avatar={"avatar_id": "a1", "is_sandbox": True}))
    (hello,) = proto.events_received()
    assert isinstance(hello, p.Hello)
    assert hello.avatar.as_dict() == {"avatar_id": "a1", "is_sandbox": True}
    assert hello.media_path is None and hello.token is None and hello.session_key is None


def test_credentials_stay_out_of_repr() -> None:
    hello = p.Hello(
        p.CallRef("default", "x"), AudioFormat(16000, 1), session_key="KEY-1", token="TOK-1"
    )
    assert "KEY-1" not in repr(hello) and "TOK-1" not in repr(hello)
    assert str(hello.call) == "default:x"


def test_nothing_is_parsed_after_close() -> None:
    proto = opened()
    proto.receive_data(p.encode_close() + p.encode_end_turn())
    assert [type(e) for e in proto.events_received()] == [p.Close]
    assert proto.closed


def test_client_protocol_checks_audio_against_its_hello() -> None:
    client = p.ClientProtocol()
    client.send_hello(p.Hello(p.CallRef("default", "x"), AudioFormat(16000, 2)))
    with pytest.raises(ValueError):
        client.send_audio(b"\x00\x00")
    assert client.send_audio(bytes(4))[:6] == p.encode_header(p.FrameType.AUDIO, 4)


def test_client_side_errors_with_unknown_codes_are_kept() -> None:
    client = p.ClientProtocol()
    client.receive_data(p.encode_error("from_the_future", "new code", False))
    (error,) = client.events_received()
    assert isinstance(error, p.Error) and error.error_code is None and not error.fatal
    client.receive_data(p.encode_error(ErrorCode.BUSY, "full", True))
    (error,) = client.events_received()
    assert isinstance(error, p.Error) and error.error_code is ErrorCode.BUSY


def test_a_broken_ready_is_fatal_for_the_client() -> None:
    client = p.ClientProtocol()
    client.receive_data(p.encode_json_frame(p.FrameType.READY, {"session_id": 5}))
    (event,) = client.events_received()
    assert isinstance(event, p.ProtocolViolation) and event.fatal and client.closed


def test_encoders_refuse_what_a_receiver_would_reject() -> None:
    with pytest.raises(ValueError):
        p.encode_audio(bytes(p.MAX_PAYLOAD + 2))
    with pytest.raises(ValueError):
        p.encode_mark("")
    with pytest.raises(ValueError):
        p.encode_ping(bytes(65))
