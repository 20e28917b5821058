"""A stack whose stages call a real OpenAI-compatible server: llama.cpp's own (the xllamacpp wheel, started by
``fslm serve`` in a process of its own), serving the SmolLM2 GGUF with one LoRA adapter per stage.

The remote engine picks each stage's adapter per request (llama.cpp's ``lora`` field); its greedy texts
equal the in-process llama.cpp engine's on the same stack, and differ from the base model's.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from langchain_fslm import FSLMChain, GenerationConfig, PromptTooLongError, StageSpec
from langchain_fslm.engine.remote import RemoteEngine
from langchain_fslm.errors import AdapterError
from tests.llamacpp_helpers import random_adapter

pytestmark = pytest.mark.slow

PROMPTS = ["Why is the sky blue?", "Name a fruit.", "How do I boil an egg?"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _specs(adapters: bool) -> list[StageSpec]:
    budget = {"max_new_tokens": 12}
    return [
        StageSpec(
            name="intent",
            prompt="Say what is asked: {input}",
            adapter="intent" if adapters else None,
            generation=budget,
        ),
        StageSpec(
            name="answer",
            prompt="{input}\n{intent}",
            adapter="answer" if adapters else None,
            generation=budget,
        ),
    ]


@pytest.fixture(scope="module")
def stack_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served-adapters")
    random_adapter(root / "intent", seed=1)
    random_adapter(root / "answer", seed=2)
    stack = FSLMChain.from_specs(_specs(adapters=True), engine="llamacpp", adapter_root=root)
    try:
        return stack.save_pretrained(tmp_path_factory.mktemp("served") / "stack")
    finally:
        stack.release()


@pytest.fixture(scope="module")
def server_url(stack_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "langchain_fslm.cli", "serve", str(stack_folder), "--port", str(port)]
    cmd += ["--threads", "1", "--parallel", "2"]
    log = tmp_path_factory.mktemp("llamacpp") / "server.log"  # a pipe would fill up and block the server
    with log.open("w") as sink:
        server = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                pytest.fail(f"fslm serve exited: {log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"fslm serve did not come up within 180 s: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _remote(url: str) -> dict[str, object]:
    return {"base_url": url, "server": "llamacpp", "timeout": 300, "max_retries": 0}


def test_the_served_stack_answers_like_the_in_process_engine(stack_folder, server_url):
    local = FSLMChain.from_pretrained(stack_folder, engine="llamacpp", include_handoffs=True)
    remote = FSLMChain.from_pretrained(
        stack_folder, backend="remote", remote=_remote(server_url), include_handoffs=True
    )
    bare = FSLMChain.from_specs(_specs(adapters=False), engine="llamacpp", include_handoffs=True)
    try:
        assert all(isinstance(s.engine, RemoteEngine) for s in remote.stages)
        here, there, base = local.batch(PROMPTS), remote.batch(PROMPTS), bare.batch(PROMPTS)
        for a, b in zip(here, there, strict=True):
            assert [r.text for r in a.results] == [r.text for r in b.results]  # greedy: the same texts
            assert all(0 < r.completion_tokens <= 12 for r in b.results)
        # the adapters were applied per request: the base model writes other texts
        assert [r.results[0].text for r in there] != [r.results[0].text for r in base]
        plain = FSLMChain.from_pretrained(stack_folder, backend="remote", remote=_remote(server_url))
        pieces = list(plain.stream(PROMPTS[1]))
        assert len(pieces) > 1
        assert "".join(pieces) == there[1].output
    finally:
        local.release()
        bare.release()


def test_an_adapter_the_server_does_not_serve_is_named(stack_folder, server_url):
    remote = {**_remote(server_url), "adapter_models": {"intent": "summary"}}
    stack = FSLMChain.from_pretrained(stack_folder, backend="remote", remote=remote)
    with pytest.raises(AdapterError, match=r"serves no LoRA file named summary\.gguf.*'answer', 'intent'"):
        stack.invoke(PROMPTS[0])


def test_a_prompt_too_long_for_the_server_fails_only_its_row(server_url):
    spec = StageSpec(name="draft", prompt="{input}", generation=GenerationConfig(max_new_tokens=4))
    stack = FSLMChain.from_specs([spec], backend="remote", remote=_remote(server_url))
    outs = stack.batch(["Hi.", "word " * 2100, "Name a fruit."], return_exceptions=True)
    assert isinstance(outs[1], PromptTooLongError), outs[1]  # each slot holds 2048 tokens
    assert "draft" in str(outs[1])
    assert isinstance(outs[0], str) and isinstance(outs[2], str)
