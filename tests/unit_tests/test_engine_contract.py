"""The engine contract, checked the same way on every engine: the local one (the tiny random GPT-NeoX)
and the remote one (against the stub OpenAI-compatible server), plus the registry that picks them."""

from __future__ import annotations

import pytest

from langchain_fslm import AdapterError, FSLMChain, GenerationConfig, GenerationRequest, StageSpec
from langchain_fslm.engine import registry
from langchain_fslm.engine.base import Engine, EngineCapabilities
from langchain_fslm.engine.local import LocalEngine
from langchain_fslm.engine.registry import (
    capabilities_of,
    create_engine,
    kind_of,
    register_engine,
    remote_engine_from,
)
from langchain_fslm.engine.remote import RemoteEngine
from langchain_fslm.errors import FSLMError
from tests.stub_openai_server import StubOpenAIServer

BASE = "stub-base"


@pytest.fixture()
def stub():
    with StubOpenAIServer(models=[BASE, "intent"]) as server:
        yield server


@pytest.fixture(params=["local", "remote"])
def engine(request, stub):
    if request.param == "local":
        return request.getfixturevalue("tiny_engine")
    return RemoteEngine(stub.base_url, model=BASE)


GREEDY = GenerationConfig(max_new_tokens=6)


def test_every_engine_is_an_engine_with_a_kind_and_capabilities(engine):
    assert isinstance(engine, Engine)
    caps = engine.capabilities()
    assert isinstance(caps, EngineCapabilities)
    assert capabilities_of(engine) == caps and kind_of(engine) == engine.kind
    if isinstance(engine, LocalEngine):
        assert engine.kind == "local"
        assert caps == EngineCapabilities(
            loglikelihood=True,
            local_adapters=True,
            token_counts_exact=True,
            compile_decode=True,
            constrained=True,
        )
    else:
        assert engine.kind == "remote"
        assert caps == EngineCapabilities()  # none of the extras: the server holds weights and tokenizer
    with pytest.raises(AttributeError):
        caps.loglikelihood = True  # type: ignore[misc]  # frozen


def test_render_count_tokens_and_token_ids_agree(engine):
    prompt, system = "Name the colour of the sky.", "Be brief."
    plain, with_system = engine.render(prompt), engine.render(prompt, system)
    assert prompt in plain and prompt in with_system and system in with_system
    for text in (prompt, plain, with_system, ""):
        ids = engine.token_ids(text)
        assert all(isinstance(i, int) for i in ids)
        assert engine.count_tokens(text) == len(ids)
    assert engine.count_tokens(with_system) > engine.count_tokens(prompt)
    if engine.capabilities().token_counts_exact:  # what the model saw is what was counted
        (generation,) = engine.generate([GenerationRequest(prompt=prompt, system=system, config=GREEDY)])
        assert generation.prompt_tokens == engine.count_tokens(with_system)


@pytest.mark.parametrize("stop", [[], ["\n"]])
def test_greedy_stream_joins_to_the_generated_text(engine, stop):
    config = GREEDY.model_copy(update={"stop": stop})
    request = GenerationRequest(prompt="one two three", system="sys", config=config)
    (generation,) = engine.generate([request])
    assert "".join(engine.stream(request)) == generation.text
    assert generation.completion_tokens >= 1 and generation.finish_reason in ("stop", "length")
    twice = engine.generate([request, request])
    assert [g.text for g in twice] == [generation.text] * 2  # greedy: batching changes nothing


def test_adapters_load_save_and_release_by_use_count(engine, tiny_adapters, tmp_path):
    name = "contract-a"
    assert not engine.has_adapter(name)
    engine.load_adapter(name, tiny_adapters["a"])
    engine.load_adapter(name, tiny_adapters["a"])  # the same folder again: one more user
    try:
        assert engine.has_adapter(name)
        engine.save_adapter(name, tmp_path / "saved")
        assert (tmp_path / "saved" / "adapter_config.json").is_file()
        assert (tmp_path / "saved" / "adapter_model.safetensors").is_file()
        engine.release_adapter(name)
        assert engine.has_adapter(name)  # the other load still uses it
    finally:
        engine.release_adapter(name)
    assert not engine.has_adapter(name)
    with pytest.raises(AdapterError, match=name):
        engine.release_adapter(name)
    with pytest.raises(AdapterError, match=name):
        engine.save_adapter(name, tmp_path / "again")


