"""Stream Video stand-in: a coordinator + SFU that the real ``getstream_rtc`` SDK joins, and that
measures what a viewer of each call would get and forwards it to the call's other participants
(Stream's browser SDK among them). See :class:`StreamStandIn`."""

from bridge.sim.stream.forward import ForwardFaults
from bridge.sim.stream.measure import CallMeasure, MarkReader, OnsetDetectorFactory
from bridge.sim.stream.rtp_taps import ReceiveFaults
from bridge.sim.stream.server import (
    GRANTABLE_CODECS,
    OWN_CAPABILITIES,
    StandInAuthError,
    StreamStandIn,
)

__all__ = [
    "GRANTABLE_CODECS",
    "OWN_CAPABILITIES",
    "CallMeasure",
    "ForwardFaults",
    "MarkReader",
    "OnsetDetectorFactory",
    "ReceiveFaults",
    "StandInAuthError",
    "StreamStandIn",
]
