"""Configuration: one pydantic-settings model, validated once at start.

Precedence, highest first: command-line flags > ``AVATAR_BRIDGE_*`` environment variables > the
ecosystem's standard variables (``LIVEAVATAR_API_KEY``, ``LIVEAVATAR_AVATAR_ID``,
``STREAM_API_KEY``, ``STREAM_API_SECRET``) > credential files (systemd ``LoadCredential=``, a
container secrets mount) > the TOML file > defaults.

Nested options use ``__`` in the environment: ``AVATAR_BRIDGE_LIVEAVATAR__VIDEO_QUALITY=low``.
On the command line, ``--set liveavatar.video_quality=low`` sets any option.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_CONFIG_PATH = Path("/etc/avatar-bridge/avatar-bridge.toml")
ENV_PREFIX = "AVATAR_BRIDGE_"
SANDBOX_AVATAR_ID = "dd73ea75-1218-4ef3-92ce-606d5f7fbc0a"

# The standard variable names other tools (the Vision Agents plugin, the SDKs' examples) use.
STANDARD_ENV: dict[str, tuple[str, str]] = {
    "LIVEAVATAR_API_KEY": ("liveavatar", "api_key"),
    "LIVEAVATAR_AVATAR_ID": ("liveavatar", "avatar_id"),
    "LIVEAVATAR_BASE_URL": ("liveavatar", "base_url"),
    "STREAM_API_KEY": ("stream", "api_key"),
    "STREAM_API_SECRET": ("stream", "api_secret"),
    "STREAM_BASE_URL": ("stream", "base_url"),
}

# Credential file names (under $CREDENTIALS_DIRECTORY or secrets_dir) and the option each sets.
CREDENTIAL_FILES: dict[str, tuple[str, str]] = {
    "liveavatar_api_key": ("liveavatar", "api_key"),
    "stream_api_key": ("stream", "api_key"),
    "stream_api_secret": ("stream", "api_secret"),
    "ingest_tcp_token": ("ingest", "tcp_token"),
    "admin_token": ("admin", "token"),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def setting_default(section: type[BaseModel], name: str) -> Any:
    """The default of one option. The stages' Options dataclasses take their defaults from here
    rather than repeating them (tests/core/test_options.py fails if one drifts)."""
    return section.model_fields[name].get_default(call_default_factory=True)


class LiveAvatarConfig(_Section):
    """The LiveAvatar session each client stream drives (the seed plugin's Avatar options)."""

    api_key: SecretStr | None = Field(None, description="LiveAvatar API key (LIVEAVATAR_API_KEY).")
    avatar_id: str | None = Field(
        None,
        description="Avatar UUID (LIVEAVATAR_AVATAR_ID); sandbox mode uses the sandbox avatar.",
    )
    base_url: str = Field("https://api.liveavatar.com", description="LiveAvatar REST base URL.")
    is_sandbox: bool = Field(
        True, description="Free, duration-capped sessions on the sandbox avatar."
    )
    max_session_duration: int = Field(
        1800, ge=30, le=86400, description="Hard cap per LiveAvatar session, seconds (always sent)."
    )
    video_quality: Literal["low", "medium", "high", "very_high"] = Field(
        "high", description="Render size: 360p, 480p, 720p, 1080p."
    )
    video_encoding: Literal["H264", "VP8"] = Field("H264", description="Avatar's LiveKit codec.")
    avatar_identity: str = Field(
        "heygen", description="LiveKit identity of the avatar participant."
    )
    keep_alive_s: float = Field(
        60.0, gt=0, description="Send session.keep_alive after this silence."
    )
    first_chunk_ms: int = Field(
        400,
        ge=20,
        le=5000,
        description="First agent.speak chunk of a turn: the avatar's playback buffer at its "
        "start (smaller answers sooner but underruns with a jittery client; see "
        "docs/performance.md).",
    )
    chunk_ms: int = Field(1000, ge=20, le=10000, description="Later agent.speak chunks.")
    request_timeout_s: float = Field(10.0, gt=0, description="Timeout of each REST call.")
    stop_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Time one stop of a LiveAvatar session may take, retries included; a "
        "session not stopped in time stays in the ledger, stopped again every "
        "liveavatar.orphan_retry_s while the daemon runs, else at the next start.",
    )
    orphan_retry_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="While the daemon runs, how often a session whose stop failed is stopped "
        "again (it may still be billed until then; the next start sweeps what is left).",
    )
    ack_timeout_s: float = Field(
        5.0,
        gt=0,
        le=120,
        description="Audio unacknowledged this long means a stalled WebSocket: reconnect once.",
    )
    connect_timeout_s: float = Field(
        15.0, gt=0, description="WebSocket connect + 'connected' state, and LiveKit join, timeout."
    )
    handover_margin_s: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="Bring up the next LiveAvatar session this long before the cap and switch "
        "to it at a turn boundary, on both media paths (0: off).",
    )

    respeak_max_ms: int = Field(
        30000,
        ge=1000,
        le=600000,
        description="Audio of the turns not yet played kept per session, so that the next "
        "avatar re-speaks the unspoken rest after an unplanned loss (beyond it the oldest is "
        "trimmed, counted in bridge_liveavatar_respeak_trimmed_ms_total).",
    )
    respeak_overlap_ms: int = Field(
        300,
        ge=0,
        le=2000,
        description="At most this much of what the lost avatar had played is spoken again, "
        "so that the re-speak starts at a quiet point and no word is cut.",
    )

    @field_validator("avatar_id")
    @classmethod
    def _strip(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None


class OutputConfig(_Section):
    """The bridge's tracks in the Stream call."""

    width: int = Field(1280, ge=16, le=3840, multiple_of=2, description="Outbound video width.")
    height: int = Field(720, ge=16, le=3840, multiple_of=2, description="Outbound video height.")
    fps: int = Field(30, ge=1, le=60, description="Outbound frame rate.")
    buffer_seconds: float = Field(
        1.0,
        gt=0,
        le=10,
        description="Video queue cap = fps x buffer_seconds frames (absorbs jitter).",
    )
    video_codec: Literal["VP9", "VP8"] = Field("VP9", description="Codec when transcoding.")
    media_path: Literal["auto", "relay", "transcode"] = Field(
        "auto", description="Relay encoded packets when codecs and sizes match, else transcode."
    )
    audio_queue_ms: int = Field(
        200, ge=20, le=5000, description="Outbound PCM queue (bounds lip-sync drift)."
    )
    audio_backlog_ms: int = Field(
        2000,
        ge=20,
        le=10000,
        description="Transcode path: the avatar's audio kept while the call publisher's writes "
        "stall (the call's start, a loaded CPU), written as the publisher's PCM queue "
        "(audio_queue_ms) takes it; the latency it leaves is shed by skipping silence only. "
        "Beyond it the oldest audio is dropped and counted (docs/sync.md).",
    )
    video_delay_ms: float = Field(
        65.0,
        ge=0,
        le=1000,
        description="Transcode path: hold video this long after arrival, plus the downlink's "
        "audio jitter-buffer delay and the publisher's modelled PCM queue (see "
        "video_delay_follows_receivers), so it leaves aligned with the slower audio path "
        "(docs/sync.md).",
    )
    video_cadence_allowance_ms: float = Field(
        8.0,
        ge=0,
        le=50,
        description="Either path: hold video this much less (than relay_video_hold_ms on the "
        "relay with pacing, video_delay_ms on the transcode path) while the frames sent to "
        "the call come at a steady rate: Chromium renders such a stream by cadence, on time "
        "or one 60 Hz vsync (16.7 ms) later by phase, where it shows irregular frames at the "
        "next vsync; half a vsync centres both cases (bridge/cadence.py, docs/sync.md). "
        "0 keeps one hold for every stream.",
    )
    video_delay_follows_receivers: bool = Field(
        False,
        description="Transcode path: add the avatar downlink's audio jitter-buffer delay "
        "(libwebrtc stats, read every 100 ms) and the Stream SDK's PCM queue (modelled "
        "from the writes) to output.video_delay_ms, so the start of a call, where the audio "
        "buffer sheds its initial delay, stays in sync (docs/sync.md); set video_delay_ms to "
        "0 with it. Off by default: the livekit SDK (1.2.1) can abort the whole process while "
        "reading receiver stats (a panic in rtp_receiver.rs:68 on a non-finite value).",
    )
    relay_video_hold_ms: float = Field(
        18.0,
        ge=0,
        le=500,
        description="On the relay path, hold video packets this long so a viewer presents them "
        "aligned with the audio (a browser's audio jitter buffer holds audio longer than its "
        "video path holds a picture; measured with a libwebrtc-published avatar, as "
        "LiveAvatar's is, in docs/sync.md); less video_cadence_allowance_ms while the "
        "frames are steadily timed.",
    )
    relay_align_by_sr: bool = Field(
        True,
        description="On the relay path, align the paced audio and video by the avatar's "
        "capture clock (its RTCP sender reports) rather than by each stream's best-case "
        "arrival (see docs/sync.md).",
    )
    relay_audio_sr_capture_lag_ms: float | Literal["auto"] = Field(
        "auto",
        description="On the relay path, how long before the NTP time of the avatar's audio "
        "sender reports its audio was captured, for the SR alignment: libwebrtc (any LiveKit "
        "client, LiveAvatar's included) stamps an audio SR with the time a packet was complete, "
        'not when its first sample was captured; "auto" is one audio packet (the RTP '
        "timestamp step between consecutive packets: 20 ms for Opus at 960 ticks), a number "
        "is fixed milliseconds (0 to 200), 0 takes the SRs as they are (docs/sync.md).",
    )
    relay_playout_hold_ms: float = Field(
        60.0,
        ge=0,
        le=300,
        description="On the relay path, pace audio and video out by their RTP clocks this long "
        "after their best-case arrival (a jitter buffer for the forwarded packets: the viewers' "
        "audio buffers stay small and lip sync holds; see docs/sync.md). 0 forwards on arrival.",
    )

    @field_validator("relay_audio_sr_capture_lag_ms")
    @classmethod
    def _lag_range(cls, value: float | str) -> float | str:
        # Bounded by the SR alignment's own limit on a lift (200 ms).
        if value != "auto" and not 0 <= float(value) <= 200:
            raise ValueError('must be "auto" or 0 to 200 (ms)')
        return value


class StreamConfig(_Section):
    """The Stream (GetStream) call the avatar joins."""

    api_key: SecretStr | None = Field(None, description="Stream API key (STREAM_API_KEY).")
    api_secret: SecretStr | None = Field(None, description="Stream API secret (STREAM_API_SECRET).")
    base_url: str = Field(
        "https://chat.stream-io-api.com", description="Stream API base URL (the SDK default)."
    )
    ws_url: str | None = Field(
        None, description="Coordinator WebSocket URL; derived from base_url when unset."
    )
    user_id: str = Field("avatar-bridge", pattern=r"^[A-Za-z0-9@_-]{1,64}$", description="User id.")
    user_name: str = Field("Avatar", description="Display name of the bridge's participant.")
    join_timeout_s: float = Field(15.0, gt=0, description="Timeout for joining the call.")


class IngestConfig(_Section):
    """The local socket clients stream PCM into."""

    socket_path: Path | None = Field(
        Path("/run/avatar-bridge/bridge.sock"), description="Unix socket path; empty disables it."
    )
    socket_mode: str = Field("0660", pattern=r"^0?[0-7]{3}$", description="Socket file mode.")
    socket_group: str | None = Field(None, description="Group owning the socket (clients' group).")
    allowed_uids: list[int] = Field(
        default_factory=list, description="Peer uids allowed (SO_PEERCRED); empty = any."
    )
    allowed_gids: list[int] = Field(
        default_factory=list, description="Peer gids allowed (SO_PEERCRED); empty = any."
    )
    tcp_host: str = Field("127.0.0.1", description="TCP ingest address (loopback only by default).")
    tcp_port: int | None = Field(None, ge=0, le=65535, description="TCP ingest port; unset = off.")
    tcp_token: SecretStr | None = Field(None, description="Token clients send in HELLO over TCP.")
    allow_non_loopback_tcp: bool = Field(False, description="Allow a non-loopback tcp_host.")
    hello_timeout_s: float = Field(
        5.0, gt=0, le=60, description="First frame must be HELLO by then."
    )

    @field_validator("socket_path", mode="before")
    @classmethod
    def _empty_path(cls, value: object) -> object:
        return None if value in ("", None) else value


class AdminConfig(_Section):
    """Health, readiness, metrics and session control over HTTP."""

    enabled: bool = Field(True, description="Serve the admin HTTP API.")
    host: str = Field("127.0.0.1", description="Admin listen address.")
    port: int = Field(8787, ge=0, le=65535, description="Admin listen port.")
    token: SecretStr | None = Field(None, description="Bearer token for mutating endpoints.")


class LimitsConfig(_Section):
    """Admission and lifecycle bounds."""

    max_sessions: int = Field(8, ge=1, le=1000, description="Concurrent sessions; more get 'busy'.")
    uplink_queue_ms: int = Field(
        2000, ge=100, le=60000, description="Client audio queued before the socket is paused."
    )
    linger_s: float = Field(
        30.0, ge=0, le=3600, description="Session kept after its client vanishes, for re-attach."
    )
    drain_timeout_s: float = Field(
        20.0, ge=0, le=3600, description="On SIGTERM, time sessions get to finish before closing."
    )
    close_timeout_s: float = Field(
        8.0,
        gt=0,
        le=600,
        description="After the drain, time the last sessions get to close (each stops its "
        "LiveAvatar session); what is still closing then is abandoned, logged and counted.",
    )


SANDBOX_CAP_S = 60


class PoolConfig(_Section):
    """Warm LiveAvatar sessions started ahead of demand, handed to a HELLO whose avatar settings
    match (avatar id, quality, encoding; sandbox and cap as configured). Off while size is 0."""

    size: int = Field(
        0, ge=0, le=100, description="Warm sessions kept per avatar settings key (0: no pool)."
    )
    avatars: list[str] = Field(
        default_factory=list,
        description="Keys kept warm, 'avatar_id:quality:encoding' ('-' = the configured "
        "value); empty: the configured avatar only.",
    )
    cost_cap_s_per_hour: float = Field(
        3600.0,
        ge=0,
        description="Idle pooled session-seconds allowed per rolling hour (what the pool costs); "
        "at the cap warm sessions are stopped and not refilled.",
    )
    min_remaining_s: float = Field(
        30.0,
        ge=0,
        description="A warm session with less than this left before its cap is stopped, not "
        "handed out.",
    )
    retry_backoff_s: float = Field(
        2.0, gt=0, le=600, description="First wait after a failed warm start (doubles, to 60 s)."
    )


class LogConfig(_Section):
    """Logging: structured, per-session context, secrets redacted."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto = JSON unless stderr is a terminal."
    )

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class Settings(BaseSettings):
    """Every option of the daemon. See config/avatar-bridge.toml for a commented example."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    state_dir: Path = Field(
        Path("/var/lib/avatar-bridge"), description="Where the paid-session ledger lives."
    )
    secrets_dir: Path | None = Field(
        None, description="Directory of credential files (default $CREDENTIALS_DIRECTORY)."
    )
    dry_run: bool = Field(
        False,
        description="Accept clients and pace their audio without starting any remote session.",
    )
    liveavatar: LiveAvatarConfig = Field(default_factory=LiveAvatarConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    pool: PoolConfig = Field(default_factory=PoolConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = _TOML_PATH.get()
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            env_settings,
            _StandardEnvSource(settings_cls),
            _CredentialFilesSource(settings_cls),
        ]
        if toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)


