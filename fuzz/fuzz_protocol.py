"""Coverage-guided fuzzing of the sans-I/O socket protocol parser (bridge/protocol.py) with atheris.

Every input is fed to both parsers (the daemon's ServerProtocol and the client's
ClientProtocol), split into pieces at points the input itself chooses. A parser may report a
violation, never raise, and must stay consistent: no event after a fatal violation or CLOSE, and
the same events however the bytes are split.

Seeds are the golden vectors (tests/protocol/vectors/v1.json); crash inputs go to
fuzz/regressions/ and are replayed by tests/reliability/test_fuzz.py forever after.

    python fuzz/fuzz_protocol.py -runs=10000 -seed=1         # a bounded run (CI)
    python fuzz/fuzz_protocol.py -runs=1000000               # the nightly >= 1e6 executions
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "tests" / "protocol" / "vectors" / "v1.json"
REGRESSIONS = Path(__file__).resolve().parent / "regressions"

if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))


def seeds() -> Iterator[bytes]:
    """The golden vectors' byte streams (with the stream each one follows, when it has one)."""
    vectors = json.loads(VECTORS.read_text())["vectors"]
    by_name = {v["name"]: v for v in vectors}
    for v in vectors:
        data = bytes.fromhex(v["hex"])
        after = v.get("after")
        while after:
            data = bytes.fromhex(by_name[after]["hex"]) + data
            after = by_name[after].get("after")
        yield data


def _splits(data: bytes) -> list[bytes]:
    """Pieces of ``data``: its first byte seeds the cut points (so the fuzzer explores them)."""
    if not data:
        return []
    step = (data[0] % 7) + 1
    body = data[1:]
    return [body[i : i + step] for i in range(0, len(body), step)]


def _parse(proto: Any, pieces: list[bytes]) -> list[Any]:
    from bridge import protocol as p

    events: list[Any] = []
    for piece in pieces:
        proto.receive_data(piece)
        new = proto.events_received()
        if events and isinstance(events[-1], p.ProtocolViolation) and events[-1].fatal:
            assert not new, "events after a fatal violation"
        if events and isinstance(events[-1], p.Close):
            assert not new, "events after CLOSE"
        events.extend(new)
        if proto.closed:
            assert not proto.events_received()
    return events


def _canon(events: list[Any]) -> list[str]:
    """A comparable form of events (memoryview payloads become bytes)."""
    out = []
    for e in events:
        fields = {f.name: getattr(e, f.name) for f in dataclasses.fields(e)}
        fields = {k: bytes(v) if isinstance(v, memoryview) else v for k, v in fields.items()}
        out.append(f"{type(e).__name__}{fields!r}")
    return out


def _assert_text(value: Any) -> None:
    """Every string a parser hands out is Unicode text: it may be echoed (a MARK) or logged."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _assert_text(getattr(value, f.name))
    elif isinstance(value, dict):
        for key, item in value.items():
            _assert_text(key)
            _assert_text(item)
    elif isinstance(value, list):
        for item in value:
            _assert_text(item)


def check(data: bytes) -> None:
    """One fuzz input. Raises (AssertionError or the parser's own exception) on a bug."""
    from bridge import protocol as p

    pieces = _splits(data)
    whole = data[1:]
    for make in (p.ServerProtocol, p.ClientProtocol):
        split_events = _parse(make(), pieces)
        whole_events = _parse(make(), [whole] if whole else [])
        # Splitting only changes when events come out, never which.
        assert _canon(split_events) == _canon(whole_events), (make.__name__, data[:64])
        for event in whole_events:
            _assert_text(event)


def main(argv: list[str]) -> None:
    import atheris  # type: ignore[import-untyped]  # no stubs; only needed to fuzz

    with atheris.instrument_imports(include=["bridge.protocol"]):
        from bridge import protocol  # noqa: F401

    def one_input(data: bytes) -> None:
        check(data)

    args = list(argv)
    if not any(not a.startswith("-") for a in args[1:]):
        corpus = Path(tempfile.mkdtemp(prefix="fuzz-protocol-"))
        for i, seed in enumerate(seeds()):
            (corpus / f"vector-{i:03d}").write_bytes(b"\x00" + seed)
        for path in REGRESSIONS.iterdir():
            if path.is_file() and not path.name.startswith("."):
                (corpus / f"regression-{path.name}").write_bytes(path.read_bytes())
        args.append(str(corpus))
    if not any(a.startswith("-artifact_prefix=") for a in args):
        args.insert(1, f"-artifact_prefix={REGRESSIONS}/")
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
