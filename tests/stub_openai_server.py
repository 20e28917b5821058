"""A tiny OpenAI-compatible HTTP server for plumbing tests of the remote engine.

It records every request body, serves ``/v1/models``, ``/v1/chat/completions`` (plain and SSE streaming)
and ``/v1/completions``, answers 404 for models it does not serve, and can be told to fail, be slow, or
refuse long prompts (vLLM's context-length HTTP 400).
Its replies are not model output: they echo the model name and the prompt, so tests can check routing.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class StubOpenAIServer:
    """Start with ``with StubOpenAIServer(models=[...]) as stub: stub.base_url``."""

    def __init__(self, models: list[str]) -> None:
        self.models = list(models)
        self.requests: list[dict[str, Any]] = []
        self.fail_next = 0  # answer this many requests with HTTP 500 first
        self.delay_s = 0.0  # sleep before answering
        self.max_prompt_words: int | None = None  # longer prompts get vLLM's context-length HTTP 400
        self.refuse_field: str | None = None  # a request with this body field gets an HTTP 400
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> StubOpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @staticmethod
    def reply_for(model: str, prompt: str) -> str:
        return f"{model} read {len(prompt.split())} words\nsecond line"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/").endswith("/models"):
                    data = [
                        {"id": m, "object": "model", "created": 0, "owned_by": "stub"} for m in stub.models
                    ]
                    self._json(200, {"object": "list", "data": data})
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.requests.append({"path": self.path, "body": body})
                    failing = stub.fail_next > 0
                    if failing:
                        stub.fail_next -= 1
                if stub.delay_s:
                    time.sleep(stub.delay_s)
                if failing:
                    self._json(500, {"error": {"message": "stub overloaded"}}, {"retry-after-ms": "1"})
                    return
                model = body.get("model")
                if model not in stub.models:
                    self._json(404, {"error": {"message": f"The model `{model}` does not exist."}})
                    return
                if stub.refuse_field is not None and stub.refuse_field in body:
                    message = f"{stub.refuse_field}: grammar could not be compiled"
                    self._json(400, {"object": "error", "message": message, "type": "BadRequestError"})
                    return
                chat = self.path.endswith("/chat/completions")
                prompt = body["messages"][-1]["content"] if chat else body["prompt"]
                prompt = prompt[0] if isinstance(prompt, list) else prompt
                if stub.max_prompt_words is not None and len(prompt.split()) > stub.max_prompt_words:
                    message = (
                        f"This model's maximum context length is {stub.max_prompt_words} tokens. However, "
                        f"you requested {len(prompt.split())} tokens. Please reduce the messages."
                    )
                    self._json(400, {"object": "error", "message": message, "type": "BadRequestError"})
                    return
                text = stub.reply_for(model, prompt)
                usage = {
                    "prompt_tokens": len(prompt.split()),
                    "completion_tokens": len(text.split()),
                    "total_tokens": len(prompt.split()) + len(text.split()),
                }
                if chat and body.get("stream"):
                    self._stream(model, text)
                    return
                if chat:
                    choice = {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                    kind = "chat.completion"
                else:
                    choice = {"index": 0, "text": text, "finish_reason": "length", "logprobs": None}
                    kind = "text_completion"
                self._json(
                    200,
                    {
                        "id": "x",
                        "object": kind,
                        "created": 0,
                        "model": model,
                        "choices": [choice],
                        "usage": usage,
                    },
                )

            def _stream(self, model: str, text: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
                for piece in pieces:
                    chunk = {
                        "id": "x",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": model,
                        "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                    }
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                last = {  # real servers end with a finish_reason; a stream without one was cut
                    "id": "x",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                }
                self.wfile.write(f"data: {json.dumps(last)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        return Handler
