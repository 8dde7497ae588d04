"""The hook guard: fails, naming the hook, when an aiortc upgrade moves one the relay uses."""

from __future__ import annotations

import aiortc
import pytest
from aiortc import RTCPeerConnection

from bridge.relay import aiortc_hooks
from bridge.relay.aiortc_hooks import (
    PINNED_AIORTC,
    ensure_compatible,
    missing_hooks,
    missing_instance_hooks,
    send_parameters,
)


def test_aiortc_is_the_pinned_version() -> None:
    assert aiortc.__version__ == PINNED_AIORTC, (
        f"aiortc {aiortc.__version__} is not the pinned {PINNED_AIORTC}: re-check every hook in "
        "bridge/relay/aiortc_hooks.py, then update PINNED_AIORTC"
    )


@pytest.mark.parametrize(
    "hook",
    [f"{owner.__name__}.{name}" for owner, name, _ in aiortc_hooks._METHODS],
)
def test_class_hook_present(hook: str) -> None:
    moved = [m for m in missing_hooks() if m.split(" ")[0] == hook]
    assert not moved, f"aiortc hook moved: {moved}"


async def test_instance_hooks_present_on_real_objects() -> None:
    pc = RTCPeerConnection()
    try:
        t = pc.addTransceiver("video")
        missing = missing_instance_hooks(t.receiver, t.sender)
        assert not missing, f"aiortc hooks moved: {missing}"
    finally:
        await pc.close()


async def test_ensure_compatible_installs_the_send_capture() -> None:
    ensure_compatible()
    assert getattr(aiortc.RTCRtpSender.send, "_relay_capture", False)
    pc = RTCPeerConnection()
    try:
        t = pc.addTransceiver("audio")
        assert send_parameters(t.sender) is None  # nothing negotiated yet
    finally:
        await pc.close()
