"""SmallLM: a small model on an engine as a LangChain chat model, whose calls are LLM runs with usage."""

from __future__ import annotations

from langchain_core.callbacks import get_usage_metadata_callback
from langchain_core.messages import HumanMessage, SystemMessage

from langchain_fslm.engine.base import GenerationConfig
from langchain_fslm.small_lm import SmallLM


def test_invoke_reports_usage_and_model_name(tiny_engine) -> None:
    llm = SmallLM(engine=tiny_engine, generation=GenerationConfig(max_new_tokens=4))
    with get_usage_metadata_callback() as cb:
        reply = llm.invoke([SystemMessage(content="Be brief."), HumanMessage(content="Name a fruit.")])
    usage = reply.usage_metadata
    assert usage is not None and usage["input_tokens"] > 0 and 0 < usage["output_tokens"] <= 4
    (name,) = cb.usage_metadata
    assert name == reply.response_metadata["model_name"]
    assert cb.usage_metadata[name]["input_tokens"] == usage["input_tokens"]
    assert llm._get_ls_params()["ls_model_name"] == name


def test_stream_joins_to_invoke_and_counts_tokens(tiny_engine) -> None:
    llm = SmallLM(engine=tiny_engine, generation=GenerationConfig(max_new_tokens=6))
    whole = llm.invoke("Tell me a fact.")
    chunks = list(llm.stream("Tell me a fact."))
    assert "".join(c.text for c in chunks) == whole.text
    last = chunks[-1].usage_metadata
    assert last is not None and last["input_tokens"] == whole.usage_metadata["input_tokens"]


def test_token_ids_use_the_engine_tokenizer(tiny_engine) -> None:
    llm = SmallLM(engine=tiny_engine)
    assert llm.get_token_ids("hello world") == tiny_engine.token_ids("hello world")
    assert llm.get_num_tokens("hello world") == tiny_engine.count_tokens("hello world")


def test_call_settings_override_generation(tiny_engine) -> None:
    llm = SmallLM(engine=tiny_engine, generation=GenerationConfig(max_new_tokens=8, stop=["x"]))
    request = llm.request([HumanMessage(content="hi")], stop=["y"], max_tokens=2, temperature=0.5)
    assert request.config.max_new_tokens == 2 and request.config.temperature == 0.5
    assert request.config.stop == ["x", "y"]
    assert llm.generation.max_new_tokens == 8
