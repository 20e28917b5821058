"""Proof that the llama.cpp engine runs a peft adapter as the torch engine does.

Both engines run the same weights: torch the embedded Q4_1 GGUF de-quantised to fp32, llama.cpp an F32
GGUF of exactly those values (tests/llamacpp_helpers.py), so only arithmetic differs. A random r=8 adapter
on q/k/v/o with non-zero B (peft starts B at zero, which would prove nothing).

Measured here (10 prompts, 32 greedy tokens, 2 threads): greedy text 10/10 identical with the adapter and
10/10 without; first-token top-5 |Δlogprob| mean 0.0018, max 0.0068 (0.0014 / 0.0038 without the
adapter). The same adapter converted without the
q/k permutation: 3/10 identical, mean |Δlogprob| 0.30 (max 1.47). The tolerances below sit between.
"""

from __future__ import annotations

import functools

import pytest

from langchain_fslm.engine.base import GenerationConfig, GenerationRequest
from tests.llamacpp_helpers import f32_copy, random_adapter

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is the capital of France?",
    "Name three colors.",
    "Write a haiku about rain.",
    "What is 2+2?",
    "Why is the sky blue?",
    "Give me a tip for sleeping well.",
    "Translate 'hello' to Spanish.",
    "What do bees make?",
    "Describe a cat.",
    "Who wrote Hamlet?",
]
TOLERANCE = 0.02
"""Most mean |Δlogprob| of the first token's top 5 between the engines (measured: 0.0018)."""


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return random_adapter(tmp_path_factory.mktemp("llamacpp-proof") / "a", seed=1, b_scale=0.05)


@pytest.fixture(scope="module")
def engines(smollm2_engine, adapter, monkeypatch_module):
    import torch

    from langchain_fslm.engine import llamacpp_lora
    from langchain_fslm.engine.llamacpp import LlamaCppEngine
    from langchain_fslm.models import embedded_default_gguf

    llama = LlamaCppEngine(str(f32_copy(embedded_default_gguf())), n_threads=1, n_parallel=2)
    llama.load_adapter("a", adapter)
    with monkeypatch_module.context() as patch:  # the same adapter, converted without the permutation
        unpermuted = functools.partial(llamacpp_lora.gguf_lora, permute_qk=False)
        patch.setattr(llamacpp_lora, "gguf_lora", unpermuted)
        llama.load_adapter("unpermuted", adapter)
    smollm2_engine.load_adapter("proof-a", adapter)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two engines' threads on a shared 2-core machine stall each other (measured 6x)
    yield smollm2_engine, llama
    torch.set_num_threads(threads)
    smollm2_engine.release_adapter("proof-a")
    llama.release()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def greedy(engine, adapter, n=32):
    config = GenerationConfig(max_new_tokens=n)
    return [
        g.text
        for g in engine.generate(
            [GenerationRequest(prompt=p, adapter=adapter, config=config) for p in PROMPTS]
        )
    ]


def torch_logprobs(engine, adapter, prompt):
    import torch

    ids = engine.token_ids(engine.render(prompt))
    with torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor([ids]), **engine._adapter_kwargs([adapter])).logits
    return torch.log_softmax(logits[0, -1].float(), dim=-1)


def llama_top(engine, adapter, prompt, k=5):
    ids = engine.token_ids(engine.render(prompt))
    body = {"prompt": ids, "n_predict": 1, "temperature": 0, "n_probs": k, "stream": False}
    reply = engine._submit(body, adapter)
    return [(t["id"], t["logprob"]) for t in reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]]


def mean_logprob_gap(torch_engine, llama, torch_adapter, llama_adapter):
    # all torch rows first, then all llama.cpp rows: torch's OpenMP threads spin for a while after each
    # call and would slow the llama.cpp threads in between
    references = [torch_logprobs(torch_engine, torch_adapter, p) for p in PROMPTS]
    tops = [llama_top(llama, llama_adapter, p) for p in PROMPTS]
    gaps = [abs(lp - float(ref[i])) for ref, top in zip(references, tops, strict=True) for i, lp in top]
    return sum(gaps) / len(gaps)


def test_both_engines_render_and_tokenize_alike(engines):
    torch_engine, llama = engines
    for prompt, system in [(PROMPTS[0], None), (PROMPTS[1], "Answer in one word.")]:
        rendered = torch_engine.render(prompt, system)
        assert llama.render(prompt, system) == rendered
        assert llama.token_ids(rendered) == torch_engine.token_ids(rendered)


def test_greedy_text_with_the_adapter_matches_torch(engines):
    torch_engine, llama = engines
    same = sum(a == b for a, b in zip(greedy(torch_engine, "proof-a"), greedy(llama, "a"), strict=True))
    assert same >= 8, f"{same}/10 greedy continuations identical"


def test_next_token_logprobs_agree_and_the_permutation_matters(engines):
    torch_engine, llama = engines
    with_adapter = mean_logprob_gap(torch_engine, llama, "proof-a", "a")
    assert with_adapter < TOLERANCE
    assert mean_logprob_gap(torch_engine, llama, None, None) < TOLERANCE
    unpermuted = mean_logprob_gap(torch_engine, llama, "proof-a", "unpermuted")
    assert unpermuted > 10 * TOLERANCE, f"without the q/k permutation the gap is only {unpermuted:.4f}"


def test_the_adapter_changes_llama_cpp_output(engines):
    _, llama = engines
    changed = [a != b for a, b in zip(greedy(llama, "a", n=8), greedy(llama, None, n=8), strict=True)]
    assert sum(changed) >= 6
