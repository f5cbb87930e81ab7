"""One bounded Messages API call, shared by the teacher and the judge.

The SDK retries 408 / 409 / 429 / 5xx / connection failures ``max_retries`` times, but two
things it does not bound: it sleeps as long as a ``retry-after`` header asks (an hour, a
day), and its ``timeout`` applies to each read, so a server that trickles its body never
times out. :func:`build_client` adds a middleware that bounds each attempt and caps the
honoured wait, and :func:`create_message` puts a deadline on the whole call, retries
included, as a last guard.

What comes back is the reply's own JSON (the wire body, not a re-serialised model), checked
to be a Message; everything else is an :class:`ApiCallError` with a countable ``reason``
(``billed`` when a 200 could not be read), or an :class:`ApiFatalError` when every further
request would fail the same way (bad key, no permission, no credit, unknown model).
:mod:`~llava_lite.claude.paying` builds on this to pay for one reply. Error texts never carry the server's body
verbatim: a misbehaving server may echo the API key.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

import anthropic
import httpx2

from llava_lite.claude.prices import Usage

log = logging.getLogger(__name__)

# Errors that will fail every request the same way: stop the run instead of counting them.
FATAL_ERRORS = (
    anthropic.AuthenticationError,
    anthropic.PermissionDeniedError,
    anthropic.PaymentRequiredError,
    anthropic.NotFoundError,
)
_USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)
_SECRET = re.compile(r"sk-ant-[A-Za-z0-9_\-]+")


class ApiCallError(Exception):
    """A call that produced no usable reply; ``reason`` is counted by the caller.

    ``billed``: the server answered 200, so the request was most likely billed although the
    body cannot be read (not JSON, not a Message); the caller charges its worst case.
    """

    def __init__(self, reason: str, detail: str = "", billed: bool = False) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.billed = billed


class ApiFatalError(ValueError):
    """Every further request would fail the same way: the API refuses this client (401 / 402 /
    403 / 404), the model is retired or unknown, or the API cannot be reached. Stop, keep
    finished work. A ``ValueError``: the fix is in the settings, key or network, so console
    commands report it in one line (``reason: message``) and exit non-zero."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class RetryBounds(anthropic.Middleware):
    """Bounds each attempt inside the SDK's retry loop.

    An attempt that has not delivered its whole reply after ``attempt_s`` of wall clock is a
    timeout the SDK retries like its own (its ``timeout`` bounds each read, not the reply).
    A ``retry-after`` longer than ``max_wait_s`` (the SDK would sleep weeks if asked) is
    rewritten to ``max_wait_s``.
    """

    def __init__(self, attempt_s: float, max_wait_s: float) -> None:
        self.attempt_s = attempt_s
        self.max_wait_s = max_wait_s

    async def handle_async(self, request: Any, call_next: Any) -> Any:
        try:
            async with asyncio.timeout(self.attempt_s):
                response = await call_next(request)
        except TimeoutError:
            options = request.options
            raise anthropic.APITimeoutError(httpx2.Request(options.method, options.url)) from None
        headers = response.http_response.headers
        wait = retry_after_s(headers)
        if wait is not None and wait > self.max_wait_s:
            log.warning("server asked to wait %.0fs before a retry; capped at %.0fs", wait, self.max_wait_s)
            headers.pop("retry-after", None)
            headers["retry-after-ms"] = str(int(self.max_wait_s * 1000))
        return response


class RetryOnlyUnprocessed(anthropic.Middleware):
    """For a request that must not run twice (creating a batch bills every request in it):
    the SDK may retry only when the server says it did not take the request (429, 529).

    After a lost connection or a 5xx the request may have been processed; that surfaces at
    once as an error instead of a second submission.
    """

    async def handle_async(self, request: Any, call_next: Any) -> Any:
        try:
            response = await call_next(request)
        except anthropic.APIConnectionError:
            raise ApiCallError("api_connection", "no reply; the request may have been processed") from None
        if not response.http_response.is_success and response.http_response.status_code not in (429, 529):
            response.http_response.headers["x-should-retry"] = "false"
        return response


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The wait the SDK will honour: ``retry-after-ms`` if it is a number, else ``retry-after``
    as seconds or as an HTTP date; None when neither parses."""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            return float(headers[name]) * scale
        except (KeyError, ValueError):
            pass
    parsed = email.utils.parsedate_tz(headers.get("retry-after") or "")
    return None if parsed is None else email.utils.mktime_tz(parsed) - time.time()


class RedactSecrets(logging.Filter):
    """Redacts API keys from the log records of the SDK and its HTTP stack: at DEBUG they print
    response headers, which a misbehaving server may fill with the key it was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()  # keys of clients built here (other formats than sk-ant-)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = _SECRET.sub("[redacted]", message)
        for secret in self.secrets:
            clean = clean.replace(secret, "[redacted]")
        if clean != message:
            record.msg, record.args = clean, None
        return True


