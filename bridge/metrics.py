"""Prometheus metrics of the daemon's core (sessions, ingest-to-uplink path, queues).

Each stage module defines its own stage-specific metrics next to its code; everything lands in the
default registry that ``/metrics`` serves. Latency buckets are media-scale (1 ms to ~1 s).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MEDIA_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.033, 0.05, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)

SESSIONS_ACTIVE = Gauge("bridge_sessions_active", "Sessions currently open (any state).")
SESSIONS_ATTACHED = Gauge("bridge_sessions_attached", "Sessions with a connected client.")
SESSIONS_TOTAL = Counter("bridge_sessions_total", "Sessions ended, by outcome.", ["outcome"])
SESSIONS_REJECTED = Counter("bridge_sessions_rejected_total", "Sessions refused.", ["reason"])
SESSION_SECONDS = Counter(
    "bridge_session_seconds_total", "Session lifetime, summed (a cost proxy for paid sessions)."
)
AUDIO_IN_SECONDS = Counter("bridge_audio_in_seconds_total", "Client audio accepted, in seconds.")
AUDIO_IN_BYTES = Counter("bridge_audio_in_bytes_total", "Client audio accepted, in bytes.")
TURNS = Counter("bridge_turns_total", "Turns ended by the client, by how.", ["how"])
MARKS = Counter("bridge_marks_total", "MARK labels echoed back, by outcome.", ["outcome"])
QUEUE_DEPTH = Gauge("bridge_queue_depth", "Items (or ms of audio) queued per stage.", ["stage"])
AUDIO_DROPPED_SECONDS = Counter(
    "bridge_audio_dropped_seconds_total", "Audio dropped, in seconds, by stage.", ["stage"]
)
BARGE_IN_DROPPED = Counter(
    "bridge_barge_in_audio_dropped_total",
    "The avatar's audio not forwarded after an INTERRUPT (relay packets, decoded chunks), by path",
    ["path"],
)
DROPS = Counter("bridge_dropped_total", "Items dropped, by stage and reason.", ["stage", "reason"])
STAGE_LATENCY = Histogram(
    "bridge_stage_latency_seconds",
    "Time an item spends in a stage of the bridge.",
    ["stage"],
    buckets=MEDIA_BUCKETS,
)
REMOTE_ERRORS = Counter(
    "bridge_remote_errors_total", "Errors reported by a remote, by remote and code.", ["code"]
)
# Joined by a subscriber (relay) or a downlink (transcode), not yet left: a room left open after
# its session and pooled sessions ended is a leak.
LIVEKIT_ROOMS_OPEN = Gauge(
    "bridge_livekit_rooms_open", "LiveKit rooms the daemon is in now, by client", ["client"]
)
DRAINING = Gauge("bridge_draining", "1 while the daemon drains for shutdown.")
SESSIONS_CLOSE_ABANDONED = Counter(
    "bridge_sessions_close_abandoned_total",
    "Sessions still closing at shutdown past limits.close_timeout_s, cancelled (their "
    "unstopped LiveAvatar sessions stay in the ledger).",
)
LIVEAVATAR_ORPHANS = Gauge(
    "bridge_liveavatar_orphans",
    "LiveAvatar sessions whose stop failed in this process, stopped again every "
    "liveavatar.orphan_retry_s (each may still be billed).",
)
HANDOVERS = Counter(
    "bridge_avatar_handovers_total",
    "Avatar handovers (a new LiveAvatar session under a running call), by reason and outcome.",
    ["reason", "outcome"],
)
AVATAR_LOST_AGAIN = Counter(
    "bridge_avatar_lost_again_total",
    "Replacement avatars lost while a recovery brought them up (during=start) or as they took "
    "over (during=switch), each replaced in turn within the session's recovery budget.",
    ["during"],
)