_TOML_PATH: contextvars.ContextVar[Path | None] = contextvars.ContextVar("toml", default=None)


class _NestedSource(PydanticBaseSettingsSource):
    """A source that yields a nested dict; field-by-field lookup is not used."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def values(self) -> Iterator[tuple[tuple[str, str], str]]:
        raise NotImplementedError

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (section, key), value in self.values():
            out.setdefault(section, {})[key] = value
        return out


class _StandardEnvSource(_NestedSource):
    def values(self) -> Iterator[tuple[tuple[str, str], str]]:
        for name, target in STANDARD_ENV.items():
            value = os.environ.get(name)
            if value:
                yield target, value


class _CredentialFilesSource(_NestedSource):
    def values(self) -> Iterator[tuple[tuple[str, str], str]]:
        directory = os.environ.get("AVATAR_BRIDGE_SECRETS_DIR") or os.environ.get(
            "CREDENTIALS_DIRECTORY"
        )
        if not directory:
            return
        for name, target in CREDENTIAL_FILES.items():
            path = Path(directory) / name
            if path.is_file():
                yield target, path.read_text().strip()


class ConfigError(Exception):
    """Invalid configuration: one actionable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``--set section.option=value`` pairs into the nested dict pydantic takes.

    Values are parsed as JSON when they look like it (numbers, booleans, lists), else kept as text.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                [f"--set {pair!r}: expected OPTION=VALUE, e.g. limits.max_sessions=4"]
            )
        value: Any = raw
        with contextlib.suppress(ValueError):
            value = json.loads(raw)
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _env_name(loc: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + "__".join(str(p).upper() for p in loc)


def _describe(err: Mapping[str, Any]) -> str:
    loc = tuple(err["loc"])
    dotted = ".".join(str(p) for p in loc)
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        return f"{dotted}: unknown option (check the spelling; see config/avatar-bridge.toml)"
    where = f"--set {dotted}=..., {_env_name(loc)}"
    if len(loc) >= 2:
        where += f" or `{loc[-1]}` in [{'.'.join(str(p) for p in loc[:-1])}] of the TOML file"
    else:
        where += f" or `{loc[0]}` in the TOML file"
    return f"{dotted}: {msg} (set it with {where})"


def load_settings(
    config_path: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build the effective settings or raise :class:`ConfigError` listing every problem."""
    path = config_path
    if path is None:
        env_path = os.environ.get("AVATAR_BRIDGE_CONFIG")
        if env_path:
            path = Path(env_path)
        elif DEFAULT_CONFIG_PATH.is_file():
            path = DEFAULT_CONFIG_PATH
    if path is not None and not path.is_file():
        raise ConfigError(
            [f"config file {path} does not exist (fix --config or AVATAR_BRIDGE_CONFIG)"]
        )
    token = _TOML_PATH.set(path)
    try:
        settings = Settings(**dict(overrides or {}))
    except ValidationError as exc:
        raise ConfigError([_describe(e) for e in exc.errors()]) from None
    except ValueError as exc:  # malformed TOML or env JSON
        raise ConfigError([f"cannot read configuration: {exc}"]) from None
    finally:
        _TOML_PATH.reset(token)
    problems = _cross_checks(settings)
    if problems:
        raise ConfigError(problems)
    return settings


def _cross_checks(s: Settings) -> list[str]:
    """Rules that span options; each message says what to change."""
    problems: list[str] = []
    ingest = s.ingest
    if ingest.socket_path is None and ingest.tcp_port is None:
        problems.append(
            "ingest: neither socket_path nor tcp_port is set, so no client could connect "
            "(set ingest.socket_path or ingest.tcp_port)"
        )
    if ingest.tcp_port is not None:
        if ingest.tcp_token is None:
            problems.append(
                "ingest.tcp_token: required when ingest.tcp_port is set "
                "(set AVATAR_BRIDGE_INGEST__TCP_TOKEN or a credential file ingest_tcp_token)"
            )
        if not ingest.allow_non_loopback_tcp and not _is_loopback(ingest.tcp_host):
            problems.append(
                f"ingest.tcp_host: {ingest.tcp_host} is not a loopback address; use 127.0.0.1 "
                "or set ingest.allow_non_loopback_tcp=true knowingly"
            )
    if s.dry_run:
        return problems
    if s.limits.uplink_queue_ms < s.liveavatar.chunk_ms:
        problems.append(
            f"limits.uplink_queue_ms: {s.limits.uplink_queue_ms} ms cannot hold one "
            f"agent.speak chunk of liveavatar.chunk_ms={s.liveavatar.chunk_ms}; raise it or "
            "lower liveavatar.chunk_ms"
        )
    la = s.liveavatar
    if la.api_key is None:
        problems.append(
            "liveavatar.api_key: not set (export LIVEAVATAR_API_KEY=<key from app.liveavatar.com>, "
            "or run with --dry-run to try the socket without LiveAvatar)"
        )
    if la.is_sandbox and la.avatar_id not in (None, SANDBOX_AVATAR_ID):
        problems.append(
            f"liveavatar.avatar_id: sandbox mode only works with the sandbox avatar "
            f"{SANDBOX_AVATAR_ID}; unset LIVEAVATAR_AVATAR_ID or set liveavatar.is_sandbox=false"
        )
    if not la.is_sandbox and la.avatar_id is None:
        problems.append(
            "liveavatar.avatar_id: required outside sandbox mode "
            "(export LIVEAVATAR_AVATAR_ID=<uuid>)"
        )
    # Sandbox sessions end after about a minute whatever is asked (spec 1.5).
    cap = min(la.max_session_duration, SANDBOX_CAP_S) if la.is_sandbox else la.max_session_duration
    if s.pool.size > 0 and s.pool.min_remaining_s >= cap:
        problems.append(
            f"pool.min_remaining_s: {s.pool.min_remaining_s:g} s is not less than the session "
            f"cap ({cap} s), so no warm session could ever be handed out; lower it"
        )
    if s.stream.api_key is None or s.stream.api_secret is None:
        problems.append(
            "stream.api_key / stream.api_secret: not set (export STREAM_API_KEY and "
            "STREAM_API_SECRET from your Stream dashboard)"
        )
    return problems


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def effective_avatar_id(s: Settings) -> str:
    la = s.liveavatar
    return la.avatar_id or SANDBOX_AVATAR_ID


def masked_dump(s: Settings) -> dict[str, Any]:
    """The effective configuration as plain data with every secret replaced by ``***``."""
    data: dict[str, Any] = json.loads(s.model_dump_json())

    def mask(model: BaseModel, node: dict[str, Any]) -> None:
        for name, value in model:
            if isinstance(value, SecretStr):
                node[name] = "***"
            elif isinstance(value, BaseModel):
                mask(value, node[name])

    mask(s, data)
    return data


def secret_values(s: Settings) -> list[str]:
    """Every configured secret, for the log redaction processor."""
    found: list[str] = []

    def walk(model: BaseModel) -> None:
        for _, value in model:
            if isinstance(value, SecretStr):
                found.append(value.get_secret_value())
            elif isinstance(value, BaseModel):
                walk(value)

    walk(s)
    return [v for v in found if v]


__all__ = [
    "SANDBOX_AVATAR_ID",
    "ConfigError",
    "IngestConfig",
    "LimitsConfig",
    "LiveAvatarConfig",
    "OutputConfig",
    "Settings",
    "StreamConfig",
    "effective_avatar_id",
    "load_settings",
    "masked_dump",
    "parse_overrides",
    "secret_values",
    "setting_default",
]
