"""The core's contract with LangChain: usage, model names, token counting, and the framework used, not
overridden (issue 22's measurable part, kept from regressing)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from langchain_core.callbacks import get_usage_metadata_callback
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, trim_messages

from langchain_fslm import ChatFSLM, FSLMChain, SLMRunnable
from langchain_fslm.roles import four_stage_specs

PACKAGE = Path(__file__).resolve().parents[2] / "langchain_fslm"
RUNNABLE_METHODS = {"invoke", "ainvoke", "batch", "abatch", "stream", "astream", "transform", "atransform"}
PRIVATE_HELPERS = (
    "_call_with_config",
    "_acall_with_config",
    "_batch_with_config",
    "_abatch_with_config",
    "_transform_stream_with_config",
    "_atransform_stream_with_config",
)


@pytest.fixture()
def stack(tiny_engine) -> FSLMChain:
    return FSLMChain.from_specs(four_stage_specs(max_new_tokens=4), engine=tiny_engine, name="tiny-stack")


def test_usage_callback_counts_every_stage(stack, tiny_engine):
    with get_usage_metadata_callback() as cb:
        out = stack.with_handoffs().invoke("Why is the sky blue?")
    (model, usage) = next(iter(cb.usage_metadata.items()))  # every stage runs on the one base model
    assert len(cb.usage_metadata) == 1 and model == str(tiny_engine.base_ref.source)
    assert usage["input_tokens"] == sum(r.prompt_tokens for r in out.results) > 0
    assert usage["output_tokens"] == sum(r.completion_tokens for r in out.results) > 0
    assert all(r.prompt_tokens > 0 and r.completion_tokens > 0 for r in out.results)


def test_usage_callback_counts_a_streamed_stack(stack):
    with get_usage_metadata_callback() as cb:
        text = "".join(stack.stream("Why is the sky blue?"))
    assert text
    (usage,) = cb.usage_metadata.values()
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0


def test_model_names_name_the_base_model(stack, tiny_engine):
    base = str(tiny_engine.base_ref.source)
    chat = ChatFSLM(stack=stack)
    assert chat._get_ls_params()["ls_model_name"] == base
    assert stack.stages[0].lm._get_ls_params()["ls_model_name"] == base
    message = chat.invoke("Why?")
    assert message.response_metadata["model_name"] == base


def test_chat_counts_tokens_with_the_engine_tokenizer(stack, tiny_engine):
    chat = ChatFSLM(stack=stack)
    text = "The quick brown fox jumps over the lazy dog."
    assert chat.get_token_ids(text) == list(tiny_engine.token_ids(text))
    assert chat.get_num_tokens(text) == len(tiny_engine.token_ids(text)) > 0


def test_trim_messages_trims_a_long_history_with_the_chat_as_counter(stack):
    chat = ChatFSLM(stack=stack)
    history = [SystemMessage("You answer briefly.")]
    for i in range(30):
        history += [HumanMessage(f"Question {i}: what is {i} plus {i}?"), AIMessage(f"It is {2 * i}.")]
    history.append(HumanMessage("And what is 3 plus 4?"))
    budget = 60
    trimmed = trim_messages(
        history, max_tokens=budget, token_counter=chat, strategy="last", include_system=True
    )
    assert 2 < len(trimmed) < len(history)
    assert trimmed[0] == history[0] and trimmed[-1] == history[-1]
    assert chat.get_num_tokens_from_messages(trimmed) <= budget < chat.get_num_tokens_from_messages(history)


def test_a_stage_is_prompt_lm_parser_in_lcel(tiny_engine):
    from langchain_fslm.stage_parser import StageParser

    stage = SLMRunnable(name="intent", prompt="Request: {input}", engine=tiny_engine)
    assert stage.lm.adapter is None and stage.lm.stage == "intent"
    assert stage.chat_prompt.input_variables == ["input"]
    reply = (stage.chat_prompt | stage.lm).invoke({"input": "Why is the sky blue?"})
    assert isinstance(reply, AIMessage) and reply.usage_metadata["output_tokens"] > 0
    parsed = StageParser(stage="intent", output_type=stage.output_type).invoke(reply)
    assert parsed == stage.invoke("Why is the sky blue?").model_copy(update={"latency_s": parsed.latency_s})


def _python_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _runnable_classes() -> list[type]:
    import importlib
    import inspect
    import pkgutil

    from langchain_core.runnables import Runnable

    import langchain_fslm

    classes = []
    for info in pkgutil.walk_packages(langchain_fslm.__path__, "langchain_fslm."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional extra that is not installed
            continue
        classes += [
            c
            for _, c in inspect.getmembers(module, inspect.isclass)
            if c.__module__ == info.name and issubclass(c, Runnable)
        ]
    return classes


def test_the_framework_is_used_not_overridden():
    overrides = sorted(
        f"{c.__name__}.{m}" for c in _runnable_classes() for m in RUNNABLE_METHODS if m in vars(c)
    )
    assert len(overrides) <= 3, overrides
    calls = [f"{p.name}: {h}" for p in _python_files() for h in PRIVATE_HELPERS if h in p.read_text()]
    assert calls == []


def test_modules_and_classes_stay_small():
    big_modules = [f"{p.name}: {n}" for p in _python_files() if (n := len(p.read_text().splitlines())) > 400]
    assert big_modules == []
    big_classes = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 250:
                big_classes.append(f"{path.name}:{node.name}")
    assert big_classes == []


def test_no_engine_class_checks_outside_the_registry():
    """Callers ask an engine's capabilities; only the registry may look at classes."""
    engine_classes = {"Engine", "LocalEngine", "RemoteEngine"}
    checks = []
    for path in _python_files():
        if path.name == "registry.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) == 2):
                continue
            target = ast.unparse(node.args[1])
            if node.func.id == "isinstance" and any(c in target.split(".")[-1] for c in engine_classes):
                checks.append(f"{path.name}:{node.lineno}")
            if node.func.id == "hasattr" and "engine" in ast.unparse(node.args[0]):
                checks.append(f"{path.name}:{node.lineno}")
    assert checks == []


def test_policies_are_set_with_ordinary_arguments(stack):
    lenient = stack.with_stage("intent", parse_retries=0, on_parse_error="pass_raw").with_handoffs()
    assert lenient.stages[0].spec.on_parse_error == "pass_raw" and lenient.stages[0].parse_retries == 0
    strict = stack.with_stage("intent", on_parse_error="raise")
    assert strict.stages[0].spec.on_parse_error == "raise"
    assert stack.stages[0].spec.on_parse_error == "pass_raw"  # the original (the default's) is unchanged
    assert isinstance(lenient.invoke("Why?"), type(stack.with_handoffs().invoke("Why?")))
    with pytest.raises(ValueError, match="no stage 'nope'"):
        stack.with_stage("nope", parse_retries=2)
    with pytest.raises(ValueError, match=r"no stage 'nope'; its stages are \['intent'"):
        stack.with_generation("nope", max_new_tokens=3)  # was "'nope' is not in list" (issue 27)
