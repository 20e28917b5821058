"""A stack whose stages call a real OpenAI-compatible server: llama.cpp's, serving the SmolLM2 GGUF on CPU.

Needs ``llama-cpp-python[server]`` (the ``llamacpp`` extra; it compiles from source, so plain CI may
not have it): skipped with the reason when it is absent.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from langchain_fslm import FSLMChain, GenerationConfig, HandoffLogger, PromptTooLongError, StageSpec
from langchain_fslm.engine.remote import RemoteEngine
from langchain_fslm.models import shared_dir
from langchain_fslm.roles import default_stage_specs

pytestmark = pytest.mark.slow

GGUF = "models/smollm2-135m-instruct-gguf/SmolLM2-135M-Instruct.Q4_1.gguf"
ALIAS = "smollm2-135m-instruct"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def llamacpp_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("uvicorn") is None:
        pytest.skip("llama-cpp-python[server] is not installed (pip install 'langchain-fslm[llamacpp]')")
    model = shared_dir() / GGUF
    if not model.is_file():
        pytest.skip(f"SmolLM2 GGUF not found at {model} (set FSLM_SHARED_DIR)")
    port = _free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", ALIAS]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"]
    log = tmp_path_factory.mktemp("llamacpp") / "server.log"  # a pipe would fill up and block the server
    with log.open("w") as sink:
        server = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"llama.cpp server exited: {log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("llama.cpp server did not come up within 120 s")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_default_stack_runs_every_stage_on_the_llamacpp_server(llamacpp_url, tmp_path):
    engine = RemoteEngine(llamacpp_url, timeout=300, max_retries=0, server="llamacpp")
    assert engine.served_models() == [ALIAS]
    stack = FSLMChain.from_specs(
        default_stage_specs(max_new_tokens=24), backend="remote", remote=engine, include_handoffs=True
    )
    assert all(s.engine is engine for s in stack.stages)
    logger = HandoffLogger(tmp_path / "handoffs.jsonl")
    out = stack.invoke("Why is the sky blue?", config={"callbacks": [logger]})

    assert [r["from_stage"] for r in logger.records] == ["intent", "key_points", "draft", "answer"]
    assert out.output.strip() and out.output == out.results[-1].text
    for result in out.results:
        # the server counted the chat-templated prompt and generated within the budget
        assert result.prompt_tokens > 20 and 0 < result.completion_tokens <= 24
    assert "\n" not in out.results[0].raw  # the intent stage's stop sequence was applied

    again = stack.invoke("Why is the sky blue?")  # greedy decoding on the server is deterministic
    assert again.output == out.output

    pieces = list(stack.stream("Name one fruit."))
    assert len(pieces) > 1 and "".join(pieces).strip()


def test_a_prompt_too_long_for_the_server_fails_only_its_row(llamacpp_url):
    spec = StageSpec(name="draft", prompt="{input}", generation=GenerationConfig(max_new_tokens=4))
    remote = {"base_url": llamacpp_url, "server": "llamacpp", "timeout": 300, "max_retries": 0}
    stack = FSLMChain.from_specs([spec], backend="remote", remote=remote)
    outs = stack.batch(["Hi.", "word " * 2100, "Name a fruit."], return_exceptions=True)
    assert isinstance(outs[1], PromptTooLongError), outs[1]  # n_ctx is 2048
    assert "Stage 'draft'" in str(outs[1]) and "maximum context length is 2048" in str(outs[1])
    assert isinstance(outs[0], str) and isinstance(outs[2], str)
