"""One source of defaults: every stage's Options (and the few constructors that take a setting as
a keyword) default to what the settings model (bridge/config.py) defaults to.

Each check builds the options the way the daemon does from *default* settings and compares them
field by field with the class's own defaults, so a default that disagrees with its setting, or
with the conversion the daemon applies (ms -> s, a string mode -> int), fails here.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import SecretStr

from bridge.config import Settings
from bridge.dryrun import DryRunUplink
from bridge.ingest import IngestOptions
from bridge.liveavatar.api import LiveAvatarAPI
from bridge.liveavatar.uplink import LiveAvatarOptions
from bridge.livekit.downlink import DownlinkOptions
from bridge.livekit.subscriber import SubscriberOptions
from bridge.relay.path import RelayOptions
from bridge.stream.join import StreamJoinOptions
from bridge.stream.publisher import PublisherOptions
from bridge.sync import SyncStage

# Pure defaults: model_construct reads neither the environment nor a TOML file.
DEFAULTS = Settings.model_construct()
S = DEFAULTS

# Fields that deliberately do not take the setting's default, and why.
NOT_FROM_SETTINGS = {
    # A server built by hand (tests, embedders) binds no system path unless told to.
    (IngestOptions, "unix_path"),
}


def _with_secrets(s: Settings) -> Settings:
    return s.model_copy(
        update={
            "stream": s.stream.model_copy(
                update={"api_key": SecretStr("k"), "api_secret": SecretStr("s")}
            )
        }
    )


def _relay(s: Settings) -> RelayOptions:
    return RelayOptions.from_settings(s, s.liveavatar.video_encoding)


def _subscriber(s: Settings) -> SubscriberOptions:
    # As bridge/relay/path.py builds it from RelayOptions.
    relay = _relay(s)
    return SubscriberOptions(
        avatar_identity=relay.avatar_identity,
        connect_timeout_s=relay.connect_timeout_s,
        avatar_join_timeout_s=relay.avatar_join_timeout_s,
        single_peer_connection=relay.single_peer_connection,
    )


# Options classes and how the daemon builds each from the settings. Classes with a
# from_settings classmethod use it; the others (in bridge/relay and bridge/stream) are built
# here as the daemon builds them today: when they gain a from_settings, use it instead.
BUILDERS: dict[type[Any], Callable[[Settings], Any]] = {
    LiveAvatarOptions: lambda s: LiveAvatarOptions.from_settings(s),
    DownlinkOptions: DownlinkOptions.from_settings,
    IngestOptions: lambda s: IngestOptions.from_settings(s, []),
    SubscriberOptions: _subscriber,
    RelayOptions: _relay,
    StreamJoinOptions: lambda s: StreamJoinOptions.from_settings(_with_secrets(s)),
    PublisherOptions: lambda s: PublisherOptions.from_settings(_with_secrets(s)),
}


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def drift(cls: type[Any], built: Any) -> dict[str, tuple[Any, Any]]:
    """Fields whose class default differs from the value built from default settings."""
    out: dict[str, tuple[Any, Any]] = {}
    for f in dataclasses.fields(cls):
        default = _default(f)
        if default is dataclasses.MISSING or (cls, f.name) in NOT_FROM_SETTINGS:
            continue
        value = getattr(built, f.name)
        # By value (30 == 30.0), but a bool is not an int here.
        if value != default or isinstance(value, bool) != isinstance(default, bool):
            out[f.name] = (default, value)
    return out


@pytest.mark.parametrize("cls", list(BUILDERS), ids=lambda c: c.__name__)
def test_options_defaults_are_the_settings_defaults(cls: type[Any]) -> None:
    found = drift(cls, BUILDERS[cls](DEFAULTS))
    assert not found, {n: f"default {d!r}, settings {v!r}" for n, (d, v) in found.items()}


def test_every_options_class_is_checked() -> None:
    import bridge

    found = set()
    for module in _bridge_modules(bridge):
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and obj.__module__ == module.__name__
                and obj.__name__.endswith("Options")
                and dataclasses.is_dataclass(obj)
                and not module.__name__.startswith("bridge.sim")  # stand-ins have their own
            ):
                found.add(obj)
    assert found == set(BUILDERS), "add the new Options class to BUILDERS"


def _bridge_modules(package: Any) -> list[Any]:
    import importlib
    import pkgutil

    mods = []
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.startswith("bridge.sim") or info.name == "bridge.__main__":
            continue
        mods.append(importlib.import_module(info.name))
    return mods


@pytest.mark.parametrize(
    ("func", "param", "setting"),
    [
        (LiveAvatarAPI.__init__, "timeout_s", S.liveavatar.request_timeout_s),
        (DryRunUplink.__init__, "queue_ms", S.limits.uplink_queue_ms),
    ],
    ids=["LiveAvatarAPI.timeout_s", "DryRunUplink.queue_ms"],
)
def test_keyword_defaults_are_the_settings_defaults(
    func: Callable[..., Any], param: str, setting: Any
) -> None:
    assert inspect.signature(func).parameters[param].default == setting


def test_sync_stage_takes_its_settings_without_defaults() -> None:
    # Nothing to drift: the daemon must pass each of these.
    params = inspect.signature(SyncStage.__init__).parameters
    for name in ("fps", "buffer_seconds", "audio_queue_ms", "video_delay_ms", "audio_backlog_ms"):
        assert name in type(S.output).model_fields
        assert params[name].default is inspect.Parameter.empty, name


def test_from_settings_applies_the_settings_and_a_clients_overrides() -> None:
    s = Settings.model_construct()
    s.liveavatar.chunk_ms = 400
    s.liveavatar.connect_timeout_s = 7.0
    s.limits.uplink_queue_ms = 900
    opts = LiveAvatarOptions.from_settings(
        s, {"avatar_id": "a-1", "is_sandbox": False, "max_session_duration": 90}
    )
    assert (opts.chunk_ms, opts.queue_ms, opts.avatar_id) == (400, 900, "a-1")
    assert (opts.is_sandbox, opts.max_session_duration) == (False, 90)
    assert opts.connect_timeout_s == opts.ws_connect_gate_timeout_s == 7.0
    assert DownlinkOptions.from_settings(s).avatar_join_timeout_s == 7.0
    # No override: the settings' own choice, the sandbox avatar by default.
    plain = LiveAvatarOptions.from_settings(s)
    assert plain.is_sandbox is True and plain.avatar_id == "dd73ea75-1218-4ef3-92ce-606d5f7fbc0a"
