"""Configuration: precedence, validation messages, masking, the generated docs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bridge.config import (
    SANDBOX_AVATAR_ID,
    ConfigError,
    load_settings,
    masked_dump,
    parse_overrides,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("AVATAR_BRIDGE_", "LIVEAVATAR_", "STREAM_")) or name in (
            "CREDENTIALS_DIRECTORY",
        ):
            monkeypatch.delenv(name)


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return path


def test_defaults_follow_the_seed_plugin() -> None:
    s = load_settings(None, {"dry_run": True})
    assert s.liveavatar.is_sandbox is True
    assert s.liveavatar.video_quality == "high"
    assert s.liveavatar.video_encoding == "H264"
    assert (s.output.width, s.output.height, s.output.fps) == (1280, 720, 30)
    assert s.output.buffer_seconds == 1.0
    assert s.admin.host == "127.0.0.1"


def test_precedence_flags_over_env_over_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = write_toml(
        tmp_path, '[limits]\nmax_sessions = 3\nlinger_s = 5\n[liveavatar]\nvideo_quality = "low"\n'
    )
    monkeypatch.setenv("AVATAR_BRIDGE_LIMITS__MAX_SESSIONS", "5")
    monkeypatch.setenv("AVATAR_BRIDGE_LIMITS__LINGER_S", "7")
    s = load_settings(toml, parse_overrides(["dry_run=true", "limits.max_sessions=9"]))
    assert s.limits.max_sessions == 9  # flag beats env and file
    assert s.limits.linger_s == 7  # env beats file
    assert s.liveavatar.video_quality == "low"  # file beats default


def test_standard_variables_and_prefixed_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEAVATAR_API_KEY", "la-standard")
    monkeypatch.setenv("STREAM_API_KEY", "sk")
    monkeypatch.setenv("STREAM_API_SECRET", "ss")
    s = load_settings(None, {})
    assert s.liveavatar.api_key is not None
    assert s.liveavatar.api_key.get_secret_value() == "la-standard"
    monkeypatch.setenv("AVATAR_BRIDGE_LIVEAVATAR__API_KEY", "la-prefixed")
    s = load_settings(None, {})
    assert s.liveavatar.api_key is not None
    assert s.liveavatar.api_key.get_secret_value() == "la-prefixed"


def test_credential_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "liveavatar_api_key").write_text("from-file\n")
    (tmp_path / "stream_api_key").write_text("k")
    (tmp_path / "stream_api_secret").write_text("s")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    s = load_settings(None, {})
    assert s.liveavatar.api_key is not None
    assert s.liveavatar.api_key.get_secret_value() == "from-file"


def test_each_problem_is_one_actionable_line(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, '[output]\nwidth = 641\n[liveavatar]\nvideo_quality = "ultra"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(toml, parse_overrides(["limits.max_sessions=0", "no_such_option=1"]))
    problems = info.value.problems
    assert len(problems) == 4
    text = "\n".join(problems)
    assert "output.width" in text and "multiple of 2" in text
    assert "liveavatar.video_quality" in text and "AVATAR_BRIDGE_LIVEAVATAR__VIDEO_QUALITY" in text
    assert "limits.max_sessions" in text and "greater than or equal to 1" in text
    assert "no_such_option: unknown option" in text


def test_missing_credentials_name_the_variables() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {})
    text = "\n".join(info.value.problems)
    assert "LIVEAVATAR_API_KEY" in text
    assert "STREAM_API_KEY" in text and "STREAM_API_SECRET" in text


def test_sandbox_requires_the_sandbox_avatar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEAVATAR_API_KEY", "k")
    monkeypatch.setenv("STREAM_API_KEY", "k")
    monkeypatch.setenv("STREAM_API_SECRET", "s")
    monkeypatch.setenv("LIVEAVATAR_AVATAR_ID", "11111111-2222-3333-4444-555555555555")
    with pytest.raises(ConfigError) as info:
        load_settings(None, {})
    assert SANDBOX_AVATAR_ID in info.value.problems[0]
    s = load_settings(None, {"liveavatar": {"is_sandbox": False}})
    assert s.liveavatar.avatar_id == "11111111-2222-3333-4444-555555555555"


def test_tcp_ingest_needs_a_token_and_loopback() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(
            None,
            parse_overrides(["dry_run=true", "ingest.tcp_port=9000", "ingest.tcp_host=0.0.0.0"]),
        )
    text = "\n".join(info.value.problems)
    assert "ingest.tcp_token" in text
    assert "not a loopback address" in text


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "nope.toml", {"dry_run": True})
    assert "does not exist" in info.value.problems[0]


def test_malformed_toml_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write_toml(tmp_path, "[limits\n"), {"dry_run": True})
    assert "cannot read configuration" in info.value.problems[0]


def test_masked_dump_hides_every_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEAVATAR_API_KEY", "canary-la-key")
    monkeypatch.setenv("STREAM_API_SECRET", "canary-stream-secret")
    s = load_settings(None, parse_overrides(["dry_run=true", "admin.token=canary-admin"]))
    dumped = repr(masked_dump(s))
    for canary in ("canary-la-key", "canary-stream-secret", "canary-admin"):
        assert canary not in dumped
    assert masked_dump(s)["liveavatar"]["api_key"] == "***"


def test_example_toml_loads_and_docs_are_current() -> None:
    s = load_settings(ROOT / "config" / "avatar-bridge.toml", {"dry_run": True})
    assert s.limits.max_sessions == 8
    done = subprocess.run(
        [sys.executable, "-m", "bridge.configdoc", "--check"], cwd=ROOT, capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()


def test_a_pool_that_could_never_hand_out_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEAVATAR_API_KEY", "k")
    monkeypatch.setenv("STREAM_API_KEY", "k")
    monkeypatch.setenv("STREAM_API_SECRET", "s")
    # Sandbox sessions last 60 s: keeping 60 s in reserve leaves no usable warm session.
    with pytest.raises(ConfigError) as info:
        load_settings(None, parse_overrides(["pool.size=1", "pool.min_remaining_s=60"]))
    assert any(p.startswith("pool.min_remaining_s") for p in info.value.problems)
    s = load_settings(None, parse_overrides(["pool.size=1", "pool.min_remaining_s=10"]))
    assert s.pool.size == 1


def test_relay_audio_sr_capture_lag_is_auto_a_number_or_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = load_settings(None, {"dry_run": True})
    assert s.output.relay_audio_sr_capture_lag_ms == "auto"  # one audio packet (libwebrtc)
    monkeypatch.setenv("AVATAR_BRIDGE_OUTPUT__RELAY_AUDIO_SR_CAPTURE_LAG_MS", "0")
    assert load_settings(None, {"dry_run": True}).output.relay_audio_sr_capture_lag_ms == 0.0
    s = load_settings(
        None, parse_overrides(["dry_run=true", "output.relay_audio_sr_capture_lag_ms=20"])
    )
    assert s.output.relay_audio_sr_capture_lag_ms == 20.0
    for bad in ("250", "-1", "soon"):
        with pytest.raises(ConfigError, match="relay_audio_sr_capture_lag_ms"):
            load_settings(
                None,
                parse_overrides(["dry_run=true", f"output.relay_audio_sr_capture_lag_ms={bad}"]),
            )
