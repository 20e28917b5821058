"""Evaluation: lm-eval adapters, the local task suite, `fslm eval` and `fslm compare`, on tiny models."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from lm_eval.api.instance import Instance
from typer.testing import CliRunner

from langchain_fslm import FSLMChain, SLMRunnable
from langchain_fslm.cli import app
from langchain_fslm.evaluation import FSLMLM, LangChainLM, evaluate, load_task, wilson_interval
from langchain_fslm.evaluation.compare import UsageCounter, parse_choice, percentile
from langchain_fslm.evaluation.specs import ModelSpecError, resolve_spec
from langchain_fslm.evaluation.tasks import TASKS, TaskError, extract_number
from langchain_fslm.roles import four_stage_specs

runner = CliRunner()


def ll_request(context: str, continuation: str, idx: int = 0) -> Instance:
    return Instance("loglikelihood", {}, (context, continuation), idx)


@pytest.fixture(scope="module")
def tiny_stack_dir(tiny_engine, tiny_adapters, tmp_path_factory):
    """A saved four-stage tiny stack whose stages carry LoRA adapters a, b, c, d."""
    specs = four_stage_specs(4)
    for spec, name in zip(specs, "abcd", strict=True):
        spec.adapter = str(tiny_adapters[name])
    chain = FSLMChain.from_specs(specs, engine=tiny_engine)
    return chain.save_pretrained(tmp_path_factory.mktemp("eval") / "tiny-stack")


def direct_loglikelihood(model_dir, adapter_dir, context: str, continuation: str) -> tuple[float, bool]:
    """Independent computation: a fresh model (+ adapter), one forward pass, sum of log-softmax."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    assert whole[: len(ctx)] == ctx
    ids = torch.tensor([whole])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    cont = whole[len(ctx) :]
    positions = range(len(ctx) - 1, len(whole) - 1)
    total = sum(float(logprobs[p, t]) for p, t in zip(positions, cont, strict=True))
    greedy = all(int(logprobs[p].argmax()) == t for p, t in zip(positions, cont, strict=True))
    return total, greedy


def assert_pngs_are_real_plots(folder, expected: int) -> None:
    """Open every PNG under ``folder``: a readable image of a sensible size, not blank, nothing clipped.

    Not clipped: the outermost rows and columns are background only (savefig's tight box keeps a margin
    around the title, the tick labels and the axes).
    """
    import numpy as np
    from matplotlib.image import imread

    pngs = sorted(folder.rglob("*.png"))
    assert len(pngs) == expected, pngs
    for png in pngs:
        assert png.read_bytes()[:4] == b"\x89PNG"
        pixels = imread(png)[..., :3]
        height, width = pixels.shape[:2]
        assert width >= 400 and height >= 300, (png, pixels.shape)
        assert float(pixels.var()) > 0, f"{png} is blank"
        edges = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        assert float(edges.min()) > 0.95, f"{png}: something touches the edge (clipped)"


def test_chart_puts_each_metric_on_its_own_named_axis_and_shows_n_and_limit(tmp_path):
    import matplotlib.pyplot as plt

    from langchain_fslm.evaluation.report import Bar, bar_chart, chart_figure

    bars = [
        Bar("arc_easy", 0.4, 0.2, 0.6, 0.25, metric="acc", n=10),
        Bar("hellaswag", 0.3, 0.1, 0.5, 0.25, metric="acc_norm", n=10),
        Bar("mmlu", 0.5, 0.3, 0.7, 0.25, metric="acc", n=7),
    ]
    title = "fslm eval a-stack-with-a-rather-long-name [stack]: headline metric per task, 95% Wilson CI"
    fig = chart_figure(bars, title=title, subtitle="seeded sample; --limit 10")
    try:
        assert [ax.get_ylabel() for ax in fig.axes] == ["acc", "acc_norm"]
        ticks = [[t.get_text() for t in ax.get_xticklabels()] for ax in fig.axes]
        assert ticks == [["arc_easy\n(n=10)", "mmlu\n(n=7)"], ["hellaswag\n(n=10)"]]
        assert "--limit 10" in fig._suptitle.get_text()
    finally:
        plt.close(fig)
    bar_chart(tmp_path / "chart.png", bars, title=title * 2, subtitle="--limit 10")
    assert_pngs_are_real_plots(tmp_path, expected=1)


