"""The Python protocol module against the golden vectors, both directions, decode and encode."""

from __future__ import annotations

from typing import Any

import pytest

from bridge import protocol as p
from tests.protocol.conftest import event_json, load_vectors

VECTORS = load_vectors()
BY_NAME = {v["name"]: v for v in VECTORS}


def test_vector_names_are_unique_and_cover_every_frame_type() -> None:
    assert len(BY_NAME) == len(VECTORS)
    kinds = {e["kind"] for v in VECTORS for e in v["expect"]}
    assert kinds >= {
        "hello", "audio", "end_turn", "interrupt", "mark", "ping", "close",
        "ready", "event", "error", "pong", "violation",
    }  # fmt: skip
    codes = {e["code"] for v in VECTORS for e in v["expect"] if e["kind"] == "violation"}
    assert codes >= {
        "bad_frame", "frame_too_large", "bad_json", "bad_hello", "unsupported_version",
        "unsupported_format", "not_ready", "odd_audio_length",
    }  # fmt: skip


def _stream(vector: dict[str, Any]) -> tuple[bytes, bytes]:
    """(prefix, bytes): the 'after' chain's bytes first, whose events are not compared."""
    prefix = b""
    name = vector.get("after")
    while name:
        prefix = bytes.fromhex(BY_NAME[name]["hex"]) + prefix
        name = BY_NAME[name].get("after")
    return prefix, bytes.fromhex(vector["hex"])


def _decode(vector: dict[str, Any]) -> list[dict[str, Any]]:
    proto: p.ServerProtocol | p.ClientProtocol
    proto = p.ServerProtocol() if vector["direction"] == "client_to_daemon" else p.ClientProtocol()
    prefix, data = _stream(vector)
    if prefix:
        proto.receive_data(prefix)
        assert not any(isinstance(e, p.ProtocolViolation) for e in proto.events_received())
    proto.receive_data(data)
    return [event_json(e) for e in proto.events_received()]


def _strip_messages(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Violation messages are free text; the vectors give the code and fatality only.
    return [{k: v for k, v in e.items() if not (e["kind"] == "violation" and k == "message")}
            for e in events]  # fmt: skip


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_decode(vector: dict[str, Any]) -> None:
    assert _strip_messages(_decode(vector)) == vector["expect"]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_decode_byte_by_byte(vector: dict[str, Any]) -> None:
    proto: p.ServerProtocol | p.ClientProtocol
    proto = p.ServerProtocol() if vector["direction"] == "client_to_daemon" else p.ClientProtocol()
    prefix, data = _stream(vector)
    proto.receive_data(prefix)
    proto.events_received()
    events = []
    for i in range(len(data)):
        proto.receive_data(data[i : i + 1])
        events.extend(proto.events_received())
    assert [event_json(e) for e in events] == _strip_messages(_decode(vector))


ENCODABLE = [v for v in VECTORS if "frame" in v]


@pytest.mark.parametrize("vector", ENCODABLE, ids=[v["name"] for v in ENCODABLE])
def test_encode_generic(vector: dict[str, Any]) -> None:
    frame = vector["frame"]
    if "json" in frame:
        data = p.encode_json_frame(frame["type"], frame["json"], frame["flags"])
    else:
        data = p.encode_frame(frame["type"], bytes.fromhex(frame["payload_hex"]), frame["flags"])
    assert data.hex() == vector["hex"]


def _encode_typed(vector: dict[str, Any]) -> bytes | None:
    """The same bytes through the typed API (what the client and the daemon really call)."""
    frame, expect = vector["frame"], vector["expect"][0]
    kind = expect["kind"]
    if frame["flags"] or (kind == "hello" and "future_option" in frame["json"]):
        return None  # reserved flags and unknown keys are for receivers; typed encoders omit them
    if kind == "hello":
        proto = p.ServerProtocol()
        proto.receive_data(bytes.fromhex(vector["hex"]))
        (hello,) = proto.events_received()
        assert isinstance(hello, p.Hello)
        return p.ClientProtocol().send_hello(hello)
    if kind == "audio":
        return p.encode_audio(bytes.fromhex(expect["hex"]))
    if kind == "end_turn":
        return p.encode_end_turn()
    if kind == "interrupt":
        return p.encode_interrupt()
    if kind == "mark":
        return p.encode_mark(expect["name"])
    if kind == "ping":
        return p.encode_ping(bytes.fromhex(expect["hex"]))
    if kind == "pong":
        return p.ServerProtocol().send_pong(bytes.fromhex(expect["hex"]))
    if kind == "ready":
        return p.ServerProtocol().send_ready(frame["json"])
    if kind == "event":
        return p.ServerProtocol().send_event(expect["event"], expect["fields"])
    if kind == "error":
        return p.encode_error(expect["code"], expect["message"], expect["fatal"])
    raise AssertionError(kind)


@pytest.mark.parametrize("vector", ENCODABLE, ids=[v["name"] for v in ENCODABLE])
def test_encode_typed(vector: dict[str, Any]) -> None:
    data = _encode_typed(vector)
    if data is None:
        pytest.skip("typed encoders produce neither reserved flags nor unknown keys")
    assert data.hex() == vector["hex"]
