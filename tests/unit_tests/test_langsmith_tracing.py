"""LangSmith tracing, offline: the LangSmith client posts to a stub HTTP server started here, and the test
checks what arrived (one run for the chain, one child run per stage, the handoff events)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_fslm import FSLMChain
from langchain_fslm.roles import four_stage_specs

STAGES = ["intent", "key_points", "draft", "answer"]


class Stub(BaseHTTPRequestHandler):
    """Answers like the LangSmith API: ``/info`` asks for the JSON batch endpoint; posts are kept."""

    received: list[tuple[str, dict]] = []

    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        config = {"use_multipart_endpoint": False, "size_limit": 100, "size_limit_bytes": None}
        config.update(scale_up_nthreads_limit=1, scale_up_qsize_trigger=1000, scale_down_nempty_trigger=4)
        self._reply({"version": "0.0.0", "batch_ingest_config": config})

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((self.path, json.loads(body or b"{}")))
        self._reply({})

    do_PATCH = do_POST

    def log_message(self, *args):
        pass


@pytest.fixture()
def langsmith_stub(monkeypatch):
    from langsmith import run_trees
    from langsmith import utils as ls_utils

    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Stub.received = []
    monkeypatch.setenv("LANGSMITH_TRACING", "true")
    monkeypatch.setenv("LANGSMITH_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("LANGSMITH_API_KEY", "dummy-key-for-the-stub")  # sent, never checked
    monkeypatch.setenv("LANGSMITH_PROJECT", "fslm-test")
    monkeypatch.setattr(run_trees, "_CLIENT", None)
    ls_utils.get_env_var.cache_clear()
    ls_utils.get_tracer_project.cache_clear()
    yield Stub.received
    server.shutdown()
    monkeypatch.setattr(run_trees, "_CLIENT", None)
    ls_utils.get_env_var.cache_clear()
    ls_utils.get_tracer_project.cache_clear()


def test_trace_has_chain_run_stage_runs_and_handoffs(langsmith_stub, tiny_engine):
    from langchain_core.tracers.langchain import get_client, wait_for_all_tracers

    stack = FSLMChain.from_specs(four_stage_specs(max_new_tokens=4), engine=tiny_engine, name="tiny-stack")
    chain = ChatPromptTemplate.from_template("Answer briefly: {q}") | stack | StrOutputParser()
    answer = chain.invoke({"q": "Why is the sky blue?"})
    wait_for_all_tracers()
    get_client().flush()

    runs: dict[str, dict] = {}
    for path, body in langsmith_stub:
        assert path.endswith("/runs/batch"), path
        for run in [*body.get("post", []), *body.get("patch", [])]:
            runs.setdefault(run["id"], {}).update({k: v for k, v in run.items() if v is not None})
    roots = [r for r in runs.values() if not r.get("parent_run_id")]
    assert len(roots) == 1 and roots[0]["outputs"]["output"] == answer
    by_name = {r["name"]: r for r in runs.values()}
    stack_run = by_name["tiny-stack"]
    assert stack_run["parent_run_id"] == roots[0]["id"]
    children = [r for r in runs.values() if r.get("parent_run_id") == stack_run["id"]]
    stage_runs = [r for r in children if r["name"] in STAGES]
    assert sorted(r["name"] for r in stage_runs) == sorted(STAGES)
    for run in stage_runs:
        handoffs = [e["kwargs"] for e in run.get("events", []) if e["name"] == "fslm_handoff"]
        assert len(handoffs) == 1 and handoffs[0]["from_stage"] == run["name"]
        assert handoffs[0]["stack"] == "tiny-stack" and handoffs[0]["completion_tokens"] > 0
    to_stages = {r["name"]: e["kwargs"]["to_stage"] for r in stage_runs for e in r["events"] if "kwargs" in e}
    assert to_stages == {"intent": "key_points", "key_points": "draft", "draft": "answer", "answer": "output"}

    # each stage's generation is one LLM run under the stage's run, with its prompt, completion, usage
    def descendants(run_id: str) -> list[dict]:
        kids = [r for r in runs.values() if r.get("parent_run_id") == run_id]
        return kids + [d for k in kids for d in descendants(k["id"])]

    for run in stage_runs:
        llm_runs = [r for r in descendants(run["id"]) if r.get("run_type") == "llm"]
        assert len(llm_runs) == 1, run["name"]
        (llm,) = llm_runs
        handoff = next(e["kwargs"] for e in run["events"] if e["name"] == "fslm_handoff")
        message = llm["outputs"]["generations"][0][0]["message"]["kwargs"]
        assert message["usage_metadata"]["output_tokens"] == handoff["completion_tokens"]
        assert message["usage_metadata"]["input_tokens"] == handoff["prompt_tokens"] > 0
        assert message["content"] == handoff["raw"]
        assert "Why is the sky blue?" in json.dumps(llm["inputs"])
        assert llm["extra"]["metadata"]["ls_model_name"] == str(tiny_engine.base_ref.source)


def test_streamed_chat_reply_is_one_trace_with_the_stage_runs(langsmith_stub, tiny_engine):
    """ChatFSLM.stream, traced from the environment alone: the stack's runs sit under the chat run."""
    from langchain_core.tracers.langchain import get_client, wait_for_all_tracers

    from langchain_fslm import ChatFSLM

    stack = FSLMChain.from_specs(four_stage_specs(max_new_tokens=4), engine=tiny_engine, name="tiny-stack")
    text = "".join(str(chunk.content) for chunk in ChatFSLM(stack=stack).stream("Why is the sky blue?"))
    wait_for_all_tracers()
    get_client().flush()

    runs: dict[str, dict] = {}
    for _, body in langsmith_stub:
        for run in [*body.get("post", []), *body.get("patch", [])]:
            runs.setdefault(run["id"], {}).update({k: v for k, v in run.items() if v is not None})
    roots = [r for r in runs.values() if not r.get("parent_run_id")]
    assert len(roots) == 1 and roots[0]["run_type"] == "llm"
    assert text and text in json.dumps(roots[0]["outputs"])
    stack_run = next(r for r in runs.values() if r["name"] == "tiny-stack")
    assert stack_run["parent_run_id"] == roots[0]["id"]
    assert {r["name"] for r in runs.values() if r.get("parent_run_id") == stack_run["id"]} >= set(STAGES)
