"""The Node client at the end of docs/protocol.md: extracted, checked against the golden
vectors, and run against a real IngestServer with the system ``node``."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bridge.ingest import IngestServer
from tests.protocol.conftest import TOKEN, VECTORS_PATH, FakeHost, ramp

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"
CHECK = Path(__file__).parent / "node" / "check_vectors.js"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


def extract_node_client() -> str:
    """The doc's last code block, which must be the doc's last thing, fenced as ```js."""
    text = DOC.read_text()
    blocks = list(re.finditer(r"^```js\n(.*?)^```\n", text, re.S | re.M))
    assert blocks, "docs/protocol.md has no ```js block"
    last = blocks[-1]
    assert text[last.end() :].strip() == "", "the Node client must end docs/protocol.md"
    return last.group(1)


@pytest.fixture
def node_client(tmp_path: Path) -> Path:
    path = tmp_path / "abp_client.js"
    path.write_text(extract_node_client())
    return path


def test_node_client_matches_the_golden_vectors(node_client: Path) -> None:
    assert NODE is not None
    run = subprocess.run(
        [NODE, str(CHECK), str(node_client), str(VECTORS_PATH)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"node vector checks: \d+ ok, 0 bad", run.stdout)


async def run_node(*args: str) -> tuple[int, list[dict[str, object]], str]:
    assert NODE is not None
    proc = await asyncio.create_subprocess_exec(
        NODE, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    return proc.returncode or 0, lines, err.decode()


async def test_node_client_streams_through_a_real_unix_socket(
    server: tuple[IngestServer, FakeHost], node_client: Path, tmp_path: Path
) -> None:
    srv, host = server
    pcm = ramp(8000)  # 0.5 s at 16 kHz
    (tmp_path / "speech.pcm").write_bytes(pcm)
    code, lines, err = await run_node(
        str(node_client), str(srv.options.unix_path), "default:node-1", str(tmp_path / "speech.pcm")
    )
    assert code == 0, err
    assert lines[0]["kind"] == "ready" and lines[0]["session_id"] == "ses-node-1"
    assert {"kind": "event", "event": "mark", "fields": {"name": "end"}} in lines
    session = host.session("node-1")
    assert bytes(session.audio) == pcm
    assert max(session.frames) == 640  # 20 ms frames
    assert session.log == ["mark:end", "end_turn", "close"]
    assert session.hello.client == "abp_client.js"


async def test_node_client_over_tcp_with_token(
    server: tuple[IngestServer, FakeHost], node_client: Path, tmp_path: Path
) -> None:
    srv, host = server
    assert srv.tcp_address is not None
    host_, port = srv.tcp_address
    pcm = ramp(48000 * 2 // 10, 5)  # 100 ms of 48 kHz stereo
    (tmp_path / "speech.pcm").write_bytes(pcm)
    args = [str(node_client), f"{host_}:{port}", "default:node-tcp", str(tmp_path / "speech.pcm")]
    flags = ["--rate", "48000", "--channels", "2", "--no-pace", "--token", TOKEN]
    code, lines, err = await run_node(*args, *flags)
    assert code == 0, err
    assert lines[0]["kind"] == "ready"
    assert bytes(host.session("node-tcp").audio) == pcm
    # Without the token the daemon refuses, and the client says so.
    code, _, err = await run_node(*args[:2], "default:node-tcp2", args[3], "--no-pace")
    assert code == 1 and "unauthorized" in err
