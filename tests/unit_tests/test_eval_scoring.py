"""Faster evaluation scores as the plain path did: shared-context scoring and batched requests."""

from __future__ import annotations

import pytest

from langchain_fslm.evaluation.scoring import shared_context_loglikelihood, split_tokens

PAIRS = [
    ("Question: What is the capital of France?\nAnswer:", " Paris"),
    ("Question: What is the capital of France?\nAnswer:", " Lyon, on the Rhone"),
    ("Question: What is the capital of France?\nAnswer:", " Marseille"),
    ("The cat sat on the", " mat."),
    ("The cat sat on the", "mat"),  # joins the context's last token: a different split
    ("Question: Which gas do plants take in?\nAnswer:", " carbon dioxide from the air"),
    ("Question: What is the capital of France?\nAnswer:", " Paris"),  # a repeat
]


@pytest.mark.parametrize("batch_size", [1, 3, 8])
@pytest.mark.parametrize("adapter", [None, "d"])
def test_shared_context_scores_equal_the_engine_path(tiny_engine, tiny_adapters, adapter, batch_size):
    if adapter and not tiny_engine.has_adapter(adapter):
        tiny_engine.load_adapter(adapter, tiny_adapters[adapter])
    want = tiny_engine.loglikelihood(PAIRS, adapter=adapter, batch_size=4)
    got = shared_context_loglikelihood(tiny_engine, PAIRS, adapter=adapter, batch_size=batch_size)
    assert len(got) == len(want)
    for (lp, greedy, n), (want_lp, want_greedy, want_n) in zip(got, want, strict=True):
        assert lp == pytest.approx(want_lp, abs=1e-5)
        assert (greedy, n) == (want_greedy, want_n)
    assert got[0] == pytest.approx(got[-1])  # a repeated pair scores the same in another batch


def test_split_tokens_keeps_a_context_token(tiny_engine):
    context, continuation = split_tokens(tiny_engine, "x", "y z")
    assert len(context) >= 1 and len(continuation) >= 1


def _requests(tasks: dict[str, int]):
    from lm_eval.api.instance import Instance

    from langchain_fslm.evaluation.tasks import load_task

    pairs = [pair for task, n in tasks.items() for item in load_task(task, limit=n) for pair in item.requests]
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


@pytest.mark.parametrize("scoring", ["stack", "last_stage"])
def test_fslm_scores_equal_the_plain_path(tiny_engine, tiny_adapters, scoring):
    from langchain_fslm import FSLMChain
    from langchain_fslm.evaluation import FSLMLM
    from langchain_fslm.roles import four_stage_specs

    specs = four_stage_specs(4)
    for spec, name in zip(specs, "abcd", strict=True):
        spec.adapter = str(tiny_adapters[name])
    chain = FSLMChain.from_specs(specs, engine=tiny_engine).with_generation(max_new_tokens=4)
    requests = _requests({"arc_easy": 2, "winogrande": 2, "hellaswag": 1})
    before = FSLMLM(stack=chain, scoring=scoring, batch_size=4, shared_contexts=False)
    after = FSLMLM(stack=chain, scoring=scoring, batch_size=8)
    want = before.loglikelihood(requests, disable_tqdm=True)
    got = after.loglikelihood(requests, disable_tqdm=True)
    assert len(got) == len(want) == len(requests)
    for (lp, greedy), (want_lp, want_greedy) in zip(got, want, strict=True):
        assert lp == pytest.approx(want_lp, abs=1e-5)
        assert greedy == want_greedy


def test_evaluate_batches_across_tasks_with_one_bar_naming_them(capsys):
    from langchain_fslm.evaluation import evaluate

    calls: list[int] = []

    class Counting:
        batch_size = 4

        def loglikelihood(self, requests, disable_tqdm=False):
            assert disable_tqdm  # the runner's bar is the only one
            calls.append(len(requests))
            return [(-float(len(r.args[1])), False) for r in requests]

    results = evaluate(Counting(), ["arc_easy", "winogrande"], limit=5, chunk_items=4)
    # 10 items in chunks of 4: the second chunk holds both tasks' items
    assert len(calls) == 3
    assert [t["n"] for t in results["tasks"].values()] == [5, 5]
    per_task = evaluate(Counting(), ["winogrande"], limit=5, chunk_items=1, progress=False)
    assert per_task["items"]["winogrande"] == results["items"]["winogrande"]
    err = capsys.readouterr().err
    assert "fslm eval arc_easy" in err and "arc_easy+winogrande" in err and "10/10" in err and "item" in err


def test_a_model_that_takes_no_kv_cache_is_scored_by_the_engine_path():
    class NoCache:
        def forward(self, input_ids, attention_mask=None):
            raise AssertionError("not called")

    class Engine:
        model = NoCache()

        def loglikelihood(self, pairs, adapter=None, batch_size=8):
            return [(-1.5, False, 2) for _ in pairs]

    assert shared_context_loglikelihood(Engine(), [("a", " b"), ("a", " c")]) == [(-1.5, False, 2)] * 2


def test_upstream_batches_group_questions_of_similar_length():
    from langchain_fslm.evaluation.lm_eval_model import length_buckets

    texts = ["a" * 80, "b" * 900, "c" * 70, "d" * 85, "e" * 1000, "f" * 75]
    assert length_buckets(texts, 32) == [["c" * 70, "f" * 75, "a" * 80, "d" * 85], ["b" * 900, "e" * 1000]]
    assert [len(b) for b in length_buckets(texts, 3)] == [3, 1, 2]
