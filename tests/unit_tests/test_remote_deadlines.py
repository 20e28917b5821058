"""Remote requests are bounded by one deadline, whatever the server does (issue 26, class 5).

Each server on 127.0.0.1 misbehaves in one way: trickles its reply a byte at a time, streams only SSE
keep-alive comments, rate limits with a long ``Retry-After``, redirects in a loop, or closes the
connection mid-reply. Every test checks the error says what happened and that the call ended within
its deadline (plus one read timeout and a margin), where it used to take up to 50 s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread

import pytest

from langchain_fslm import GenerationConfig, GenerationRequest
from langchain_fslm.engine.remote import (
    RemoteEngine,
    RemoteEngineError,
    RemoteSettings,
    ServerRateLimitedError,
    ServerTimeoutError,
)

MODEL = "m"
REPLY = json.dumps(
    {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()
MARGIN = 1.5  # seconds: thread start-up, client set-up, a loaded CI machine


def _serve(behaviour: Callable[[BaseHTTPRequestHandler], None]):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.server.posts += 1  # type: ignore[attr-defined]
            try:
                behaviour(self)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up: what the tests want

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.posts = 0  # type: ignore[attr-defined]
    Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture()
def serve():
    servers = []

    def start(behaviour):
        server = _serve(behaviour)
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _trickle(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(REPLY)))
    h.end_headers()
    for byte in REPLY[:40]:  # 0.3 s a byte: never a read timeout, 12 s for these 40 bytes
        h.wfile.write(bytes([byte]))
        h.wfile.flush()
        time.sleep(0.3)


def _keepalives(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "text/event-stream")
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    for _ in range(40):
        line = b": keep-alive\n\n"
        h.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
        h.wfile.flush()
        time.sleep(0.3)


def _request(**config) -> GenerationRequest:
    return GenerationRequest(prompt="hi", config=GenerationConfig(max_new_tokens=8, **config))


def test_a_trickling_server_ends_at_the_deadline_as_slow_not_unreachable(serve):
    _, url = serve(_trickle)
    engine = RemoteEngine(url, model=MODEL, timeout=1, max_retries=1)  # deadline 1 x 2 = 2 s
    start = time.monotonic()
    with pytest.raises(ServerTimeoutError, match=r"was still sending its reply.*deadline of 2s") as err:
        engine.generate([_request()])
    assert time.monotonic() - start < 2 + 1 + MARGIN
    assert "Is it running" not in str(err.value) and "bytes received" in str(err.value)


def test_an_explicit_deadline_bounds_a_request_below_timeout_times_retries(serve):
    server, url = serve(_trickle)
    engine = RemoteEngine(RemoteSettings(base_url=url, model=MODEL, timeout=5, max_retries=3, deadline=1.2))
    start = time.monotonic()
    with pytest.raises(ServerTimeoutError, match=r"deadline of 1.2s"):
        engine.generate([_request()])
    assert time.monotonic() - start < 1.2 + MARGIN
    assert server.posts == 1  # the deadline is the request's, not one attempt's: no retry after it


def test_a_stream_of_keepalives_only_ends_at_the_deadline(serve):
    _, url = serve(_keepalives)
    engine = RemoteEngine(url, model=MODEL, timeout=1, max_retries=1)
    start = time.monotonic()
    with pytest.raises(ServerTimeoutError, match=r"still sending.*keep-alives"):
        list(engine.stream(_request()))
    assert time.monotonic() - start < 2 + 1 + MARGIN


def _rate_limited(wait: str) -> Callable[[BaseHTTPRequestHandler], None]:
    def behaviour(h: BaseHTTPRequestHandler) -> None:
        body = b'{"error": {"message": "slow down"}}'
        h.send_response(429)
        h.send_header("Retry-After", wait)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return behaviour


def test_a_retry_after_beyond_the_deadline_fails_at_once_naming_it(serve):
    server, url = serve(_rate_limited("8"))
    engine = RemoteEngine(url, model=MODEL, timeout=1, max_retries=2)
    start = time.monotonic()
    with pytest.raises(ServerRateLimitedError, match=r"rate limiting.*HTTP 429.*retry after 8s") as err:
        engine.generate([_request()])
    assert time.monotonic() - start < MARGIN  # was 8.1 s: a sleep past the deadline, then a retry
    assert err.value.retry_after == 8 and server.posts == 1


def test_a_short_retry_after_is_honoured_and_then_named(serve):
    server, url = serve(_rate_limited("0.3"))
    engine = RemoteEngine(url, model=MODEL, timeout=2, max_retries=2)
    start = time.monotonic()
    with pytest.raises(
        ServerRateLimitedError, match=r"HTTP 429, asking to retry after 0.3s\) after 2 retries"
    ):
        engine.generate([_request()])
    assert 0.6 <= time.monotonic() - start < 0.6 + MARGIN and server.posts == 3


def test_a_redirect_loop_is_named_as_one(serve):
    def loop(h: BaseHTTPRequestHandler) -> None:
        h.send_response(307)
        h.send_header("Location", h.path)
        h.send_header("Content-Length", "0")
        h.end_headers()

    _, url = serve(loop)
    engine = RemoteEngine(url, model=MODEL, timeout=1, max_retries=1)
    start = time.monotonic()
    with pytest.raises(RemoteEngineError, match=r"redirected the request too many times \(a redirect loop\)"):
        engine.generate([_request()])
    assert time.monotonic() - start < 2 + MARGIN


def _cut(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(REPLY)))
    h.end_headers()
    h.wfile.write(REPLY[:20])
    h.wfile.flush()
    h.close_connection = True
    h.connection.close()


def test_a_connection_closed_mid_reply_says_so(serve):
    server, url = serve(_cut)
    engine = RemoteEngine(url, model=MODEL, timeout=1, max_retries=1)
    start = time.monotonic()
    with pytest.raises(RemoteEngineError, match=r"closed the connection in the middle of its reply") as err:
        engine.generate([_request()])
    assert "Is it running" not in str(err.value)
    assert time.monotonic() - start < 2 + MARGIN and server.posts == 2


def test_a_stream_whose_connection_breaks_mid_chunk_says_so(serve):
    def broken(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        event = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": MODEL}
        event["choices"] = [{"index": 0, "delta": {"content": "hel"}, "finish_reason": None}]
        line = b"data: " + json.dumps(event).encode() + b"\n\n"
        h.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
        h.wfile.write(b"40\r\ndata: {")  # a chunk announced as 64 bytes, cut after 7
        h.wfile.flush()
        h.close_connection = True
        h.connection.close()

    _, url = serve(broken)
    engine = RemoteEngine(url, model=MODEL, timeout=1, max_retries=0)
    start = time.monotonic()
    with pytest.raises(RemoteEngineError, match=r"closed the connection in the middle of its reply"):
        list(engine.stream(_request()))
    assert time.monotonic() - start < 1 + MARGIN
