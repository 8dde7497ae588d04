"""The Stream SFU's generated protobuf modules (events, models, signal), not the rest of the SDK.

Why this module: the modules live at ``getstream.video.rtc.pb.stream.video.sfu.*``, and a plain
import of them first runs ``getstream/__init__``, ``getstream/video/__init__`` and
``getstream/video/rtc/__init__``, which build the coordinator's ~1,500 model dataclasses: about a
second of CPU (several on a loaded machine) in every daemon start, for modules the bridge never
uses. The ``*_pb2`` files themselves and the ``pb`` packages above them only need protobuf.

So, when nothing of ``getstream`` is imported yet, the three heavy packages are put in
``sys.modules`` as module objects built from their real specs but not executed, the ``*_pb2``
modules are imported through them, and every ``getstream`` entry is then removed again:
``sys.modules`` is left as before, and a later ``import getstream...`` (the SDK, the stand-in)
runs the real packages and re-executes the ``*_pb2`` files. That is harmless: their descriptors
are already in protobuf's default pool (adding the identical file again is a no-op) and protobuf
keeps one message class per descriptor, so ``events.SfuEvent`` here *is* the SDK's class.

Done at import time (the daemon imports the Stream side while it is built, before its event loop
starts), under the import lock; a process that already imported ``getstream`` imports normally.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import TYPE_CHECKING

_PB = "getstream.video.rtc.pb.stream.video.sfu"
# The packages whose __init__ is the cost; everything under ``getstream.video.rtc.pb`` is empty.
_HEAVY = ("getstream", "getstream.video", "getstream.video.rtc")


def _import_pb2(names: tuple[str, ...]) -> tuple[ModuleType, ...]:
    if any(m == "getstream" or m.startswith("getstream.") for m in sys.modules):
        return tuple(importlib.import_module(f"{_PB}.{n}") for n in names)
    root = importlib.util.find_spec("getstream")
    if root is None or root.submodule_search_locations is None:
        raise ImportError("the getstream package is not installed")
    spec: importlib.machinery.ModuleSpec | None = root
    try:
        for name in _HEAVY:
            if name != "getstream":
                assert spec is not None and spec.submodule_search_locations is not None
                path = list(spec.submodule_search_locations)
                spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None:
                raise ImportError(f"{name} not found")
            sys.modules[name] = importlib.util.module_from_spec(spec)  # not executed
        return tuple(importlib.import_module(f"{_PB}.{n}") for n in names)
    finally:
        for m in [m for m in sys.modules if m == "getstream" or m.startswith("getstream.")]:
            del sys.modules[m]


if TYPE_CHECKING:
    from getstream.video.rtc.pb.stream.video.sfu.event import events_pb2 as events
    from getstream.video.rtc.pb.stream.video.sfu.models import models_pb2 as models
    from getstream.video.rtc.pb.stream.video.sfu.signal_rpc import signal_pb2 as signal
else:
    events, models, signal = _import_pb2(
        ("event.events_pb2", "models.models_pb2", "signal_rpc.signal_pb2")
    )

__all__ = ["events", "models", "signal"]
