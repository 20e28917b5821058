"""Fast paths of the local engine give the same text as the slow ones: mixed-adapter batches, the
micro-batcher, and the context-length policy."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from langchain_fslm import FSLMChain, GenerationConfig, GenerationRequest, PromptTooLongError, SLMRunnable
from langchain_fslm.engine.batcher import MicroBatcher
from langchain_fslm.errors import PromptTruncatedWarning

if TYPE_CHECKING:
    from langchain_fslm.engine.local import LocalEngine

PROMPTS = ["Why is the sky blue?", "Give me a tip.", "What is 2+2?", "Name a fruit.", "Hi"]


@pytest.fixture(scope="module")
def adapted(tiny_engine, tiny_adapters):
    names = {}
    for key, path in tiny_adapters.items():
        names[key] = f"fast-{key}"
        tiny_engine.load_adapter(names[key], path)
    return tiny_engine, names


def test_mixed_adapter_batch_equals_per_row(adapted):
    engine, names = adapted
    config = GenerationConfig(max_new_tokens=8)
    requests = [
        GenerationRequest(prompt=p, adapter=a, config=config)
        for p in PROMPTS
        for a in [None, *names.values()]
    ]
    batched = engine.generate(requests)
    per_row = [engine.generate([r])[0] for r in requests]
    assert [g.text for g in batched] == [g.text for g in per_row]
    by_adapter = {r.adapter: g.text for r, g in zip(requests[:5], batched[:5], strict=True)}
    assert len(set(by_adapter.values())) > 1  # the adapters really change the output


def test_batcher_merges_waiting_callers_into_one_generate(adapted):
    engine, names = adapted
    config = GenerationConfig(max_new_tokens=6)
    requests = [
        GenerationRequest(prompt=p, adapter=names["abcd"[i % 4]], config=config)
        for i, p in enumerate(PROMPTS)
    ]
    direct = [engine.generate([r])[0].text for r in requests]
    assert engine.batcher is not None
    results: dict[int, str] = {}

    def call(i: int) -> None:
        results[i] = engine.generate([requests[i]])[0].text

    with engine.lock:  # hold the model: every caller queues up, then one leader runs them all
        calls_before = engine.batcher.calls
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(engine.batcher._pending) < len(requests) and time.monotonic() < deadline:
            time.sleep(0.005)
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "deadlock"
    assert engine.batcher.calls - calls_before == 1
    assert [results[i] for i in range(len(requests))] == direct


def test_batcher_isolates_a_failing_job():
    def run(items: list[int]) -> list[int]:
        if any(i < 0 for i in items):
            raise ValueError("negative")
        return [i * 2 for i in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(run, window_s=0)
    ok = batcher.submit([1, 2])
    assert ok == [2, 4]
    jobs = [batcher._take()]  # nothing waiting
    assert jobs == [[]]
    from langchain_fslm.engine.batcher import _Job

    good, bad = _Job([3]), _Job([-1])
    batcher._run([good, bad])  # merged call fails -> each job alone
    assert good.results == [6] and good.error is None
    assert isinstance(bad.error, ValueError)
    with pytest.raises(ValueError, match="window_s"):
        MicroBatcher(run, window_s=-1)


def test_batcher_keeps_collecting_while_callers_arrive():
    """Callers spread over more than one window, each within a window of the last, share one call."""
    import threading
    import time

    sizes: list[int] = []

    def run(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return [i + 1 for i in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(run, window_s=0.03, max_wait_s=2.0)
    results: dict[int, list[int]] = {}

    def call(i: int) -> None:
        results[i] = batcher.submit([i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:  # arrivals 10 ms apart: 50 ms in all, more than one 30 ms window
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join()
    assert results == {i: [i + 1] for i in range(6)}
    assert sizes == [6]


def test_sampled_requests_bypass_the_batcher_and_stay_reproducible(adapted):
    engine, names = adapted
    config = GenerationConfig(max_new_tokens=8, temperature=0.9, seed=7)
    request = GenerationRequest(prompt="Tell a story", adapter=names["a"], config=config)
    assert engine.generate([request])[0].text == engine.generate([request])[0].text


def test_unbatched_engine_gives_the_same_text(tiny_model_dir, adapted):
    from transformers import AutoTokenizer

    from langchain_fslm.engine.local import LocalEngine

    engine, _ = adapted
    plain = LocalEngine(engine.model, AutoTokenizer.from_pretrained(tiny_model_dir), batch_window_ms=None)
    assert plain.batcher is None
    request = GenerationRequest(prompt="Hello", config=GenerationConfig(max_new_tokens=6))
    assert plain.generate([request])[0].text == engine.generate([request])[0].text


def test_a_batch_larger_than_max_batch_size_runs_in_chunks_with_the_same_text(tiny_model_dir, adapted):
    from transformers import AutoTokenizer

    from langchain_fslm.engine.local import LocalEngine

    engine, names = adapted
    small = LocalEngine(engine.model, AutoTokenizer.from_pretrained(tiny_model_dir), max_batch_size=2)
    config = GenerationConfig(max_new_tokens=6)
    requests = [GenerationRequest(prompt=p, adapter=names["a"], config=config) for p in PROMPTS]
    rows: list[int] = []
    generate = engine.model.generate

    def counting(*args, **kwargs):
        rows.append(len(kwargs["input_ids"]))
        return generate(*args, **kwargs)

    engine.model.generate = counting
    try:
        chunked = small.generate(requests)
    finally:
        del engine.model.generate
    assert rows == [2, 2, 1]
    assert [g.text for g in chunked] == [g.text for g in engine.generate(requests)]
    with pytest.raises(ValueError, match="max_batch_size"):
        LocalEngine(engine.model, small.tokenizer, max_batch_size=0)


def long_prompt(engine, n_tokens: int) -> str:
    text = " ".join(f"w{i}" for i in range(n_tokens))
    assert engine.count_tokens(text) >= n_tokens
    return text


def test_too_long_prompt_raises_naming_the_stage(tiny_engine):
    stage = SLMRunnable(
        name="draft", prompt="{input}", engine=tiny_engine, generation=GenerationConfig(max_new_tokens=16)
    )
    prompt = long_prompt(tiny_engine, tiny_engine.context_length)
    with pytest.raises(PromptTooLongError, match=r"Stage 'draft'.*at most 240.*truncate_left"):
        stage.invoke(prompt)
    with pytest.raises(PromptTooLongError, match="Stage 'draft'"):
        list(stage.stream(prompt))


def test_too_long_prompt_is_reported_once_by_us_not_by_transformers(tiny_engine, tiny_model_dir, capfd):
    from transformers import AutoTokenizer

    from langchain_fslm.engine.local import LocalEngine

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, model_max_length=tiny_engine.context_length)
    engine = LocalEngine(tiny_engine.model, tokenizer, batch_window_ms=None)
    prompt = long_prompt(engine, engine.context_length)
    capfd.readouterr()
    with pytest.raises(PromptTooLongError):
        engine.generate([GenerationRequest(prompt=prompt, config=GenerationConfig(max_new_tokens=4))])
    assert "Token indices sequence length" not in capfd.readouterr().err


def test_a_too_long_row_fails_only_itself_in_a_batch(tiny_engine):
    stage = SLMRunnable(
        name="draft", prompt="{input}", engine=tiny_engine, generation=GenerationConfig(max_new_tokens=4)
    )
    prompt = long_prompt(tiny_engine, tiny_engine.context_length)
    outs = stage.batch(["one", prompt, "two"], return_exceptions=True)
    assert isinstance(outs[1], PromptTooLongError) and "Stage 'draft'" in str(outs[1])
    assert [o.raw for o in (outs[0], outs[2])] == [stage.invoke("one").raw, stage.invoke("two").raw]


def test_truncate_left_keeps_the_end_and_warns(tiny_engine):
    config = GenerationConfig(max_new_tokens=16, on_too_long="truncate_left")
    prompt = long_prompt(tiny_engine, 400) + " THE END"
    request = GenerationRequest(prompt=prompt, config=config)
    with pytest.warns(PromptTruncatedWarning, match="truncated from the left"):
        fitted = tiny_engine.fit(request)
    assert fitted.endswith("THE END")
    assert tiny_engine.count_tokens(fitted) <= tiny_engine.context_length - 16
    stage = SLMRunnable(name="s", prompt="{input}", engine=tiny_engine, generation=config)
    with pytest.warns(PromptTruncatedWarning):
        result = stage.invoke(prompt)
    assert result.completion_tokens > 0
    with pytest.warns(PromptTruncatedWarning):
        assert "".join(stage.stream(prompt)) == result.raw


def test_truncate_left_policy_survives_a_save(tiny_engine, tmp_path):
    from langchain_fslm import StageSpec

    spec = StageSpec(name="s", prompt="{input}", generation=GenerationConfig(on_too_long="truncate_left"))
    folder = FSLMChain.from_specs([spec], engine=tiny_engine).save_pretrained(tmp_path / "s")
    again = FSLMChain.from_pretrained(folder, engine=tiny_engine)
    assert again.stages[0].generation.on_too_long == "truncate_left"


def own_engine(model_dir: Path, adapters: dict[str, Path], compile_decode: bool = False) -> LocalEngine:
    """An engine with a model of its own (not the shared ``tiny_engine``), with ``adapters`` loaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from langchain_fslm.engine.local import LocalEngine

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    engine = LocalEngine(model, AutoTokenizer.from_pretrained(model_dir), compile_decode=compile_decode)
    for name, path in adapters.items():
        engine.load_adapter(name, path)
    return engine


