"""The HTTP transport of the remote engine: an overall deadline per request, retries and waits included.

httpx's timeouts bound each network operation (connect, one read), not a request: a server that
trickles its reply a byte at a time, or streams only SSE keep-alive comments, never trips them, and the
openai client's retries multiply whatever one attempt takes. :class:`DeadlineTransport` wraps httpx's
own transport and gives every request one wall-clock deadline, carried by a private header (removed
before the request leaves) so that the openai client's retries share it:

- before each attempt, and before each chunk of the reply is read, a passed deadline ends the request
  (:class:`DeadlineExceeded`, which the openai client does not retry);
- each attempt's connect / read timeouts are cut to the time left;
- a 429 / 503 whose ``Retry-After`` asks for more than the time left ends the request at once
  (:class:`RetryAfterTooLong`) instead of sleeping past the deadline.

Imported only when a request is sent (openai and httpx2 come with the ``remote`` extra).
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import openai

DEADLINE_HEADER = "x-fslm-deadline"
"""The private header carrying a request's deadline (``time.monotonic()`` seconds) and its whole budget."""

_RETRIED_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


class DeadlineExceeded(openai.OpenAIError):
    """A request ran past its overall deadline (the openai client re-raises it without retrying).

    Attributes:
        deadline_s: The request's whole budget in seconds.
        received: Bytes of the last reply received before the deadline (0: no reply began).
        attempts: Attempts sent, the first included.
    """

    def __init__(self, deadline_s: float, received: int, attempts: int) -> None:
        self.deadline_s = deadline_s
        self.received = received
        self.attempts = attempts
        super().__init__(f"deadline of {deadline_s:g}s exceeded")


class RetryAfterTooLong(openai.OpenAIError):
    """A 429 / 503 asked to retry later than the request's deadline allows.

    Attributes:
        status: The HTTP status.
        retry_after: Seconds the server asked to wait.
        left: Seconds left before the deadline.
    """

    def __init__(self, status: int, retry_after: float, left: float) -> None:
        self.status = status
        self.retry_after = retry_after
        self.left = left
        super().__init__(f"HTTP {status}, Retry-After {retry_after:g}s")


def retry_after(headers: Any) -> float | None:
    """Seconds a reply's ``Retry-After`` (or ``retry-after-ms``) asks to wait, None when it names none."""
    for header, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            delay = float(value)
        except ValueError:
            continue
        return delay / divisor if math.isfinite(delay) else math.inf
    value = headers.get("retry-after")
    if value:
        try:
            parsed = email.utils.parsedate_tz(value)
            if parsed is not None:
                return float(email.utils.mktime_tz(parsed) - time.time())
        except (TypeError, ValueError, OverflowError):
            return None
    return None


def deadline_header(budget_s: float) -> dict[str, str]:
    """The header that gives a request ``budget_s`` seconds from now (pass as ``extra_headers``)."""
    return {DEADLINE_HEADER: f"{time.monotonic() + budget_s!r} {budget_s!r}"}


class _DeadlineStream(httpx2.SyncByteStream):
    """A reply body that stops at the deadline (between chunks, and when a read times out near it)."""

    def __init__(self, inner: Any, deadline: float, budget: float, attempts: int) -> None:
        self._inner = inner
        self._deadline = deadline
        self._budget = budget
        self._attempts = attempts

    def __iter__(self) -> Iterator[bytes]:
        received = 0
        chunks = iter(self._inner)
        while True:
            if time.monotonic() >= self._deadline:
                raise DeadlineExceeded(self._budget, received, self._attempts)
            try:
                chunk = next(chunks)
            except StopIteration:
                return
            except httpx2.TimeoutException as err:
                if time.monotonic() >= self._deadline - 0.05:
                    raise DeadlineExceeded(self._budget, received, self._attempts) from err
                raise
            received += len(chunk)
            yield chunk

    def close(self) -> None:
        """Close the underlying stream."""
        if hasattr(self._inner, "close"):
            self._inner.close()


class DeadlineTransport(httpx2.BaseTransport):
    """httpx's transport, bounded by the deadline each request carries in :data:`DEADLINE_HEADER`.

    Args:
        inner: The transport that sends (``httpx2.HTTPTransport()``).
        budget_s: The budget of a request sent without the header (e.g. the model listing).
    """

    def __init__(self, inner: httpx2.BaseTransport, budget_s: float) -> None:
        self._inner = inner
        self._budget = budget_s
        self._starts: dict[float, tuple[float, int]] = {}  # deadline -> (budget, attempts so far)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        """Send one attempt of a request, within what is left of its deadline."""
        now = time.monotonic()
        raw = request.headers.pop(DEADLINE_HEADER, None)
        try:
            deadline, budget = (float(v) for v in raw.split()) if raw else (now + self._budget, self._budget)
        except ValueError:
            deadline, budget = now + self._budget, self._budget
        _, attempts = self._starts.get(deadline, (budget, 0))
        attempts += 1
        if len(self._starts) > 1024:  # forget old requests (one entry per request, a few bytes each)
            self._starts.clear()
        self._starts[deadline] = (budget, attempts)
        left = deadline - now
        if left <= 0:
            raise DeadlineExceeded(budget, 0, attempts - 1)
        timeouts = dict(request.extensions.get("timeout") or {})
        for key in ("connect", "read", "write", "pool"):
            value = timeouts.get(key)
            timeouts[key] = left if value is None else min(value, left)
        request.extensions = {**request.extensions, "timeout": timeouts}
        try:
            response = self._inner.handle_request(request)
        except httpx2.TimeoutException as err:
            if time.monotonic() >= deadline - 0.05:
                raise DeadlineExceeded(budget, 0, attempts) from err
            raise
        if response.status_code in _RETRIED_STATUSES:
            wait = retry_after(response.headers)
            left = deadline - time.monotonic()
            if wait is not None and wait > left:
                response.close()
                raise RetryAfterTooLong(response.status_code, wait, max(left, 0.0))
        response.stream = _DeadlineStream(response.stream, deadline, budget, attempts)
        return response

    def close(self) -> None:
        """Close the inner transport (its connections)."""
        self._inner.close()


def http_client(timeout: float, budget_s: float) -> Any:
    """The openai client's httpx client (its defaults: limits, redirects) on a :class:`DeadlineTransport`."""
    return openai.DefaultHttpxClient(
        timeout=timeout, transport=DeadlineTransport(httpx2.HTTPTransport(), budget_s)
    )


def body_errors() -> tuple[type[BaseException], ...]:
    """The httpx errors a reply body can raise while it is read (a connection closed mid-reply)."""
    import sys

    legacy = sys.modules.get("httpx")
    return (httpx2.HTTPError,) if legacy is None else (httpx2.HTTPError, legacy.HTTPError)
