"""bridge.stream.sfu_pb: the SFU protobuf modules without the SDK's package __init__, and the
SDK unharmed afterwards. Each case runs in a fresh interpreter (this one imported getstream)."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def test_the_daemon_imports_the_stream_side_without_the_sdk_which_still_imports_after() -> None:
    # The point of the module: the daemon's import of the Stream side leaves getstream (and its
    # coordinator models) unimported and sys.modules as it found it; the SDK then imports in
    # every form and its message classes are the ones the bridge already uses.
    _run(
        "import sys, bridge.remote\n"
        "left = sorted(m for m in sys.modules if m.split('.')[0] == 'getstream')\n"
        "assert not left, left\n"
        "from bridge.stream.sfu_pb import events, models, signal\n"
        "assert events.SfuEvent.DESCRIPTOR.full_name == 'stream.video.sfu.event.SfuEvent'\n"
        "assert signal.SetPublisherRequest.DESCRIPTOR.file.package == 'stream.video.sfu.signal'\n"
        "assert models.TrackType.Value('TRACK_TYPE_VIDEO') == 2\n"
        "from getstream import Stream\n"
        "import getstream.video.rtc\n"
        "import getstream.video.rtc.pb.stream.video.sfu.event.events_pb2 as sdk_events\n"
        "from getstream.video.rtc.pb.stream.video.sfu.models import models_pb2 as sdk_models\n"
        "assert sdk_events.SfuEvent is events.SfuEvent\n"
        "assert sdk_models.Participant is models.Participant\n"
        "wire = events.SfuEvent(health_check_response=events.HealthCheckResponse())\n"
        "back = sdk_events.SfuEvent.FromString(wire.SerializeToString())\n"
        "assert back.WhichOneof('event_payload') == 'health_check_response'\n"
    )


def test_after_the_sdk_it_is_a_plain_import() -> None:
    _run(
        "import getstream.video.rtc.pb.stream.video.sfu.event.events_pb2 as sdk_events\n"
        "from bridge.stream.sfu_pb import events\n"
        "assert events is sdk_events\n"
    )