# ----------------------------------------------------------------------------- lm-eval model "fslm"
def test_fslm_loglikelihood_equals_direct_computation(tiny_model_dir, tiny_adapters, tiny_stack_dir):
    lm = FSLMLM(stack=str(tiny_stack_dir), scoring="last_stage", batch_size=2)
    pairs = [
        ("Question: What is the capital of France?\nAnswer:", " Paris"),
        ("Question: Which gas do plants take in?\nAnswer:", " carbon dioxide from the air"),
        ("The cat sat on the", " mat."),
    ]
    got = lm.loglikelihood([ll_request(c, x, i) for i, (c, x) in enumerate(pairs)], disable_tqdm=True)
    for (context, continuation), (ll, greedy) in zip(pairs, got, strict=True):
        want, want_greedy = direct_loglikelihood(tiny_model_dir, tiny_adapters["d"], context, continuation)
        assert ll == pytest.approx(want, abs=1e-3)
        assert greedy == want_greedy
        assert ll < 0
    # the adapter matters: the bare base model scores differently
    bare = direct_loglikelihood(tiny_model_dir, None, *pairs[0])[0]
    assert got[0][0] != pytest.approx(bare, abs=1e-3)


def test_fslm_greedy_flag_is_true_for_the_argmax_continuation(tiny_engine):
    chain = FSLMChain.from_specs(four_stage_specs(3), engine=tiny_engine)
    lm = FSLMLM(stack=chain, scoring="last_stage")
    context = "Once upon a time"
    encoded = tiny_engine.tokenizer(context, return_tensors="pt")
    logits = tiny_engine.model(**encoded, **tiny_engine._adapter_kwargs([None])).logits  # bare base model
    greedy_text = tiny_engine.tokenizer.decode(logits[0, -1].argmax())
    [(ll_greedy, flag)] = lm.loglikelihood([ll_request(context, greedy_text)], disable_tqdm=True)
    assert flag is True and ll_greedy <= 0


def test_stack_scoring_conditions_the_last_stage_on_the_handoffs(tiny_engine, tiny_stack_dir):
    lm = FSLMLM(stack=str(tiny_stack_dir), scoring="stack", batch_size=4)
    context, continuation = "Question: Why is the sky blue?\nAnswer:", " Rayleigh scattering"
    [(ll, _)] = lm.loglikelihood([ll_request(context, continuation)], disable_tqdm=True)
    state = lm.upstream_states([context])[0]
    assert [r.stage for r in state["_results"]] == ["intent", "key_points", "draft"]
    scored_context = lm.last_stage_context(context)
    assert context in scored_context and str(state["draft"]) in scored_context
    last = lm.chain.stages[-1]
    [(want, _, _)] = tiny_engine.loglikelihood(
        [(scored_context, continuation.lstrip())], adapter=last.adapter
    )
    assert ll == pytest.approx(want, abs=1e-5)
    # last_stage scoring of the same request differs: the upstream stages change the answer's odds
    lm_last = FSLMLM(stack=lm.chain, scoring="last_stage")
    assert lm_last.loglikelihood([ll_request(context, continuation)], disable_tqdm=True)[0][
        0
    ] != pytest.approx(ll)


def test_fslm_generate_until_runs_the_stack_and_rolling_scores(tiny_stack_dir):
    lm = FSLMLM(stack=str(tiny_stack_dir))
    request = Instance(
        "generate_until", {}, ("Question: 2 + 2?\nAnswer:", {"until": ["\n"], "max_gen_toks": 5}), 0
    )
    [text] = lm.generate_until([request, request][:1], disable_tqdm=True)
    assert isinstance(text, str) and "\n" not in text
    [rolling] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("Some text here.",), 0)])
    assert rolling < 0


