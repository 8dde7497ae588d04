"""Log redaction: configured secrets and token-like strings never reach the output."""

from __future__ import annotations

import io
import json
import logging

import structlog

from bridge import logs


def capture(secrets: list[str]) -> tuple[io.StringIO, structlog.stdlib.BoundLogger]:
    out = io.StringIO()
    logs.REDACTOR.add(secrets)
    logs.configure("DEBUG", "json", stream=out)
    return out, logs.get_logger("test")


def test_secrets_are_redacted_in_fields_messages_and_tracebacks() -> None:
    out, log = capture(["canary-secret-1234"])
    log.info("calling with canary-secret-1234 inside", url="https://x/?k=canary-secret-1234")
    log.info("headers", headers={"X-API-KEY": "anything", "Accept": "json"}, api_key="visible?")
    try:
        raise RuntimeError("failed with canary-secret-1234")
    except RuntimeError:
        log.exception("boom")
    logging.getLogger("aiohttp.client").warning("stdlib says canary-secret-1234")
    text = out.getvalue()
    assert "canary-secret-1234" not in text
    assert "visible?" not in text and "anything" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[1]["headers"]["Accept"] == "json"
    assert any("RuntimeError" in json.dumps(line) for line in lines)
    assert len(lines) == 4


def test_jwts_and_bearer_tokens_in_text_are_redacted() -> None:
    out, log = capture([])
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJoZXlnZW4ifQ.c2lnbmF0dXJlc2lnbmF0dXJl"
    log.info(f"joining wss://lk/rtc?access_token={jwt}", auth="Bearer abc.def")
    log.info("header was Authorization: Bearer s3cr3t-token-value")
    text = out.getvalue()
    assert jwt not in text
    assert "s3cr3t-token-value" not in text


def test_session_context_is_attached() -> None:
    out, log = capture([])
    structlog.contextvars.bind_contextvars(session_id="abc123")
    try:
        log.info("hello")
    finally:
        structlog.contextvars.clear_contextvars()
    assert json.loads(out.getvalue().splitlines()[0])["session_id"] == "abc123"
