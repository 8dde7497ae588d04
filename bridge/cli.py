"""``avatar-bridge``: the daemon and the commands a person runs around it."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import urllib.error
import urllib.request
import wave
from pathlib import Path
from typing import Any

from bridge import __version__

# The admin API the client commands talk to: AVATAR_BRIDGE_ADMIN_URL, else the daemon's own
# admin.port from the environment (so a container HEALTHCHECK follows a changed port).
DEFAULT_ADMIN = os.environ.get("AVATAR_BRIDGE_ADMIN_URL") or (
    f"http://127.0.0.1:{os.environ.get('AVATAR_BRIDGE_ADMIN__PORT', '8787')}"
)
DEFAULT_SOCKET = "/run/avatar-bridge/bridge.sock"


# ----- option plumbing -------------------------------------------------------------------------


def _config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration (flags > environment > TOML file > defaults)")
    g.add_argument("--config", type=Path, help="TOML file (default /etc/avatar-bridge/…)")
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="set any option, e.g. --set limits.max_sessions=4 (repeatable)",
    )
    g.add_argument("--socket", type=Path, help="ingest.socket_path")
    g.add_argument("--tcp-port", type=int, help="ingest.tcp_port (loopback, needs a token)")
    g.add_argument("--admin-port", type=int, help="admin.port")
    g.add_argument("--state-dir", type=Path, help="state_dir (paid-session ledger)")
    g.add_argument("--max-sessions", type=int, help="limits.max_sessions")
    g.add_argument("--log-level", help="log.level: DEBUG, INFO, WARNING, ERROR")
    g.add_argument("--log-format", choices=["auto", "json", "console"], help="log.format")
    g.add_argument(
        "--dry-run",
        action="store_true",
        default=None,
        help="accept clients and pace their audio without starting any remote session",
    )


_FLAG_TO_OPTION = {
    "socket": "ingest.socket_path",
    "tcp_port": "ingest.tcp_port",
    "admin_port": "admin.port",
    "state_dir": "state_dir",
    "max_sessions": "limits.max_sessions",
    "log_level": "log.level",
    "log_format": "log.format",
    "dry_run": "dry_run",
}


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from bridge.config import parse_overrides

    out = parse_overrides(args.overrides)
    for flag, option in _FLAG_TO_OPTION.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        node = out
        *parents, leaf = option.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = str(value) if isinstance(value, Path) else value
    return out


def _load(args: argparse.Namespace) -> Any:
    from bridge.config import ConfigError, load_settings

    try:
        return load_settings(args.config, _overrides(args))
    except ConfigError as exc:
        print("avatar-bridge: invalid configuration:", file=sys.stderr)
        for line in exc.problems:
            print(f"  - {line}", file=sys.stderr)
        raise SystemExit(2) from None


# ----- run / check -----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from bridge import logs
    from bridge.ingest import IngestSetupError
    from bridge.pipeline import build_daemon

    settings = _load(args)
    logs.configure(settings.log.level, settings.log.format)
    daemon = build_daemon(settings)
    # Everything imported and built so far lives as long as the process: moved out of the cyclic
    # collector's sight (after one last collection of start-up garbage), so no full collection
    # walks it again, on the event loop or at the interpreter's exit (~0.8 s saved per exit).
    gc.collect()
    gc.freeze()
    try:
        return _run_loop(daemon.run())
    except BaseExceptionGroup as group:
        setup, rest = group.split(IngestSetupError)
        if setup is None or rest is not None:
            raise
        print(f"avatar-bridge: cannot open the socket: {setup.exceptions[0]}", file=sys.stderr)
        return 1


def _run_loop(coro: Any) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return int(asyncio.run(coro))
    return int(uvloop.run(coro))


def cmd_check(args: argparse.Namespace) -> int:
    from bridge.config import masked_dump

    settings = _load(args)
    print(json.dumps(masked_dump(settings), indent=2, default=str))
    print("configuration OK", file=sys.stderr)
    return 0


# ----- say -------------------------------------------------------------------------------------


def _read_audio(args: argparse.Namespace) -> tuple[bytes, int, int]:
    """PCM bytes, rate and channels from a WAV file, or raw s16le from a file or stdin."""
    source = sys.stdin.buffer if args.file == "-" else None
    if source is None and str(args.file).lower().endswith(".wav"):
        with wave.open(str(args.file), "rb") as w:
            if w.getsampwidth() != 2:
                raise SystemExit(f"{args.file}: only 16-bit PCM WAV is supported")
            return w.readframes(w.getnframes()), w.getframerate(), w.getnchannels()
    data = source.read() if source is not None else Path(args.file).read_bytes()
    if data[:4] == b"RIFF":
        raise SystemExit("WAV data on stdin: pass the file name instead of '-'")
    return data, args.rate, args.channels


def cmd_say(args: argparse.Namespace) -> int:
    from bridge.say import say

    call_type, sep, call_id = args.call.partition(":")
    if not sep or not call_type or not call_id:
        raise SystemExit("--call must be TYPE:ID, e.g. --call default:my-call")
    pcm, rate, channels = _read_audio(args)
    target: str | tuple[str, int]
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        target = (host or "127.0.0.1", int(port))
    else:
        target = str(args.socket)
    avatar = {"avatar_id": args.avatar} if args.avatar else None
    return asyncio.run(
        say(
            target,
            pcm,
            rate,
            channels,
            call=(call_type, call_id),
            avatar=avatar,
            token=args.token,
            chunk_ms=args.chunk_ms,
            progress=not args.quiet and sys.stderr.isatty(),
            out=sys.stdout,
            wait_s=args.wait,
        )
    )


# ----- admin clients ---------------------------------------------------------------------------


def _admin_request(base: str, method: str, path: str, token: str | None) -> tuple[int, Any]:
    req = urllib.request.Request(base.rstrip("/") + path, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body or b"null")
        except ValueError:
            return exc.code, body.decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        raise SystemExit(f"cannot reach the admin API at {base}: {exc}") from None


def cmd_sessions(args: argparse.Namespace) -> int:
    if args.action == "stop":
        if not args.id:
            raise SystemExit("usage: avatar-bridge sessions stop SESSION_ID")
        status, body = _admin_request(args.admin, "DELETE", f"/sessions/{args.id}", args.token)
        print(json.dumps(body))
        return 0 if status == 200 else 1
    status, body = _admin_request(args.admin, "GET", "/sessions", None)
    if args.json:
        print(json.dumps(body, indent=2))
        return 0 if status == 200 else 1
    rows = body.get("sessions", []) if isinstance(body, dict) else []
    if not rows:
        print("no sessions")
    for s in rows:
        call = f"{s['call']['type']}:{s['call']['id']}"
        print(
            f"{s['id']}  {s['state']:<9} {call:<32} attached={s['attached']!s:<5} "
            f"path={s.get('media_path')} audio_in={s['stats'].get('audio_in_s', 0):.1f}s"
        )
    return 0 if status == 200 else 1


def cmd_health(args: argparse.Namespace) -> int:
    path = "/readyz" if args.ready else "/healthz"
    status, body = _admin_request(args.admin, "GET", path, None)
    print(json.dumps(body))
    return 0 if status == 200 else 1


def cmd_drain(args: argparse.Namespace) -> int:
    status, body = _admin_request(args.admin, "POST", "/drain", args.token)
    print(json.dumps(body))
    return 0 if status == 200 else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from bridge.demo import main as demo_main

    return demo_main(args)


# ----- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="avatar-bridge",
        description="Stream PCM into a local socket; get a lip-synced LiveAvatar avatar "
        "in a Stream video call.",
    )
    p.add_argument("--version", action="version", version=f"avatar-bridge {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon", description="Run the daemon.")
    _config_args(run)
    run.set_defaults(func=cmd_run)

    check = sub.add_parser(
        "check",
        help="validate the configuration and print it (secrets masked)",
        description="Validate the configuration and print the effective values, secrets masked.",
    )
    _config_args(check)
    check.set_defaults(func=cmd_check)

    say = sub.add_parser(
        "say",
        help="stream a WAV or raw PCM through the socket in real time",
        description="Stream a WAV file (or raw s16le PCM from a file or '-') through the "
        "daemon's socket in real time, printing events; exits non-zero on an ERROR.",
    )
    say.add_argument("file", help="WAV file, raw PCM file, or - for raw PCM on stdin")
    say.add_argument("--call", required=True, help="Stream call as TYPE:ID")
    say.add_argument("--avatar", help="avatar id override")
    say.add_argument("--socket", type=Path, default=Path(DEFAULT_SOCKET), help="Unix socket")
    say.add_argument("--tcp", metavar="HOST:PORT", help="connect over loopback TCP instead")
    say.add_argument("--token", help="ingest token (TCP)")
    say.add_argument("--rate", type=int, default=24000, help="raw PCM sample rate")
    say.add_argument("--channels", type=int, default=1, help="raw PCM channels")
    say.add_argument("--chunk-ms", type=int, default=20, help="AUDIO frame size in ms")
    say.add_argument(
        "--wait", type=float, default=30.0, help="seconds to wait for speak_ended after the audio"
    )
    say.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    say.set_defaults(func=cmd_say)

    sessions = sub.add_parser(
        "sessions",
        help="list or stop sessions (admin API)",
        description="List sessions, or stop one, through the admin API.",
    )
    sessions.add_argument("action", nargs="?", choices=["list", "stop"], default="list")
    sessions.add_argument("id", nargs="?", help="session id (for stop)")
    sessions.add_argument("--admin", default=DEFAULT_ADMIN, help="admin API base URL")
    sessions.add_argument("--token", help="admin bearer token")
    sessions.add_argument("--json", action="store_true", help="print JSON")
    sessions.set_defaults(func=cmd_sessions)

    health = sub.add_parser(
        "health",
        help="exit 0 when the daemon is alive (or ready, with --ready)",
        description="Probe the admin API; used by the container HEALTHCHECK.",
    )
    health.add_argument("--admin", default=DEFAULT_ADMIN, help="admin API base URL")
    health.add_argument("--ready", action="store_true", help="probe readiness, not liveness")
    health.set_defaults(func=cmd_health)

    drain = sub.add_parser(
        "drain",
        help="stop taking new sessions (e.g. Kubernetes preStop)",
        description="Ask the daemon to drain: refuse new sessions, let current ones finish.",
    )
    drain.add_argument("--admin", default=DEFAULT_ADMIN, help="admin API base URL")
    drain.add_argument("--token", help="admin bearer token")
    drain.set_defaults(func=cmd_drain)

    demo = sub.add_parser(
        "demo",
        help="run the whole pipeline on local stand-ins, no account needed",
        description="Start the local stand-ins and the daemon, stream a bundled speech sample, "
        "and write a report.",
    )
    demo.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder")
    demo.add_argument("--sessions", type=int, default=1, help="concurrent sessions")
    demo.add_argument("--short", action="store_true", help="a quick run (CI)")
    demo.add_argument("--audio", type=Path, help="WAV to speak (default: bundled sample)")
    demo.add_argument(
        "--watch",
        action="store_true",
        help="serve a page on 127.0.0.1 that watches the call with Stream's browser SDK; "
        "print its URL and keep the call up until Ctrl-C (host network)",
    )
    demo.add_argument(
        "--no-viewer",
        action="store_true",
        help="skip the headless Chromium viewer (report.json viewer.*)",
    )
    demo.add_argument(
        "--media-path",
        choices=("auto", "relay", "transcode"),
        default="auto",
        help="output.media_path of the demo's daemon (auto relays: the demo's sizes match)",
    )
    demo.add_argument(
        "--daemon-set",
        dest="daemon_set",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="an option of the demo's daemon, e.g. --daemon-set output.relay_playout_hold_ms=0 "
        "(repeatable)",
    )
    demo.add_argument(
        "--continuity",
        action="store_true",
        help="also measure HELLO -> first avatar frame with a warm pooled session and cold, "
        "under the LiveAvatar stand-in's realistic start delays (report.json continuity.*; "
        "~20 s more)",
    )
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
