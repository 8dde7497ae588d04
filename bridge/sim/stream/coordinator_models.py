"""Fully populated coordinator JSON, built from the SDK's own response models.

The ``getstream`` Python REST client decodes responses into strict dataclasses (a missing field is
a ``KeyError``), so the stand-in fills every required field of the model class with a neutral value
instead of hand-writing a partial stub, then applies the call's real values on top.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import enum
import types
import typing
from typing import Any

from getstream import models

_ISO_SUFFIX = "+00:00"

# Call settings of the built-in call types as a fresh Stream app returns them to clients (the
# settings the SDKs read on join: camera/mic defaults, the target resolution the browser SDK
# publishes at). Assumed from Stream's call-type documentation ("default": 1:1 or group video
# with sensible defaults; camera and microphone on, front camera, speaker; 720p target) and the
# OpenAPI models' field set; the exact numbers of a real app may differ and are dashboard-editable.
_DEFAULT_SETTINGS: dict[str, Any] = {
    "audio": {
        "access_request_enabled": False,
        "default_device": "speaker",
        "mic_default_on": True,
        "speaker_default_on": True,
        "opus_dtx_enabled": True,
        "redundant_coding_enabled": True,
        "hifi_audio_enabled": False,
        "noise_cancellation": {"mode": "available"},
    },
    "backstage": {"enabled": False, "join_ahead_time_seconds": 0},
    "broadcasting": {"enabled": False},
    "geofencing": {"names": []},
    "limits": {"max_participants": None, "max_duration_seconds": None},
    "recording": {"audio_only": False, "mode": "available", "quality": "720p"},
    "ring": {
        "auto_cancel_timeout_ms": 30000,
        "incoming_call_timeout_ms": 15000,
        "missed_call_timeout_ms": 15000,
    },
    "screensharing": {
        "access_request_enabled": False,
        "enabled": True,
        "target_resolution": {"width": 1920, "height": 1080, "bitrate": 3000000},
    },
    "session": {"inactivity_timeout_seconds": 30},
    "thumbnails": {"enabled": True},
    "transcription": {"mode": "available", "closed_caption_mode": "available", "language": "auto"},
    "video": {
        "access_request_enabled": False,
        "camera_default_on": True,
        "camera_facing": "front",
        "enabled": True,
        "target_resolution": {"width": 1280, "height": 720, "bitrate": 1500000},
    },
}
_OVERRIDES: dict[str, dict[str, Any]] = {
    "default": {},
    "development": {},
    # Audio only, speaking by request.
    "audio_room": {
        "audio": {"access_request_enabled": True, "mic_default_on": False},
        "backstage": {"enabled": True},
        "video": {"enabled": False, "camera_default_on": False, "access_request_enabled": False},
        "screensharing": {"enabled": False},
    },
    # One to many: hosts go live from the backstage.
    "livestream": {
        "backstage": {"enabled": True},
        "broadcasting": {"enabled": True},
        "video": {"target_resolution": {"width": 1920, "height": 1080, "bitrate": 3000000}},
    },
}
BUILTIN_CALL_TYPES = frozenset(_OVERRIDES)


def call_settings(call_type: str) -> dict[str, Any]:
    """The settings a built-in call type returns (KeyError for a type the app does not have)."""
    extra = _OVERRIDES[call_type]
    return _deep_update(copy.deepcopy(_DEFAULT_SETTINGS), copy.deepcopy(extra))


def _neutral(tp: Any) -> Any:
    """A neutral value for a field of type ``tp`` (first enum member, empty containers, ...)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _neutral(args[0]) if args else None
    if origin is list:
        return []
    if origin is dict:
        return {}
    if tp is str:
        return ""
    if tp is bool:
        return False
    if tp is int:
        return 0
    if tp is float:
        return 0.0
    if tp is dt.datetime:
        return dt.datetime.now(dt.UTC)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return next(iter(tp))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        kwargs = {
            f.name: _neutral(hints[f.name])
            for f in dataclasses.fields(tp)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        return tp(**kwargs)
    return None


def _to_wire(value: Any) -> Any:
    """The API sends times as unix nanoseconds; the models' encoder writes ISO strings."""
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_wire(v) for v in value]
    if isinstance(value, str) and value.endswith(_ISO_SUFFIX) and "T" in value:
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return value
        return int(parsed.timestamp() * 1_000_000_000)
    return value


def _deep_update(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def get_or_create_call_response(
    call_type: str,
    call_id: str,
    *,
    created: bool,
    created_by: str,
    own_capabilities: list[str],
    session_id: str,
) -> dict[str, Any]:
    """A ``GetOrCreateCallResponse`` the SDK's REST client accepts, as JSON-ready data, with the
    call type's settings (``call_type`` must be one of :data:`BUILTIN_CALL_TYPES`)."""
    skeleton = _neutral(models.GetOrCreateCallResponse)
    data: dict[str, Any] = _to_wire(skeleton.to_dict(encode_json=True))
    user = {"id": created_by, "role": "user", "name": created_by}
    return _deep_update(
        data,
        {
            "created": created,
            "duration": "1.00ms",
            "own_capabilities": own_capabilities,
            "call": {
                "cid": f"{call_type}:{call_id}",
                "id": call_id,
                "type": call_type,
                "current_session_id": session_id,
                "created_by": user,
                "settings": call_settings(call_type),
            },
        },
    )
