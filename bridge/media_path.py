"""Which media path a session runs: decided here, and only here.

A session carries the avatar's media into the Stream call along one of two paths:

* :class:`~bridge.relay.path.RelayPath`: the avatar's encoded RTP, forwarded undecoded;
* :class:`~bridge.transcode.TranscodePath`: decoded (LiveKit downlink), lip-synced (sync stage)
  and encoded again (a call publisher).

The choice has two steps, both in this module:

1. :func:`choose_path`, a pure function of the request, the avatar's codec and size and the
   output size, picks a path before anything is joined;
2. :func:`open_path` builds and starts only the chosen path. The relay may still decline at start
   (:class:`RelayDecline`: the Stream SFU grants another codec than the avatar's). It has then
   joined the call already, so the transcode path takes that one SFU session over and encodes
   the granted codec itself (VP8, H264 or VP9, :mod:`bridge.stream.kept_session`): the call sees
   the bridge's participant join once, never join, leave and join again. Only a grant of a codec
   the bridge cannot encode on that session (none the relay asks for: the avatar's codec, then
   VP8, H264, VP9) would still need the Stream SDK's own session, a second join.

Every reason is an enum whose value is also the ``reason`` label of ``bridge_media_path_total``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from prometheus_client import Counter

from bridge.errors import BridgeError, ErrorCode
from bridge.stages import AvatarRoom

MEDIA_PATH = Counter(
    "bridge_media_path_total", "Sessions by the media path they ran, and why", ["path", "reason"]
)


class PathKind(StrEnum):
    RELAY = "relay"
    TRANSCODE = "transcode"
    NONE = "none"  # a dry run: no avatar is rendered


class PathReason(StrEnum):
    """Why :func:`choose_path` picked a path (before anything was joined)."""

    REQUESTED = "requested"
    MATCH = "match"  # the avatar's codec and size are what the call gets: relayed
    SIZE = "size"  # the avatar's size differs from the output size: transcoded
    CODEC = "codec"  # the relay cannot carry the avatar's codec
    DRY_RUN = "dry_run"


class RelayDecline(StrEnum):
    """Why a relay declined at start (the session then transcodes)."""

    CODEC_NOT_GRANTED = "codec_not_granted"
    # ``auto`` only: the avatar's TrackInfo announces another size than the output size.
    SIZE_ANNOUNCED = "size_announced"


@dataclass(frozen=True, slots=True)
class PathChoice:
    kind: PathKind
    reason: PathReason | RelayDecline
    detail: str  # for people: logs and the client's ``media_path`` event

    def count(self) -> None:
        MEDIA_PATH.labels(str(self.kind), str(self.reason)).inc()


DRY_RUN = PathChoice(PathKind.NONE, PathReason.DRY_RUN, "dry run: no avatar is rendered")

# Video codecs the relay can gate on a keyframe (aiortc has no VP9/AV1 packetization anyway).
RELAY_CODECS = ("VP8", "H264")


def choose_path(
    wanted: str, codec: str, avatar_size: tuple[int, int] | None, out_size: tuple[int, int]
) -> PathChoice:
    """``wanted`` is "auto" | "relay" | "transcode"; the SFU's codec grant is checked later."""
    if wanted == "transcode":
        return PathChoice(PathKind.TRANSCODE, PathReason.REQUESTED, "requested")
    if codec not in RELAY_CODECS:
        return PathChoice(
            PathKind.TRANSCODE, PathReason.CODEC, f"the relay cannot carry the avatar's {codec}"
        )
    if wanted == "relay":
        detail = "requested"
        if avatar_size != out_size:
            detail = f"requested (the avatar's {avatar_size} is sent as is, not {out_size})"
        return PathChoice(PathKind.RELAY, PathReason.REQUESTED, detail)
    if avatar_size != out_size:
        return PathChoice(
            PathKind.TRANSCODE,
            PathReason.SIZE,
            f"avatar {avatar_size} differs from the output size {out_size}",
        )
    return PathChoice(
        PathKind.RELAY, PathReason.MATCH, f"the avatar's {codec} {avatar_size} matches the output"
    )


class MediaPath(Protocol):
    """One session's way from the avatar's room into the call."""

    kind: PathKind

    async def start(self, room: AvatarRoom) -> RelayDecline | None:
        """Join both sides; None when media flows, else why this path declined (then it has
        released everything but what :meth:`RelayCandidate.take_stream` hands over)."""
        ...

    async def run(self) -> None:
        """Until the path is closed; raises when it fails."""
        ...

    def interrupt(self) -> None:
        """Barge-in: drop media queued on the way to the call and stop forwarding the avatar's
        speech still in flight (:mod:`bridge.barge_in`)."""
        ...

    def speak_started(self) -> None:
        """The avatar started a turn: its speech is forwarded again after a barge-in."""
        ...

    def stats(self) -> dict[str, Any]: ...

    async def aclose(self) -> None:
        """Leave both sides. Idempotent, never raises."""
        ...