def test_model_name_names_the_base_model_and_the_adapter(engine, tiny_model_dir):
    if isinstance(engine, LocalEngine):
        assert engine.model_name(None) == str(tiny_model_dir)
        assert engine.model_name("intent") == f"{tiny_model_dir}+intent"
    else:  # the served model names
        assert engine.model_name(None) == BASE
        assert engine.model_name("intent") == "intent"


def test_unsupported_extras_raise_clear_errors(engine):
    pairs = [("The sky is", " blue")]
    if engine.capabilities().loglikelihood:
        ((logprob, greedy, n),) = engine.loglikelihood(pairs)
        assert logprob < 0 and isinstance(greedy, bool) and n >= 1
    else:
        with pytest.raises(FSLMError, match=f"{type(engine).__name__} cannot score"):
            engine.loglikelihood(pairs)
    if not engine.capabilities().compile_decode:
        with pytest.raises(ValueError, match=type(engine).__name__):
            engine.enable_compile_decode()


def test_a_duck_typed_engine_is_an_engine_without_the_extras():
    class Duck:
        def generate(self, requests):
            return []

        def stream(self, request):
            yield ""

        def has_adapter(self, name):
            return False

    class NotOne:
        def generate(self, requests):
            return []

    class Wrapper:  # forwards everything to an inner engine, as the evaluation tests' wrapper does
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

    assert isinstance(Duck(), Engine) and not isinstance(NotOne(), Engine)
    assert issubclass(Duck, Engine) and isinstance(Wrapper(Duck()), Engine)
    assert not isinstance(Wrapper(NotOne()), Engine)
    assert kind_of(Duck()) == "local" and capabilities_of(Duck()) == EngineCapabilities()
    with pytest.raises(TypeError):
        Engine()  # type: ignore[abstract]


# ----------------------------------------------------------------------------- registry
def test_the_registry_picks_the_engine_of_a_kind(tiny_model_dir, tiny_engine, stub):
    assert create_engine("local", str(tiny_model_dir)) is tiny_engine  # shared per base model
    remote = create_engine("remote", settings={"base_url": stub.base_url, "model": BASE})
    assert isinstance(remote, RemoteEngine) and remote.base_url == stub.base_url
    assert remote_engine_from(remote) is remote
    assert isinstance(remote_engine_from(stub.base_url), RemoteEngine)
    assert {"local", "remote"} <= set(registry.engine_kinds())
    with pytest.raises(ValueError, match="No engine kind 'nope'"):
        create_engine("nope")
    with pytest.raises(ValueError, match="registered already"):
        register_engine("local", lambda ref, settings: tiny_engine)


def test_a_registered_kind_runs_the_stages_that_name_it(tiny_engine, monkeypatch):
    made = []

    def factory(ref, settings):
        made.append((ref, settings))
        return tiny_engine

    monkeypatch.setitem(registry._FACTORIES, "tiny", factory)  # undone after the test
    spec = StageSpec(name="answer", prompt="Answer: {input}", generation=GenerationConfig(max_new_tokens=3))
    stack = FSLMChain.from_specs([spec], backend="tiny", remote="settings")  # type: ignore[arg-type]
    assert stack.stages[0].engine is tiny_engine and len(made) == 1
    assert isinstance(stack.invoke("hi"), str)


def test_from_specs_picks_engines_by_backend(tiny_engine, tiny_adapters, stub):
    specs = [
        StageSpec(name="intent", prompt="{input}", adapter="a", backend="remote"),
        StageSpec(name="answer", prompt="{intent}", adapter="b"),
    ]
    stack = FSLMChain.from_specs(
        specs, engine=tiny_engine, remote=stub.base_url, adapter_root=tiny_adapters["a"].parent
    )
    try:
        remote, local = (s.engine for s in stack.stages)
        assert kind_of(remote) == "remote" and local is tiny_engine
        assert stack.stages[0].adapter == "intent"  # served under the stage's name
        assert stack.stages[1].adapter != "answer" and tiny_engine.has_adapter(stack.stages[1].adapter)
        assert [s.backend for s in stack.to_manifest().stages] == ["remote", "local"]
    finally:
        stack.release()
    assert not tiny_engine.has_adapter(stack.stages[1].adapter)  # local loads are released
    assert remote.has_adapter("intent")  # a server's registration is not: it serves its own copy
