"""Remote engine against servers that misbehave: malformed replies, wrong base URLs, cut streams.

A tiny configurable server (not the shared stub) answers each POST with whatever the test sets.
"""

from __future__ import annotations

import json
import shlex
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from langchain_fslm import AdapterError, FSLMChain, GenerationConfig, GenerationRequest, StageSpec
from langchain_fslm.engine.remote import RemoteEngine, RemoteEngineError
from langchain_fslm.export_vllm import LoraModule, VllmPlan


class Server:
    def __init__(self) -> None:
        self.body = b""  # raw reply to a POST
        self.status = 200
        self.events: list[dict] = []  # SSE events for a streamed reply
        self.routes = "/v1"
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, data: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if self.path == f"{server.routes}/models":
                    self._send(200, json.dumps({"object": "list", "data": [{"id": "base"}]}).encode())
                else:
                    self._send(404, b'{"detail": "Not Found"}')

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self.path.startswith(f"{server.routes}/"):
                    self._send(404, b'{"detail": "Not Found"}')
                elif body.get("stream"):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    for event in server.events:
                        self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                    self.close_connection = True
                else:
                    self._send(server.status, server.body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.root = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture()
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def chat_chunk(text: str | None, finish: str | None = None) -> dict:
    delta = {} if text is None else {"content": text}
    return {
        "id": "x",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "base",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def text_chunk(text: str, finish: str | None = None) -> dict:
    choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
    return {"id": "x", "object": "text_completion", "created": 0, "model": "base", "choices": [choice]}


@pytest.mark.parametrize("api", ["chat", "completions"])
@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "x", "object": "chat.completion", "created": 0, "model": "base", "choices": []}',
        b'{"id": "x", "choices": [{"inde',  # truncated JSON
        b"<html>502 Bad Gateway</html>",
    ],
)
def test_a_malformed_reply_is_a_remote_engine_error_naming_the_url(server, api, body):
    server.body = body
    engine = RemoteEngine(f"{server.root}/v1", model="base", api=api, max_retries=0)
    with pytest.raises(RemoteEngineError, match="not an OpenAI-compatible completion") as err:
        engine.generate([GenerationRequest(prompt="hi")])
    assert server.root in str(err.value)


@pytest.mark.parametrize("url", ["{root}", "{root}/"])
def test_a_base_url_without_v1_says_so_instead_of_blaming_the_adapter(server, url):
    engine = RemoteEngine(url.format(root=server.root), model="base", max_retries=0)
    for adapter in ("intent", None):
        with pytest.raises(RemoteEngineError, match=r"404.*/v1") as err:
            engine.generate([GenerationRequest(prompt="hi", adapter=adapter)])
        assert not isinstance(err.value, AdapterError)


def test_an_unserved_model_lists_what_the_server_serves(server):
    server.status = 404  # vLLM's answer for an unknown model name
    server.body = b'{"object": "error", "message": "The model `draft` does not exist.", "code": 404}'
    engine = RemoteEngine(f"{server.root}/v1", model="base", max_retries=0)
    with pytest.raises(AdapterError, match=r"does not serve model 'draft' \(it serves \['base'\]\)"):
        engine.generate([GenerationRequest(prompt="hi", adapter="draft")])


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_stream_holds_back_a_stop_split_across_chunks(server, api):
    chunk = chat_chunk if api == "chat" else text_chunk
    server.events = [chunk("Hello wor"), chunk("ld\n"), chunk("\nmore"), chunk("", "stop")]
    engine = RemoteEngine(f"{server.root}/v1", model="base", api=api, max_retries=0)
    request = GenerationRequest(prompt="hi", config=GenerationConfig(stop=["\n\n"]))
    pieces = list(engine.stream(request))
    assert "".join(pieces) == "Hello world" and all(pieces)
    server.events = [chunk("A"), chunk("B<|e"), chunk("nd|>C"), chunk("", "stop")]
    request = GenerationRequest(prompt="hi", config=GenerationConfig(stop=["<|end|>"]))
    assert "".join(engine.stream(request)) == "AB"
    server.events = [chunk("no "), chunk("stop <|"), chunk("", "length")]
    assert "".join(engine.stream(request)) == "no stop <|"  # held-back text is flushed at the end


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_a_stream_cut_before_its_finish_reason_raises(server, api):
    chunk = chat_chunk if api == "chat" else text_chunk
    server.events = [chunk("half an "), chunk("answ")]  # then [DONE], no finish_reason
    engine = RemoteEngine(f"{server.root}/v1", model="base", api=api, max_retries=0)
    with pytest.raises(RemoteEngineError, match="ended without a finish_reason"):
        list(engine.stream(GenerationRequest(prompt="hi")))


def _adapter(folder: Path, tag: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA", "tag": tag}))
    (folder / "adapter_model.safetensors").write_bytes(tag.encode())
    return folder


def test_two_stacks_cannot_share_one_served_name_with_different_adapters(tmp_path):
    _adapter(tmp_path / "a" / "intent", "A")
    _adapter(tmp_path / "b" / "intent", "B")
    _adapter(tmp_path / "copy" / "intent", "A")
    engine = RemoteEngine("http://127.0.0.1:9/v1", model="base")
    specs = [StageSpec(name="intent", prompt="I: {input}", adapter="intent")]
    FSLMChain.from_specs(specs, backend="remote", remote=engine, adapter_root=tmp_path / "a")
    FSLMChain.from_specs(specs, backend="remote", remote=engine, adapter_root=tmp_path / "copy")  # same bytes
    with pytest.raises(AdapterError, match=r"already serves model 'intent'"):
        FSLMChain.from_specs(specs, backend="remote", remote=engine, adapter_root=tmp_path / "b")


def test_export_uses_vllms_json_form_for_paths_it_cannot_split():
    modules = [
        LoraModule(stage="intent", path="/runs/lr=1e-4/stack/adapters/intent", rank=8, target_modules=[]),
        LoraModule(stage="draft", path="/runs/a,b/stack/adapters/draft", rank=8, target_modules=[]),
        LoraModule(stage="answer", path="/data/stack/adapters/answer", rank=8, target_modules=[]),
    ]
    command = VllmPlan(base="org/model", modules=modules, base_stages=[]).command()
    items = command[command.index("--lora-modules") + 1 : command.index("--max-lora-rank")]
    parsed = []
    for item in items:  # vLLM's LoRAParserAction
        if "=" in item and "," not in item:
            name, path = item.split("=")
            parsed.append({"name": name, "path": path})
        else:
            parsed.append(json.loads(item))
    assert parsed == [{"name": m.stage, "path": m.path} for m in modules]
    assert shlex.split(shlex.join(command)) == command


def test_export_hint_calls_the_address_vllm_binds():
    plan = VllmPlan(base="org/model", modules=[], base_stages=["answer"], host="10.1.2.3", port=9000)
    assert plan.base_url() == "http://10.1.2.3:9000/v1"
    assert VllmPlan(base="m", modules=[], base_stages=[]).base_url() == "http://127.0.0.1:8000/v1"


def test_a_chat_reply_whose_content_is_a_list_of_parts_is_its_text(server):
    """Issue 26, class 5: some servers send content as parts; the text was the list's repr."""
    parts = [{"type": "text", "text": "Paris is "}, {"type": "text", "text": "the capital."}]
    message = {"role": "assistant", "content": parts}
    server.body = json.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "base",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        }
    ).encode()
    engine = RemoteEngine(f"{server.root}/v1", model="base", api="chat", max_retries=0)
    (generation,) = engine.generate([GenerationRequest(prompt="hi")])
    assert generation.text == "Paris is the capital."
