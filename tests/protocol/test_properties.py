"""Property tests: any split or merge of a valid stream parses the same; garbage never raises."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bridge import protocol as p
from bridge.media import AudioFormat
from tests.protocol.conftest import event_json

FMT = AudioFormat(16000, 1)
HELLO = p.encode_hello(p.Hello(p.CallRef("default", "prop"), FMT))

names = st.text(min_size=1, max_size=p.MAX_MARK_NAME)
client_frames = st.one_of(
    st.binary(max_size=600).map(lambda b: p.encode_audio(b[: len(b) // 2 * 2])),
    st.just(p.encode_end_turn()),
    st.just(p.encode_interrupt()),
    names.map(p.encode_mark),
    st.binary(max_size=p.MAX_PING).map(p.encode_ping),
    # An unknown, ignorable frame type from a future version.
    st.tuples(st.integers(0x40, 0xFF), st.binary(max_size=300)).map(
        lambda t: p.encode_frame(t[0], t[1], p.FLAG_IGNORABLE)
    ),
)
daemon_frames = st.one_of(
    st.dictionaries(st.text(max_size=10), st.integers() | st.text(max_size=20), max_size=5).map(
        lambda d: p.encode_event("stats", {k: v for k, v in d.items() if k != "event"})
    ),
    st.tuples(st.sampled_from(["busy", "bad_json", "new_code"]), st.text(), st.booleans()).map(
        lambda t: p.encode_error(*t)
    ),
    st.binary(max_size=p.MAX_PING).map(p.encode_pong),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def parse_server(chunks: list[bytes]) -> list[dict[str, Any]]:
    proto = p.ServerProtocol()
    out: list[dict[str, Any]] = []
    for chunk in chunks:
        proto.receive_data(chunk)
        out.extend(event_json(e) for e in proto.events_received())
    return out


def parse_client(chunks: list[bytes]) -> list[dict[str, Any]]:
    proto = p.ClientProtocol()
    out: list[dict[str, Any]] = []
    for chunk in chunks:
        proto.receive_data(chunk)
        out.extend(event_json(e) for e in proto.events_received())
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(client_frames, max_size=20), st.lists(st.integers(0, 1 << 16), max_size=40))
def test_client_stream_parses_the_same_however_it_is_split(
    frames: list[bytes], cuts: list[int]
) -> None:
    data = HELLO + b"".join(frames)
    whole = parse_server([data])
    assert parse_server(split(data, cuts)) == whole
    # Nothing valid is reported as a violation, and every frame but the skipped ones is seen.
    assert all(e["kind"] != "violation" for e in whole)
    skipped = sum(1 for f in frames if f[0] >= 0x40)
    assert len(whole) == 1 + len(frames) - skipped


@settings(max_examples=200, deadline=None)
@given(st.lists(daemon_frames, max_size=20), st.lists(st.integers(0, 1 << 16), max_size=40))
def test_daemon_stream_parses_the_same_however_it_is_split(
    frames: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(frames)
    whole = parse_client([data])
    assert parse_client(split(data, cuts)) == whole
    assert len(whole) == len(frames)


@settings(max_examples=200, deadline=None)
@given(st.lists(client_frames, max_size=10), st.lists(client_frames, max_size=10))
def test_merged_streams_parse_as_their_concatenation(a: list[bytes], b: list[bytes]) -> None:
    assert parse_server([HELLO + b"".join(a), b"".join(b)]) == parse_server(
        [HELLO + b"".join(a + b)]
    )


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(0, 4000), max_size=10))
def test_garbage_never_raises_server_side(garbage: bytes, cuts: list[int]) -> None:
    for prefix in (b"", HELLO):
        events = parse_server(split(prefix + garbage, cuts))
        violations = [e for e in events if e["kind"] == "violation"]
        # At most one fatal violation, and it is the last thing reported.
        fatal = [i for i, e in enumerate(events) if e.get("fatal")]
        assert fatal in ([], [len(events) - 1])
        assert all(v["code"] for v in violations)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(0, 4000), max_size=10))
def test_garbage_never_raises_client_side(garbage: bytes, cuts: list[int]) -> None:
    events = parse_client(split(garbage, cuts))
    fatal = [i for i, e in enumerate(events) if e.get("fatal") and e["kind"] == "violation"]
    assert fatal in ([], [len(events) - 1])


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([0x01, 0x10, 0x11, 0x12, 0x13, 0x1E, 0x1F]),
    st.integers(0, 255),
    st.binary(max_size=400),
)
def test_any_frame_after_hello_is_an_event_or_a_violation(
    ftype: int, flags: int, payload: bytes
) -> None:
    events = parse_server([HELLO + p.encode_frame(ftype, payload, flags)])
    assert events[0]["kind"] == "hello"
    assert len(events) == 2


@settings(max_examples=200, deadline=None)
@given(
    rate=st.integers(p.MIN_SAMPLE_RATE, p.MAX_SAMPLE_RATE),
    channels=st.sampled_from([1, 2]),
    call_id=st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    key=st.none()
    | st.text(st.characters(exclude_categories=["Cc", "Cs"]), min_size=1, max_size=64),
)
def test_hello_round_trips(rate: int, channels: int, call_id: str, key: str | None) -> None:
    hello = p.Hello(p.CallRef("default", call_id), AudioFormat(rate, channels), session_key=key)
    proto = p.ServerProtocol()
    proto.receive_data(p.encode_hello(hello))
    (event,) = proto.events_received()
    assert event == hello


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Lone surrogates mixed into ordinary text often enough to matter (st.text() never makes them).
surrogate_prone = st.text(
    st.one_of(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), st.characters()),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(name=surrogate_prone, extra=st.none() | surrogate_prone)
@example(name="\ud83d\ude00", extra=None)  # a pair: accepted as U+1F600
@example(name="ok", extra="\udc00\ud83d")  # reversed: rejected
def test_a_mark_is_accepted_exactly_when_its_echo_can_be_encoded(
    name: str, extra: str | None
) -> None:
    obj = {"name": name} if extra is None else {"name": name, "extra": extra}
    # ensure_ascii: the only way a sender can put a lone surrogate into UTF-8 JSON is "\udXXX".
    payload = json.dumps(obj, ensure_ascii=True).encode()
    events = parse_server([HELLO + p.encode_frame(p.FrameType.MARK, payload)])[1:]
    # A high surrogate followed by a low one is a pair: JSON decodes it to one character.
    sent = json.loads(payload)
    if all(_encodes(value) for value in sent.values()):
        assert events == [{"kind": "mark", "name": sent["name"]}]
        assert p.encode_event("mark", {"name": sent["name"]})
    else:
        assert events == [{"kind": "violation", "code": "bad_json", "fatal": False}]