def test_compiled_cache_sizes_are_few_powers_of_two_within_the_context():
    from langchain_fslm.engine.compiled import cache_len

    assert [cache_len(n, 8192) for n in (1, 512, 513, 1500, 5000)] == [512, 512, 1024, 2048, 8192]
    assert cache_len(200, 256) == 256  # never past the model's context length


def test_compiled_decode_gives_the_eager_text_and_restores_the_base_weights(tiny_model_dir, tiny_adapters):
    import torch
    import torch._dynamo

    from langchain_fslm.engine.compiled import CompiledDecode

    eager = own_engine(tiny_model_dir, tiny_adapters)
    compiled = own_engine(tiny_model_dir, tiny_adapters, compile_decode=True)
    compiled.compiled = CompiledDecode(backend="eager")  # dynamo traces and guards; no inductor codegen
    merges: list[str | None] = []
    merged = compiled.compiled.merged

    def counting(model, adapter):  # type: ignore[no-untyped-def]
        merges.append(adapter)
        return merged(model, adapter)

    compiled.compiled.merged = counting  # type: ignore[method-assign]
    before = {k: v.clone() for k, v in compiled.model.state_dict().items()}
    config = GenerationConfig(max_new_tokens=8)
    adapters = [None, "a", "b", "c", "d", "a"]
    requests = [GenerationRequest(prompt=PROMPTS[0], adapter=a, config=config) for a in adapters]
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    try:
        texts = [compiled.generate([requests[0]])[0].text]
        assert counters["frames"]["ok"] > 0  # dynamo really compiled the decode step
        with torch._dynamo.config.patch(error_on_recompile=True):  # one graph for every adapter
            texts += [compiled.generate([r])[0].text for r in requests[1:]]
    finally:
        torch._dynamo.reset()
    assert merges == adapters  # every single-row call took the compiled path
    assert texts == [eager.generate([r])[0].text for r in requests]
    assert len(set(texts)) > 1  # the merged adapters really change the output
    after = compiled.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # restored exactly, not by subtraction
    batch = compiled.generate(requests[1:3])  # several rows: the eager mixed-adapter path
    assert merges == adapters
    assert [g.text for g in batch] == texts[1:3]


