"""Run the Stream stand-in on its own: ``python -m bridge.sim.stream --port 3030``.

Prints the base URL, WebSocket URL, API key and secret as one JSON line, then serves until
interrupted. Per-call measurement: ``GET /_standin/calls``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal

from bridge.sim.stream.server import StreamStandIn


async def _serve(args: argparse.Namespace) -> None:
    standin = StreamStandIn(args.api_key, args.api_secret, video_codec=args.video_codec)
    await standin.start(args.host, args.port)
    print(
        json.dumps(
            {
                "base_url": standin.base_url,
                "ws_url": standin.ws_url,
                "api_key": standin.api_key,
                "api_secret": standin.api_secret,
            }
        ),
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await standin.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bridge.sim.stream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="standin-key")
    parser.add_argument("--api-secret", default=None)
    parser.add_argument("--video-codec", choices=["VP9", "VP8", "H264"], default="VP9")
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
