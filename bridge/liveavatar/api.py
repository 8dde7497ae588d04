"""LiveAvatar REST: mint a session token, start the session, stop it.

Success is decided by HTTP status and the presence of the expected fields, never by the body's
``code`` (its success value differs between sources). Retry policy (spec 1.4): ``/token`` is
never retried (each success mints a new, possibly orphaned, session); ``/start`` is retried at
most once on a transient failure; ``/stop`` is retried with backoff and jitter until it succeeds
or gets a definitive 4xx.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from typing import Any, NamedTuple

import aiohttp
import structlog
from prometheus_client import Counter, Histogram

from bridge.config import LiveAvatarConfig, setting_default
from bridge.errors import BridgeError, ErrorCode

log = structlog.get_logger(__name__)

SANDBOX_AVATAR_ID = "dd73ea75-1218-4ef3-92ce-606d5f7fbc0a"
DEFAULT_BASE_URL = "https://api.liveavatar.com"

REST_REQUESTS = Counter(
    "bridge_liveavatar_rest_requests_total",
    "LiveAvatar REST calls by endpoint and outcome (HTTP status, or error)",
    ["endpoint", "outcome"],
)
REST_SECONDS = Histogram(
    "bridge_liveavatar_rest_seconds", "LiveAvatar REST call latency", ["endpoint"]
)


class LiveAvatarError(Exception):
    """A LiveAvatar call failed. ``status`` is 0 when no HTTP response arrived."""

    bridge_code = ErrorCode.LIVEAVATAR_REJECTED

    def __init__(self, message: str, *, status: int = 0, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    @property
    def definitive(self) -> bool:
        """The service answered and retrying the same request will not help."""
        return 400 <= self.status < 500 and self.status not in (401, 403, 408, 429)

    def to_bridge_error(self) -> BridgeError:
        return BridgeError(self.bridge_code, self.message)

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status})" if self.status else self.message


class LiveAvatarAuthError(LiveAvatarError):
    bridge_code = ErrorCode.LIVEAVATAR_AUTH


class LiveAvatarSandboxError(LiveAvatarError):
    bridge_code = ErrorCode.LIVEAVATAR_SANDBOX


class LiveAvatarCreditsError(LiveAvatarError):
    bridge_code = ErrorCode.LIVEAVATAR_CREDITS


class LiveAvatarRejectedError(LiveAvatarError):
    bridge_code = ErrorCode.LIVEAVATAR_REJECTED


class LiveAvatarUnavailableError(LiveAvatarError):
    bridge_code = ErrorCode.LIVEAVATAR_UNAVAILABLE


class SessionToken(NamedTuple):
    session_id: str
    session_token: str


@dataclass(frozen=True, slots=True)
class StartInfo:
    session_id: str
    ws_url: str
    livekit_url: str
    livekit_agent_token: str
    max_session_duration: int | None = None


def _server_message(body: Any) -> str:
    """A short human text from any error body shape (envelope, FastAPI 422, plain text)."""
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, list):
            parts = []
            for item in detail[:5]:
                if isinstance(item, dict):
                    loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                    parts.append(f"{loc}: {item.get('msg', '')}".strip(": "))
            return "; ".join(parts)
        for key in ("message", "error", "detail"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
        data = body.get("data")
        if isinstance(data, list) and data and isinstance(data[0], dict):
            return str(data[0].get("message", ""))
    if isinstance(body, str):
        return body[:200]
    return ""


class LiveAvatarAPI:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        base_url: str,
        api_key: str,
        timeout_s: float = setting_default(LiveAvatarConfig, "request_timeout_s"),
        *,
        stop_attempts: int = 6,
        stop_timeout_s: float = setting_default(LiveAvatarConfig, "stop_timeout_s"),
        backoff_s: float = 0.25,
        max_backoff_s: float = 4.0,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._stop_attempts = stop_attempts
        self._stop_timeout_s = stop_timeout_s
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s

    async def _post(
        self,
        endpoint: str,
        headers: dict[str, str],
        body: dict[str, Any],
        *,
        sandbox: bool = False,
    ) -> tuple[int, Any]:
        """POST and return (status, parsed body) for 2xx; raise a typed error otherwise."""
        url = f"{self._base}/v1/sessions/{endpoint}"
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            async with self._http.post(
                url, json=body, headers=headers, timeout=self._timeout
            ) as resp:
                status = resp.status
                text = await resp.text()
        except (TimeoutError, aiohttp.ClientError) as exc:
            REST_REQUESTS.labels(endpoint, "error").inc()
            raise LiveAvatarUnavailableError(
                f"LiveAvatar {endpoint} call failed: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            REST_SECONDS.labels(endpoint).observe(loop.time() - t0)
        REST_REQUESTS.labels(endpoint, str(status)).inc()
        try:
            parsed: Any = json.loads(text) if text else None
        except ValueError:
            parsed = text
        if 200 <= status < 300:
            return status, parsed
        raise self._classify(endpoint, status, parsed, sandbox=sandbox)

    def _classify(self, endpoint: str, status: int, body: Any, *, sandbox: bool) -> LiveAvatarError:
        server = _server_message(body)
        code = body.get("code") if isinstance(body, dict) else None
        code = code if isinstance(code, int) else None
        said = f" (LiveAvatar said: {server})" if server else ""
        log.warning("liveavatar_rest_failed", endpoint=endpoint, status=status, message=server)
        if status in (401, 403):
            return LiveAvatarAuthError(
                "LiveAvatar rejected the API key: set LIVEAVATAR_API_KEY to a key from "
                f"app.liveavatar.com{said}",
                status=status,
                code=code,
            )
        if status == 402 or "credit" in server.lower():
            return LiveAvatarCreditsError(
                "LiveAvatar has no credits left for this account: top up at app.liveavatar.com "
                f"or use sandbox mode{said}",
                status=status,
                code=code,
            )
        if status == 429 or status >= 500:
            return LiveAvatarUnavailableError(
                f"LiveAvatar is unavailable ({endpoint}, HTTP {status}); try again later{said}",
                status=status,
                code=code,
            )
        if sandbox and status != 422:
            return LiveAvatarSandboxError(
                f"LiveAvatar refused the sandbox session: sandbox mode only works with the "
                f"sandbox avatar {SANDBOX_AVATAR_ID}; set LIVEAVATAR_SANDBOX=false to use your "
                f"own avatar{said}",
                status=status,
                code=code,
            )
        return LiveAvatarRejectedError(
            f"LiveAvatar rejected the {endpoint} request{said}", status=status, code=code
        )

    async def create_token(
        self,
        *,
        avatar_id: str,
        is_sandbox: bool,
        max_session_duration: int,
        video_quality: str = "high",
        video_encoding: str = "H264",
    ) -> SessionToken:
        """Mint a LITE session. Never retried: a retry could mint a second, orphaned session."""
        body = {
            "mode": "LITE",
            "avatar_id": avatar_id,
            "is_sandbox": is_sandbox,
            "video_settings": {"quality": video_quality, "encoding": video_encoding},
            "max_session_duration": max_session_duration,
        }
        # The sandbox classification applies only when the avatar is not the sandbox one.
        sandbox_mismatch = is_sandbox and avatar_id != SANDBOX_AVATAR_ID
        _, parsed = await self._post(
            "token", {"X-API-KEY": self._api_key}, body, sandbox=sandbox_mismatch
        )
        data = parsed.get("data") if isinstance(parsed, dict) else None
        sid = data.get("session_id") if isinstance(data, dict) else None
        token = data.get("session_token") if isinstance(data, dict) else None
        if not (isinstance(sid, str) and sid and isinstance(token, str) and token):
            raise LiveAvatarUnavailableError(
                "LiveAvatar token response lacks session_id/session_token"
            )
        return SessionToken(sid, token)

    async def start(self, session_token: str, session_id: str | None = None) -> StartInfo:
        """Start the session; one more try on a transient failure, none on a 4xx."""
        headers = {"Authorization": f"Bearer {session_token}"}
        body: dict[str, Any] = {"session_id": session_id} if session_id else {}
        try:
            _, parsed = await self._post("start", headers, body)
        except LiveAvatarUnavailableError as exc:
            log.info("liveavatar_start_retry", status=exc.status)
            await asyncio.sleep(self._backoff_s * (1 + random.random()))
            _, parsed = await self._post("start", headers, body)
        data = parsed.get("data") if isinstance(parsed, dict) else None
        if not isinstance(data, dict):
            raise LiveAvatarUnavailableError("LiveAvatar start response has no data")
        missing = [
            k
            for k in ("session_id", "ws_url", "livekit_url", "livekit_agent_token")
            if not (isinstance(data.get(k), str) and data.get(k))
        ]
        if missing:
            raise LiveAvatarRejectedError(
                f"LiveAvatar start response lacks {', '.join(missing)} (is the session LITE?)"
            )
        duration = data.get("max_session_duration")
        return StartInfo(
            session_id=data["session_id"],
            ws_url=data["ws_url"],
            livekit_url=data["livekit_url"],
            livekit_agent_token=data["livekit_agent_token"],
            max_session_duration=duration if isinstance(duration, int) else None,
        )

    async def stop(self, session_id: str, reason: str = "USER_CLOSED") -> bool:
        """Stop by id with the API key; retried until success or a definitive 4xx, for at most
        ``stop_timeout_s`` in all (attempts x request timeout + backoff would be over a minute
        against a service that does not answer, past any stop deadline of the daemon).

        Returns True when stopped. Raises the last :class:`LiveAvatarError` otherwise
        (``definitive`` tells whether the session is known to be gone or the call just failed).
        """
        try:
            async with asyncio.timeout(self._stop_timeout_s):
                return await self._stop(session_id, reason)
        except TimeoutError:
            raise LiveAvatarUnavailableError(
                f"LiveAvatar stop of {session_id} got no answer within {self._stop_timeout_s} s "
                "(liveavatar.stop_timeout_s)"
            ) from None

    async def _stop(self, session_id: str, reason: str) -> bool:
        body = {"session_id": session_id, "reason": reason}
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._post("stop", {"X-API-KEY": self._api_key}, body)
                log.info("liveavatar_stopped", session_id=session_id, reason=reason)
                return True
            except LiveAvatarError as exc:
                if exc.definitive or isinstance(exc, LiveAvatarAuthError):
                    raise
                if attempt >= self._stop_attempts:
                    raise
                delay = min(self._max_backoff_s, self._backoff_s * 2 ** (attempt - 1))
                # Full jitter: many sessions stopping at once must not retry in lockstep.
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