_REDACT = RedactSecrets()
_HTTP_LOGGERS = ("anthropic", "httpx2", "httpcore2")


def _redact_http_logs(secret: str | None) -> None:
    """Put :data:`_REDACT` on every logger of the SDK and its HTTP stack (a filter on a parent
    logger does not see its children's records)."""
    if secret:
        _REDACT.secrets.add(secret)
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in _HTTP_LOGGERS]
    for name in {*names, *_HTTP_LOGGERS, "httpcore2.http11", "httpcore2.connection"}:
        logger = logging.getLogger(name)
        if _REDACT not in logger.filters:
            logger.addFilter(_REDACT)


def build_client(
    *, max_retries: int, timeout_s: float, max_retry_wait_s: float, **client_kwargs: Any
) -> anthropic.AsyncAnthropic:
    """``AsyncAnthropic`` with the SDK's retries and :class:`RetryBounds`; ``client_kwargs``
    (``api_key``, ``base_url``) are passed through, or the SDK reads its environment. The key
    is redacted from the SDK's and HTTP stack's logs."""
    client = anthropic.AsyncAnthropic(
        max_retries=max_retries,
        timeout=timeout_s,
        middleware=[RetryBounds(timeout_s, max_retry_wait_s)],
        **client_kwargs,
    )
    _redact_http_logs(client.api_key)
    return client


def call_deadline_s(max_retries: int, timeout_s: float, max_retry_wait_s: float) -> float:
    """A wall-clock bound on one call: every attempt at its timeout plus every capped wait.

    Raises ``ValueError`` for limits that bound nothing (checked when a teacher or judge is built).
    """
    if max_retries < 0 or timeout_s <= 0 or max_retry_wait_s < 0:
        raise ValueError(
            f"need max_retries >= 0, timeout_s > 0, max_retry_wait_s >= 0; "
            f"got {max_retries}, {timeout_s}, {max_retry_wait_s}"
        )
    return (max_retries + 1) * timeout_s + max_retries * max_retry_wait_s + 1.0


async def create_message(
    client: anthropic.AsyncAnthropic, body: Mapping[str, Any], deadline_s: float
) -> dict[str, Any]:
    """POST ``body`` to /v1/messages; the reply's JSON, or ``ApiCallError`` / ``ApiFatalError``."""
    try:
        async with asyncio.timeout(deadline_s):
            raw = await client.messages.with_raw_response.create(**body)
            text = raw.http_response.text
    except TimeoutError:
        raise ApiCallError("api_deadline", f"no complete reply within {deadline_s:g}s") from None
    except FATAL_ERRORS as e:
        raise ApiFatalError(f"api_status_{e.status_code}", describe_error(e, client)) from None
    except anthropic.APIStatusError as e:
        raise ApiCallError(f"api_status_{e.status_code}", type(e).__name__) from None
    except anthropic.APITimeoutError:
        raise ApiCallError("api_timeout", "every attempt timed out") from None
    except anthropic.APIConnectionError:
        raise ApiCallError("api_connection", "connection failed or closed early") from None
    except anthropic.APIError as e:
        raise ApiCallError("api_bad_response", type(e).__name__) from None
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python parses
        raise ApiCallError(
            "api_bad_response", f"a 200 whose body is not JSON ({len(text)} chars)", billed=True
        ) from None
    problem = message_problem(message)
    if problem:
        raise ApiCallError("api_bad_response", problem, billed=True)
    return message


def message_problem(message: Any) -> str | None:
    """Why ``message`` is not a Messages API reply we can read, or None."""
    if not isinstance(message, dict) or message.get("type") != "message":
        return "reply is not a Message"
    content = message.get("content")
    if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
        return "reply content is not a list of blocks"
    return None


def usage_from_message(message: Mapping[str, Any]) -> Usage | None:
    """Billed tokens, or None when the reply does not report them (missing, null, not counts).

    Cache fields may be absent (no prompt caching); input and output counts must be there.
    """
    u = message.get("usage")
    if not isinstance(u, dict):
        return None
    counts = {}
    for name in _USAGE_FIELDS:
        value = u.get(name)
        if value is None and name.startswith("cache_"):
            value = 0
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return None
        counts[name] = value
    return Usage(**counts)


def describe_error(error: anthropic.APIStatusError, client: anthropic.AsyncAnthropic) -> str:
    """Status, error type and the server's message with anything key-like redacted."""
    body = error.body if isinstance(error.body, dict) else {}
    detail = body.get("error") if isinstance(body.get("error"), dict) else {}
    kind = str(detail.get("type") or type(error).__name__)
    text = str(detail.get("message") or "")[:300]
    if client.api_key:
        text = text.replace(client.api_key, "[redacted]")
    text = _SECRET.sub("[redacted]", text)
    return f"HTTP {error.status_code} {kind}" + (f": {text}" if text else "")