@pytest.mark.slow
def test_inductor_compiles_one_row_matmuls_as_reductions_with_the_eager_text(tiny_model_dir, tiny_adapters):
    """The real compile (inductor, C++ codegen): the decode step's matmuls become reduction kernels, and
    the text equals the eager engine's. The eager-backend test above covers merging and recompiles."""
    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters
    from torch._inductor import config as inductor_config

    adapters = {"a": tiny_adapters["a"]}
    eager = own_engine(tiny_model_dir, adapters)
    compiled = own_engine(tiny_model_dir, adapters, compile_decode=True)
    requests = [
        GenerationRequest(prompt=PROMPTS[0], adapter=a, config=GenerationConfig(max_new_tokens=8))
        for a in (None, "a")
    ]
    options_before = dict(inductor_config.post_grad_fusion_options)
    torch._dynamo.reset()
    counters.clear()
    try:
        texts = [compiled.generate([r])[0].text for r in requests]
    finally:
        torch._dynamo.reset()
    decomposed = counters["inductor"]["decompose_mm"] + counters["inductor"]["decompose_addmm"]
    assert decomposed > 0  # the one-row matmuls (GPT-NeoX: with bias, addmm) became reductions
    assert counters["inductor"]["decompose_bmm"] > 0  # decode_attention's products too: no SDPA call
    assert texts == [eager.generate([r])[0].text for r in requests]
    assert inductor_config.post_grad_fusion_options == options_before  # the option was scoped to the call
    assert compiled.model.config._attn_implementation == "sdpa"  # and the attention switch