def test_fslm_rejects_a_bad_scoring_mode(tiny_engine):
    chain = FSLMChain.from_specs(four_stage_specs(3), engine=tiny_engine)
    with pytest.raises(Exception, match="scoring must be one of"):
        FSLMLM(stack=chain, scoring="middle")


def test_simple_evaluate_accepts_model_fslm(tiny_stack_dir, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from langchain_fslm.evaluation.lm_eval_tasks import write_lm_eval_tasks

    folder = write_lm_eval_tasks(tmp_path / "tasks", ["arc_easy"], limit=3)
    results = simple_evaluate(
        model="fslm",
        model_args=f"stack={tiny_stack_dir},scoring=last_stage",
        tasks=["fslm_arc_easy"],
        task_manager=TaskManager(include_path=str(folder)),
    )
    metrics = results["results"]["fslm_arc_easy"]
    assert 0.0 <= metrics["acc,none"] <= 1.0
    assert len(results["samples"]["fslm_arc_easy"]) == 3 if "samples" in results else True


# ----------------------------------------------------------------------------- lm-eval model "langchain"
def test_langchain_model_generates_and_cuts_at_until():
    from langchain_core.language_models import FakeListChatModel  # plumbing only

    lm = LangChainLM(model=FakeListChatModel(responses=["42\n\nQuestion: next", "7"]))
    requests = [
        Instance("generate_until", {}, (f"Q{i}", {"until": ["Question:", "\n\n"]}), i) for i in range(2)
    ]
    assert lm.generate_until(requests, disable_tqdm=True) == ["42", "7"]
    with pytest.raises(NotImplementedError, match="only generates"):
        lm.loglikelihood([ll_request("a", "b")])


# ----------------------------------------------------------------------------- the task suite
def test_every_task_loads_offline_as_a_seeded_sample():
    for name, spec in TASKS.items():
        items = load_task(name)
        assert len(items) == 100, name
        assert load_task(name) == items  # same seed, same items
        assert load_task(name, seed=7) != items or name == "hellaswag"  # hellaswag has only 100 items
        for item in items[:5]:
            if spec.kind == "multiple_choice":
                assert len(item.requests) == len(item.choices) >= 2
                assert 0 <= item.gold < len(item.choices)
            else:
                assert item.prompt and str(item.gold)
    assert len(load_task("arc_easy", full=True)) == 2376
    assert len(load_task("mmlu", limit=7)) == 7


def test_truthfulqa_gold_is_not_always_first():
    golds = Counter(item.gold for item in load_task("truthfulqa_mc1", full=True))
    assert golds[0] < 0.5 * sum(golds.values())
    assert len(golds) >= 4


def test_bad_task_and_limit_are_clear_errors():
    with pytest.raises(TaskError, match="Unknown task 'arc'.*arc_easy"):
        load_task("arc")
    with pytest.raises(TaskError, match="limit must be at least 1"):
        load_task("arc_easy", limit=0)


def test_helpers():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 0.0)
    assert extract_number("so 3 + 4 = 7. The answer is 1,234.") == "1234"
    assert extract_number("It costs $18.00 in the end") == "18.00" or extract_number("18.0") == "18"
    assert parse_choice("B. because", ["x", "y", "z"]) == 1
    assert parse_choice("it is the mat", ["the mat", "the hat"]) == 0
    assert parse_choice("no idea", ["x", "y"]) is None
    assert parse_choice("A fridge keeps it cold, so the answer is (C)", ["x", "y", "z"]) == 2
    assert parse_choice("A fridge keeps food cold", ["an oven", "a fridge"]) == 1
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([], 95) is None


