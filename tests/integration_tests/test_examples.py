"""The examples, end to end on the real models (small budgets)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rag_retrieves_from_the_docs_and_logs_handoffs(smollm2_engine, tmp_path, capsys):
    rag = load("rag")
    docs = rag.load_documents()
    assert len(docs) > 5 and {d.metadata["source"] for d in docs} >= {"concepts.md", "stack.md"}
    store = rag.InMemoryVectorStore.from_documents(docs, rag.embeddings())
    hits = store.similarity_search("stack folder format: manifest and peft adapters, safetensors", k=3)
    assert "concepts.md" in {d.metadata["source"] for d in hits}
    log = tmp_path / "handoffs.jsonl"
    answer = rag.main("What does a stack save to its folder?", max_new_tokens=3, handoff_log=str(log), k=1)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["from_stage"] for r in records] == ["intent", "answer"]
    assert answer.strip() and records[-1]["text"] == answer
    assert (
        "Context:" in records[0]["raw"] or records[0]["prompt_tokens"] > 100
    )  # the context reached the stack


def test_compare_runs_the_stack_and_the_bare_base_model(smollm2_engine, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    rows = load("compare_llms").main("Why is the sky blue?", max_new_tokens=3)
    assert [r["model"] for r in rows] == ["fslm-stack", "base-model"]
    assert all(r["answer"].strip() and r["latency_s"] > 0 for r in rows)
    assert len(rows[0]["handoffs"]) == 2 and rows[1]["handoffs"] == []
    out = capsys.readouterr().out
    assert "skipping the API model" in out and "== base-model" in out


def test_agent_runs_the_stack_in_a_react_loop(smollm2_engine):
    agent = load("agent")
    result = agent.main("What is the weather in Paris?", max_new_tokens=2, call_tokens=40)
    types = [m.type for m in result["messages"]]
    assert types[0] == "human" and types[-1] == "ai" and result["answer"].strip()
    if smollm2_engine.capabilities().constrained:  # the first turn must call a tool, then answer in text
        assert types == ["human", "ai", "tool", "ai"] and result["tool_calls"] == 1
        call = result["messages"][1].tool_calls[0]
        tools = {t.name: t for t in agent.TOOLS}
        tools[call["name"]].args_schema.model_validate(call["args"])  # the arguments fit the tool
    else:  # unconstrained, the first turn is auto: the 135M model answers in prose
        assert types == ["human", "ai"]