@pytest.mark.parametrize(("dtype", "atol"), [("float32", 1e-6), ("bfloat16", 1e-2)])
def test_decode_attention_equals_sdpa_for_grouped_heads_and_is_sdpa_outside_a_compile(dtype, atol):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from langchain_fslm.engine.compiled import decode_attention

    torch.manual_seed(0)
    kind = getattr(torch, dtype)
    module = torch.nn.Module()
    module.num_key_value_groups = 3  # type: ignore[assignment]
    query = torch.randn(1, 6, 1, 16, dtype=kind)  # six query heads sharing two key/value heads
    key, value = torch.randn(1, 2, 10, 16, dtype=kind), torch.randn(1, 2, 10, 16, dtype=kind)
    mask = torch.ones(1, 1, 1, 10, dtype=torch.bool)
    mask[..., 7:] = False  # unused slots of a static cache
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return decode_attention(module, q, k, v, m, scaling=0.25)[0]

    traced = torch.compile(attend, backend="eager", fullgraph=True)  # dynamo traces the packed path
    torch._dynamo.reset()
    try:
        packed = traced(query, key, value, mask)
    finally:
        torch._dynamo.reset()
    assert packed.shape == expected.shape == (1, 1, 6, 16) and packed.dtype == kind
    assert torch.allclose(packed.float(), expected.float(), atol=atol)
    assert torch.equal(attend(query, key, value, mask), expected)  # eager calls are SDPA's own


def test_stack_option_turns_compiled_decoding_on_in_its_engine(tiny_model_dir):
    from langchain_fslm import StageSpec
    from langchain_fslm.engine.remote import RemoteEngine

    engine = own_engine(tiny_model_dir, {})
    specs = [StageSpec(name="answer", prompt="Answer: {input}")]
    FSLMChain.from_specs(specs, engine=engine)
    assert engine.compiled is None  # off unless asked for
    stack = FSLMChain.from_specs(specs, engine=engine, compile_decode=True)
    assert engine.compiled is not None and stack.stages[0].engine is engine
    compiled = engine.compiled
    engine.enable_compile_decode()
    assert engine.compiled is compiled  # idempotent: the weight copies are kept
    with pytest.raises(ValueError, match="no local stages"):
        remote = RemoteEngine("http://127.0.0.1:9/v1")
        FSLMChain.from_specs(specs, backend="remote", remote=remote, compile_decode=True)


@pytest.fixture(scope="module")
def gpt2_engine() -> LocalEngine:
    """A tiny random GPT-2 (learned absolute positions, unlike rotary GPT-NeoX), Pythia tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from langchain_fslm.engine.local import LocalEngine
    from tests.conftest import pythia_tokenizer_dir

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50304, n_embd=32, n_layer=2, n_head=4, n_positions=256)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # large position embeddings: a shifted position changes every score
        model.transformer.wpe.weight.normal_(0.0, 1.0)
    return LocalEngine(model, AutoTokenizer.from_pretrained(pythia_tokenizer_dir()), batch_window_ms=None)


def test_left_padded_loglikelihood_batch_equals_per_row_on_absolute_positions(gpt2_engine, tiny_engine):
    pairs = [
        ("Question: What is the capital of France?\nAnswer:", " Paris"),
        ("Hi", " there, friend."),
        ("The cat sat on the", " mat."),
    ]
    for engine in (gpt2_engine, tiny_engine):
        batched = engine.loglikelihood(pairs, batch_size=len(pairs))
        singles = [engine.loglikelihood([pair])[0] for pair in pairs]
        for (got, got_greedy, got_n), (want, want_greedy, want_n) in zip(batched, singles, strict=True):
            assert got == pytest.approx(want, abs=1e-4) and (got_greedy, got_n) == (want_greedy, want_n)


def test_left_padded_generate_batch_equals_per_row_on_absolute_positions(gpt2_engine):
    config = GenerationConfig(max_new_tokens=8)
    requests = [GenerationRequest(prompt=p, config=config) for p in PROMPTS]
    batched = gpt2_engine.generate(requests)
    assert [g.text for g in batched] == [gpt2_engine.generate([r])[0].text for r in requests]