# ----------------------------------------------------------------------------- runner and CLIs
def test_evaluate_scores_items_and_cli_writes_outputs(tiny_stack_dir, tmp_path):
    lm = FSLMLM(stack=str(tiny_stack_dir), scoring="last_stage", max_gen_toks=8)
    results = evaluate(lm, ["winogrande", "gsm8k"], limit=2)
    assert results["tasks"]["winogrande"]["n"] == 2 and len(results["items"]["gsm8k"]) == 2
    assert set(results["items"]["winogrande"][0]) >= {"pred", "gold", "correct", "loglikelihoods"}

    out = tmp_path / "eval"
    result = runner.invoke(
        app,
        [
            "eval",
            "--stack",
            str(tiny_stack_dir),
            "--tasks",
            "arc_easy,hellaswag",
            "--limit",
            "3",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert data["tasks"]["arc_easy"]["n"] == 3 and data["model"]["scoring"] == "stack"
    assert "NOT the official tinyBenchmarks" in data["note"]
    assert "NOT the official tinyBenchmarks" in (out / "results.md").read_text()
    assert_pngs_are_real_plots(out, expected=1)
    bad = runner.invoke(app, ["eval", "--stack", str(tiny_stack_dir), "--tasks", "nope", "--out", str(out)])
    assert bad.exit_code == 2 and "Unknown task" in bad.output


def test_eval_of_a_moved_stack_takes_its_base_from_base(tiny_model_dir, tiny_stack_dir, tmp_path):
    import shutil

    moved = shutil.copytree(tiny_stack_dir, tmp_path / "moved")
    manifest = json.loads((moved / "fslm_stack.json").read_text())
    manifest["base_model"]["source"] = str(tmp_path / "elsewhere")
    (moved / "fslm_stack.json").write_text(json.dumps(manifest))
    args = ["eval", "--tasks", "arc_easy", "--limit", "1", "--scoring", "last_stage"]
    lost = runner.invoke(app, [*args, "--stack", str(moved), "--out", str(tmp_path / "a")])
    assert lost.exit_code == 2 and "elsewhere" in lost.output
    found = runner.invoke(
        app, [*args, "--stack", str(moved), "--base", str(tiny_model_dir), "--out", str(tmp_path / "b")]
    )
    assert found.exit_code == 0, found.output
    original = runner.invoke(app, [*args, "--stack", str(tiny_stack_dir), "--out", str(tmp_path / "c")])
    scores = [json.loads((tmp_path / o / "results.json").read_text())["items"] for o in ("b", "c")]
    assert scores[0] == scores[1] and original.exit_code == 0


def test_compare_runs_two_models_and_writes_outputs(tiny_model_dir, tiny_stack_dir, tmp_path):
    out = tmp_path / "compare"
    result = runner.invoke(
        app,
        [
            "compare",
            "-m",
            f"stack:{tiny_stack_dir}",
            "-m",
            f"hf:{tiny_model_dir}",
            "--task",
            "arc_easy",
            "--limit",
            "3",
            "--max-new-tokens",
            "4",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert [m["spec"] for m in data["models"]] == [f"stack:{tiny_stack_dir}", f"hf:{tiny_model_dir}"]
    for model in data["models"]:
        assert model["n"] == 3 and len(model["items"]) == 3
        assert model["latency_p50_s"] > 0 and model["latency_p95_s"] >= model["latency_p50_s"]
        assert model["tokens_in"] > 0 and model["tokens_out"] > 0
        assert model["peak_rss_mib"] > 0
    stack_in = data["models"][0]["tokens_in"]
    assert stack_in > data["models"][1]["tokens_in"]  # four stages read more than one prompt
    assert "tiny-stack" in (out / "results.md").read_text()
    assert_pngs_are_real_plots(out, expected=1)


def test_out_that_is_a_file_fails_before_any_scoring(tmp_path, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("scoring started")

    monkeypatch.setattr("langchain_fslm.evaluation.lm_eval_model.FSLMLM", must_not_run)
    monkeypatch.setattr("langchain_fslm.evaluation.compare.load_chain_factory", must_not_run)
    monkeypatch.setattr("langchain_fslm.evaluation.tasks.load_task", must_not_run)
    file = tmp_path / "results.txt"
    file.write_text("keep me")
    for out in (file, file / "sub"):
        for args in (["eval"], ["compare", "-m", "default"]):
            result = runner.invoke(app, [*args, "--out", str(out)])
            assert result.exit_code == 2, result.output
            assert f"error: --out {out}: {file} is a file, not a folder" in result.output
    assert file.read_text() == "keep me"


def test_bad_model_specs_are_clear_errors(tmp_path):
    with pytest.raises(ModelSpecError, match="Unknown model spec"):
        resolve_spec("nonsense")
    with pytest.raises(ModelSpecError, match="Stack folder not found"):
        resolve_spec(f"stack:{tmp_path / 'missing'}")
    with pytest.raises(ModelSpecError, match="cannot import module"):
        resolve_spec("no_such_module_xyz:model")


def test_usage_counter_reads_chat_usage_metadata():
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, LLMResult

    counter = UsageCounter()
    message = AIMessage("hi", usage_metadata={"input_tokens": 11, "output_tokens": 3, "total_tokens": 14})
    from uuid import uuid4

    counter.on_llm_end(LLMResult(generations=[[ChatGeneration(message=message)]]), run_id=uuid4())
    assert (counter.input_tokens, counter.output_tokens) == (11, 3)


def test_acc_norm_divides_by_the_choice_length_as_lm_eval_does():
    from langchain_fslm.evaluation.runner import score_items
    from langchain_fslm.evaluation.tasks import Item

    class TwoChoices:
        def loglikelihood(self, requests):
            return [(-2.0, False), (-3.5, False)]

    context = "Question: q\nAnswer:"
    item = Item("arc_challenge", 0, "q", ("ab", "abcd"), 1, ((context, " ab"), (context, " abcd")))
    # lm-eval: -2/len("ab") = -1.0 < -3.5/len("abcd") = -0.875; dividing by " ab" (3) would flip it
    (record,) = score_items(TwoChoices(), [item])
    assert record["pred"] == 0 and record["pred_norm"] == 1


def test_an_answer_that_does_not_parse_is_scored_not_fatal():
    from langchain_fslm.errors import PromptTooLongError, StageOutputError
    from langchain_fslm.evaluation.lm_eval_model import FSLMLM

    lm = FSLMLM.__new__(FSLMLM)
    lm.chain = type("C", (), {"stages": [type("S", (), {"name": "answer"})()]})()
    assert lm._answer_text(StageOutputError("answer", "raw 42", "empty")) == "raw 42"
    assert lm._answer_text(StageOutputError("intent", "x", "empty")) == ""
    assert lm._answer_text(PromptTooLongError("Stage 'answer': prompt has 900 tokens")) == ""
    with pytest.raises(RuntimeError):
        lm._answer_text(RuntimeError("boom"))


def test_compare_scores_a_failed_call_wrong_and_goes_on():
    from langchain_core.runnables import RunnableLambda

    from langchain_fslm.evaluation.compare import run_model
    from langchain_fslm.evaluation.specs import ResolvedSpec
    from langchain_fslm.evaluation.tasks import load_task

    items = load_task("arc_easy", limit=3)
    calls = iter([RuntimeError("HTTP 503 from the API"), "A", "B"])

    def flaky(_: object) -> str:
        reply = next(calls)
        if isinstance(reply, Exception):
            raise reply
        return reply

    model = ResolvedSpec(spec="fake", label="fake", model=RunnableLambda(flaky), local=False)
    result = run_model("fake", items, chain_factory=lambda m: m, resolved=model)
    assert result["n"] == 3 and result["errors"] == 1
    assert result["items"][0] == {
        "index": items[0].index,
        "gold": items[0].gold,
        "pred": None,
        "correct": False,
        "error": "RuntimeError: HTTP 503 from the API",
    }
    assert "answer" in result["items"][1]
    broken = ResolvedSpec(spec="b", label="b", model=RunnableLambda(lambda _: 1 / 0), local=False)
    with pytest.raises(ZeroDivisionError):  # nothing scored: the setup is wrong, not one item
        run_model("b", items, chain_factory=lambda m: m, resolved=broken)


class UpstreamFailsEngine:
    """The tiny engine, except that prompts holding one of ``bad`` get a blank reply (no stage parses it) and
    the other intents are one finished sentence (a 4-token random one under the constraint is cut)."""

    def __init__(self, inner, bad: tuple[str, ...]):
        self.inner, self.bad = inner, bad

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, requests):
        from langchain_fslm import Generation

        out = self.inner.generate(requests)
        blank = [any(b in r.prompt for b in self.bad) for r in requests]
        intent = Generation(text="It asks a question.", finish_reason="stop")
        return [
            Generation(text="  ") if b else intent if r.stage == "intent" else g
            for b, g, r in zip(blank, out, requests, strict=True)
        ]


def test_an_upstream_stage_that_does_not_parse_is_scored_not_fatal(tiny_engine):
    from langchain_fslm.evaluation.commands import eval_markdown

    items = {task: load_task(task, limit=2) for task in ("arc_easy", "gsm8k")}
    engine = UpstreamFailsEngine(tiny_engine, (items["arc_easy"][0].question, items["gsm8k"][1].question))
    specs = [s for s in four_stage_specs(4) if s.name in ("intent", "answer")]
    specs[0].on_parse_error = "raise"  # the default hands an unparsed intent on; this stack must not
    specs[1].prompt = "Request: {input}\nWhat is asked: {intent}\n\nAnswer."
    lm = FSLMLM(stack=FSLMChain.from_specs(specs, engine=engine), scoring="stack", max_gen_toks=4)
    results = evaluate(lm, ["arc_easy", "gsm8k"], limit=2)  # was: StageOutputError from 'intent'
    for task, failed in (("arc_easy", 0), ("gsm8k", 1)):
        records = results["items"][task]
        assert results["tasks"][task]["n"] == 2 and results["tasks"][task]["failed"] == 1
        assert "StageOutputError" in records[failed]["error"] and "'intent'" in records[failed]["error"]
        assert "error" not in records[1 - failed]
    # multiple choice: the stage's raw text is handed on (as on_parse_error="pass_raw" does)
    state = lm.upstream_states([items["arc_easy"][0].requests[0][0]])[0]
    assert state["intent"] == "" and state["_results"][0].parse_error
    assert len(set(results["items"]["arc_easy"][0]["loglikelihoods"])) > 1  # the choices were scored
    assert "| failed |" in eval_markdown({"model": {"label": "x"}, "note": "", **results})


def test_an_upstream_prompt_too_long_is_scored_not_fatal(tiny_engine):
    items = load_task("arc_easy", limit=2)
    specs = [s for s in four_stage_specs(4) if s.name in ("intent", "answer")]
    specs[1].prompt = "Request: {input}\nWhat is asked: {intent}\n\nAnswer."
    intent = SLMRunnable.from_spec(specs[0], tiny_engine)
    lengths = [
        tiny_engine.count_tokens(tiny_engine.render(intent.render({"input": i.requests[0][0]})))
        for i in items
    ]
    assert lengths[0] != lengths[1]
    # a generation budget that leaves room for the shorter intent prompt only
    budget = tiny_engine.context_length - (lengths[0] + lengths[1]) // 2
    specs[0].generation = specs[0].generation.model_copy(update={"max_new_tokens": budget})
    lm = FSLMLM(stack=FSLMChain.from_specs(specs, engine=tiny_engine), scoring="stack", batch_size=2)
    records = evaluate(lm, ["arc_easy"], limit=2)["items"]["arc_easy"]  # was: PromptTooLongError
    longer = lengths.index(max(lengths))
    assert "PromptTooLongError" in records[longer]["error"] and "error" not in records[1 - longer]
    assert len(set(records[longer]["loglikelihoods"])) > 1  # scored, with an empty intent handed on
