"""Run a command inside a private network namespace with a veth pair.

Both WebRTC stacks (libwebrtc in the ``livekit`` SDK, webrtc-rs in ``getstream_rtc``, and aioice)
skip loopback interfaces when gathering ICE candidates, so media cannot flow on a machine that has
only ``lo``. This harness gives the command a namespace of its own with ``lo`` up and a veth pair
addressed in 10.77.0.0/24: signalling stays on 127.0.0.1, ICE pairs over the veth addresses, and
no packet leaves the namespace.

    python -m bridge.sim.netns -- python -m pytest

As root it uses a plain network namespace; otherwise a user namespace maps the caller to root
first (``unshare -rn``). Inside, ``AVATAR_BRIDGE_NETNS=1`` tells tests that media can flow. When
the kernel refuses namespaces the command runs unchanged on the host's own interfaces and
``AVATAR_BRIDGE_NETNS`` is left unset, so WebRTC tests skip unless the host has a non-loopback
interface of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

ENV_FLAG = "AVATAR_BRIDGE_NETNS"
VETH_A, VETH_B = "abx0", "abx1"
ADDR_A, ADDR_B = "10.77.0.1", "10.77.0.2"

_SETUP = f"""
set -e
ip link set lo up
ip link add {VETH_A} type veth peer name {VETH_B}
ip addr add {ADDR_A}/24 dev {VETH_A}
ip addr add {ADDR_B}/24 dev {VETH_B}
ip link set {VETH_A} up
ip link set {VETH_B} up
export {ENV_FLAG}=1
exec "$@"
"""


def inside() -> bool:
    """True when running inside the namespace this harness made."""
    return os.environ.get(ENV_FLAG) == "1"


def unshare_argv(argv: list[str]) -> list[str] | None:
    """The command line that runs ``argv`` in a fresh namespace, or None when impossible."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare is None or ip is None:
        return None
    flags = "-n" if os.geteuid() == 0 else "-rn"
    return [unshare, flags, "sh", "-c", _SETUP, "netns", *argv]


def available() -> bool:
    """Whether the kernel lets us create the namespace (checked by actually doing it)."""
    probe = unshare_argv(["true"])
    if probe is None:
        return False
    try:
        done = subprocess.run(probe, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        print("usage: python -m bridge.sim.netns -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    if inside():
        os.execvp(args[0], args)
    if available():
        cmd = unshare_argv(args)
        assert cmd is not None
        os.execv(cmd[0], cmd)
    print(
        "netns: cannot create a network namespace here; running on the host's interfaces "
        "(WebRTC tests need a non-loopback interface)",
        file=sys.stderr,
    )
    os.execvp(args[0], args)


if __name__ == "__main__":
    raise SystemExit(main())
