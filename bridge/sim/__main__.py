"""Every stand-in at once, for running a daemon by hand: ``python -m bridge.sim``.

Starts LiveAvatar (which opens each session's room on its LiveKit stand-in), LiveKit and Stream
on loopback, prints the environment a daemon needs as ``export KEY=VALUE`` lines, then
``# ready``, and runs until SIGINT/SIGTERM:

    python -m bridge.sim > sim.env &   # then: . ./sim.env; avatar-bridge run ...

WebRTC needs a non-loopback interface (see :mod:`bridge.sim.netns`); signalling stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import signal

import structlog

from bridge.sim.stack import StandIns


async def _run(args: argparse.Namespace) -> None:
    async with StandIns(
        render_latency_s=args.render_latency,
        stream_codec=args.stream_codec,
        avatar_publisher=args.publisher,
    ) as sim:
        env = sim.standin_env()
        env["LIVEKIT_URL"] = sim.livekit.url  # informational: sessions carry their own URL
        for key, value in env.items():
            print(f"export {key}={shlex.quote(value)}", flush=True)
        print("# ready", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Run every stand-in; print the daemon's environment")
    p.add_argument("--render-latency", type=float, default=0.2, help="avatar render latency, s")
    p.add_argument("--stream-codec", default="VP9", choices=("VP8", "VP9", "H264"))
    p.add_argument(
        "--publisher",
        default="sdk",
        choices=("sdk", "aiortc"),
        help="sdk: the avatar publishes with the LiveKit SDK, forwarded SFU-style (as for real)",
    )
    args = p.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(args))


if __name__ == "__main__":
    main()