@runtime_checkable
class AvatarSwitch(Protocol):
    """A path that can change avatars under a running call (the same tracks keep being
    written): prepare the next avatar's room, then commit the switch at a turn boundary."""

    @property
    def can_switch(self) -> bool: ...

    @property
    def avatar_alive(self) -> bool:
        """The current avatar's room has not failed (its loss may not be reported yet)."""
        ...

    async def prepare_avatar(
        self, room: AvatarRoom, timeout_s: float, warm: WarmRoom | None = None
    ) -> Any:
        """Join the next avatar's room (or adopt ``warm``, a pooled one already joined for this
        path kind: no rejoin) and wait until its first frame can be switched to. ``warm`` is
        the path's once this is called (adopted, or left when it cannot be), and so is what
        this returns until :meth:`commit_avatar`: :meth:`MediaPath.aclose` leaves it."""
        ...

    def commit_avatar(self, prepared: Any, *, drain_s: float = 0.0) -> Callable[[], float | None]:
        """Switch to ``prepared``; returns the measured picture gap (ms) once known. ``drain_s``
        > 0 (a planned switch): the old avatar's media in flight still reaches the call first,
        for at most that long."""
        ...

    async def release_retired(self) -> None: ...


class WarmRoom(Protocol):
    """A pooled avatar's LiveKit room joined ahead of its HELLO (:mod:`bridge.pool`): the
    receiving side of one media path (``kind``), its first keyframe received, feeding nothing
    until a path of that kind adopts it; then the path starts with only the call to join."""

    kind: PathKind

    @property
    def ready(self) -> bool:
        """Joined, first keyframe received, not failed or closed: fit to be adopted."""
        ...

    async def join(self, room: AvatarRoom, timeout_s: float) -> None:
        """Join ``room`` and wait for the avatar's first keyframe; raises BridgeError."""
        ...

    async def claim(self) -> None:
        """A HELLO took the room: get the first frame ready while its path joins the call."""
        ...

    async def aclose(self) -> None:
        """Leave the room (unless a path adopted it: then the path leaves). Never raises."""
        ...


async def join_warm_room(
    start: Callable[[], Awaitable[None]],
    first: asyncio.Event,
    timeout_s: float,
    *,
    aclose: Callable[[], Awaitable[None]],
    failed: Callable[[], bool],
    what: str,
) -> None:
    """:meth:`WarmRoom.join` for both kinds: ``start()`` then ``first`` (the avatar's first
    ``what``: picture, keyframe) within ``timeout_s``. On a timeout, an error or a cancellation
    the room is closed before this raises; a room that failed meanwhile raises too."""
    try:
        async with asyncio.timeout(timeout_s):
            await start()
            await first.wait()
    except TimeoutError:
        await aclose()
        raise BridgeError(
            ErrorCode.LIVEKIT_FAILED, f"the pooled avatar sent no {what} in time"
        ) from None
    except BaseException:
        await aclose()
        raise
    if failed():
        raise BridgeError(ErrorCode.LIVEKIT_FAILED, "the pooled avatar's room failed")


class KeptStream(Protocol):
    """The Stream SFU session a declined relay joined, handed to the transcode path."""

    @property
    def granted_codec(self) -> str | None: ...

    async def aclose(self) -> None: ...


class RelayCandidate(MediaPath, Protocol):
    def take_stream(self) -> KeptStream | None:
        """After a decline: the joined SFU session, now the caller's to publish on or close."""
        ...


class PathBuilder(Protocol):
    """Builds one session's paths (``bridge.remote``); :func:`open_path` builds only one."""

    choice: PathChoice

    def relay(self) -> RelayCandidate: ...

    def can_keep(self, stream: KeptStream) -> bool:
        """Whether the transcode path can publish on a declined relay's SFU session."""
        ...

    def transcode(self, stream: KeptStream | None) -> MediaPath: ...

    async def aclose(self) -> None:
        """The session ends: leave what was joined for it that no path took over (a pooled
        room, when the session ended before its path started). Idempotent, never raises."""
        ...


async def open_path(
    builder: PathBuilder, room: AvatarRoom, adopt: Callable[[MediaPath], None]
) -> tuple[MediaPath, PathChoice]:
    """Build and start the chosen path (the relay, else the transcode path on the relay's SFU
    session). ``adopt`` gets each path as soon as it exists, so that its owner closes it even if
    this is cancelled halfway."""
    choice = builder.choice
    if choice.kind is PathKind.RELAY:
        relay = builder.relay()
        adopt(relay)
        decline = await relay.start(room)
        if decline is None:
            return relay, choice
        stream = relay.take_stream()
        granted = stream.granted_codec if stream is not None else None
        why = (
            "the avatar's announced size is not the output size"
            if decline is RelayDecline.SIZE_ANNOUNCED
            else f"the Stream SFU grants {granted}, not the avatar's codec"
        )
        choice = PathChoice(PathKind.TRANSCODE, decline, f"relay declined: {why}")
        if stream is not None and not builder.can_keep(stream):
            # The Stream SDK publishes this codec only on its own session: leave, it joins.
            await stream.aclose()
            stream = None
        path = builder.transcode(stream)
    else:
        path = builder.transcode(None)
    adopt(path)
    await path.start(room)
    return path, choice


__all__ = [
    "DRY_RUN",
    "MEDIA_PATH",
    "RELAY_CODECS",
    "AvatarSwitch",
    "KeptStream",
    "MediaPath",
    "PathBuilder",
    "PathChoice",
    "PathKind",
    "PathReason",
    "RelayCandidate",
    "RelayDecline",
    "WarmRoom",
    "choose_path",
    "open_path",
]
