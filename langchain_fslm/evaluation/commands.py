"""The ``fslm eval`` and ``fslm compare`` commands (thin: flags in, library calls, files out).

Light to import: lm-eval, torch and matplotlib load only when a command runs.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from langchain_fslm.cli_errors import fail

TASKS_HELP = (
    "Comma-separated tasks: arc_easy, arc_challenge, mmlu, winogrande, truthfulqa_mc1, hellaswag, gsm8k."
)
DEFAULT_EVAL_TASKS = "arc_easy,arc_challenge,mmlu,winogrande,truthfulqa_mc1,hellaswag"


def _require_lm_eval() -> None:
    """Fail with the install command when lm-eval (the ``eval`` extra) is missing."""
    from langchain_fslm.evaluation import EVAL_EXTRA

    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise fail(f"fslm eval runs lm-eval; {EVAL_EXTRA}") from None


def _check_out(out: Path) -> None:
    """Fail before any scoring when ``--out`` (or a folder above it) is a file, so no work is lost."""
    for path in (out, *out.parents):
        if path.exists() and not path.is_dir():
            raise fail(f"--out {out}: {path} is a file, not a folder")


def _plot_subtitle(full: bool, seed: int, limit: int | None, extra: str = "") -> str:
    """The plot's second line: which sample, the ``--limit``, and any setting the scores depend on."""
    sample = "every staged item" if full else f"seeded 100-item sample (seed {seed}), not tinyBenchmarks"
    parts = [sample, f"--limit {limit}" if limit else "no --limit", extra]
    return "; ".join(p for p in parts if p)


def _publish(
    out: Path, results: dict[str, Any], markdown: str, bars: list[Any], title: str, subtitle: str
) -> None:
    """Print the results table, then write results.json/.md/.png to ``out``.

    The table is printed first, so a write that fails does not lose the scores.
    """
    from langchain_fslm.evaluation.report import write_outputs

    typer.echo(markdown)
    try:
        paths = write_outputs(
            out, results=results, markdown=markdown, bars=bars, title=title, subtitle=subtitle
        )
    except OSError as err:
        raise fail(f"cannot write the results to {out} ({err})") from None
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))


def _sample_note(full: bool, seed: int, limit: int | None) -> str:
    from langchain_fslm.evaluation.tasks import SAMPLE_NOTE, SAMPLE_SIZE

    if full:
        note = "All staged items of each task (not the official tinyBenchmarks subsets; no IRT weighting)."
    else:
        note = SAMPLE_NOTE.format(n=SAMPLE_SIZE, seed=seed)
    return note + (f" Limited to the first {limit} items of each task." if limit else "")


def eval_markdown(results: dict[str, Any]) -> str:
    """The markdown table of an ``fslm eval`` run, with its caveats."""
    from langchain_fslm.evaluation.report import markdown_table

    rows = [
        [
            name,
            t["metric"],
            t["score"],
            f"[{t['ci95'][0]:.3f}, {t['ci95'][1]:.3f}]",
            t["n"],
            t.get("failed", 0),
            t["chance"],
            t["note"],
        ]
        for name, t in results["tasks"].items()
    ]
    columns = ["task", "metric", "score", "95% CI (Wilson)", "n", "failed", "chance", "note"]
    table = markdown_table(columns, rows)
    return f"# fslm eval: {results['model']['label']}\n\n{results['note']}\n\n{table}"


def eval_command(
    stack: Annotated[
        Optional[str], typer.Option(help="Stack folder (default: FSLMChain.default(), the shipped stack).")
    ] = None,
    base: Annotated[
        Optional[str],
        typer.Option(
            help="Base model of the default stack; with --stack, where its base model is on this machine."
        ),
    ] = None,
    tasks: Annotated[str, typer.Option(help=TASKS_HELP)] = DEFAULT_EVAL_TASKS,
    limit: Annotated[
        Optional[int], typer.Option(min=1, help="Items per task (first N of the sample).")
    ] = None,
    full: Annotated[bool, typer.Option(help="Use every staged item instead of the 100-item sample.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the 100-item samples.")] = 1234,
    scoring: Annotated[
        str, typer.Option(help="stack: upstream stages run, last stage scores; last_stage: last stage alone.")
    ] = "stack",
    upstream_max_new_tokens: Annotated[
        Optional[int], typer.Option(min=1, help="Cap the upstream stages' generation budgets (faster).")
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            min=1, help="Questions scored per forward pass (each context once, then all its choices)."
        ),
    ] = 8,
    upstream_batch_size: Annotated[
        int, typer.Option(min=1, help="Questions per batched run of the upstream stages (--scoring stack).")
    ] = 32,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("eval-results"),
) -> None:
    """Score a stack on the local benchmark suite; write results.json, results.md and results.png.

    One progress bar counts the items of all tasks, names the task(s) being scored and estimates the
    time left. Under --scoring stack the upstream stages generate for every question, which dominates
    the time on CPU (see docs/evaluation.md for measured figures); --scoring last_stage is much faster.
    """
    from langchain_fslm.errors import FSLMError

    _require_lm_eval()
    from langchain_fslm.evaluation.lm_eval_model import FSLMLM
    from langchain_fslm.evaluation.report import Bar
    from langchain_fslm.evaluation.runner import evaluate
    from langchain_fslm.models import ModelNotFoundError

    _check_out(out)
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise fail("--tasks names no task")
    try:
        lm = FSLMLM(
            stack=stack,
            base=base,
            scoring=scoring,
            batch_size=batch_size,
            upstream_max_new_tokens=upstream_max_new_tokens,
            upstream_batch_size=upstream_batch_size,
        )
        results = evaluate(lm, names, limit=limit, full=full, seed=seed)
    except (FSLMError, ModelNotFoundError) as err:
        raise fail(str(err)) from None
    trained = any(s.adapter for s in lm.chain.stages)  # default(): the shipped stack, or zero-shot on --base
    default = "fslm-default" if trained else "fslm-default (zero-shot)"
    label = f"{Path(stack).name if stack else default} [{scoring}]"
    results = {
        "kind": "fslm-eval",
        "model": {"label": label, "stack": stack, "base": base, "scoring": scoring},
        "note": _sample_note(full, seed, limit),
        "settings": {
            "tasks": names,
            "limit": limit,
            "full": full,
            "seed": seed,
            "batch_size": batch_size,
            "upstream_batch_size": upstream_batch_size,
            "upstream_max_new_tokens": upstream_max_new_tokens,
        },
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **results,
    }
    bars = [
        Bar(name, t["score"], t["ci95"][0], t["ci95"][1], t["chance"], metric=t["metric"], n=t["n"])
        for name, t in results["tasks"].items()
    ]
    title = f"fslm eval {label}: headline metric per task, 95% Wilson CI, dashed: chance"
    subtitle = _plot_subtitle(full, seed, limit, f"scoring {scoring}")
    _publish(out, results, eval_markdown(results), bars, title, subtitle)


def compare_markdown(results: dict[str, Any]) -> str:
    """The markdown table of an ``fslm compare`` run, with its caveats."""
    from langchain_fslm.evaluation.report import markdown_table

    rows = [
        [
            m["label"],
            m["score"],
            f"[{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]",
            m["n"],
            m.get("errors", 0),
            m["latency_p50_s"],
            m["latency_p95_s"],
            m["tokens_in"],
            m["tokens_out"],
            m["peak_rss_mib"],
        ]
        for m in results["models"]
    ]
    columns = [
        "model",
        "score",
        "95% CI",
        "n",
        "failed",
        "p50 s",
        "p95 s",
        "tokens in",
        "tokens out",
        "peak RSS MiB (own process)",
    ]
    return (
        f"# fslm compare on {results['task']}\n\n{results['note']} Chain: {results['chain']}.\n\n"
        + markdown_table(columns, rows)
    )


def compare_command(
    models: Annotated[
        list[str],
        typer.Option(
            "--model",
            "-m",
            help="Model spec (repeat): default, base, hf:SRC, stack:DIR, a folder, openai:MODEL, module:attr",
        ),
    ],
    task: Annotated[str, typer.Option(help="Dataset from the local suite.")] = "arc_easy",
    limit: Annotated[Optional[int], typer.Option(min=1, help="Items (first N of the sample).")] = 20,
    full: Annotated[bool, typer.Option(help="Use every staged item.")] = False,
    seed: Annotated[int, typer.Option(help="Sample seed.")] = 1234,
    chain: Annotated[
        Optional[str],
        typer.Option(help="Your chain factory module:attr (model -> Runnable); default QA prompt."),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Answer budget of local models.")] = 64,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("compare-results"),
) -> None:
    """Run one chain with several models swapped in; write results.json, results.md and results.png."""
    from langchain_fslm.errors import FSLMError
    from langchain_fslm.evaluation.compare import compare, load_chain_factory
    from langchain_fslm.evaluation.report import Bar
    from langchain_fslm.evaluation.tasks import load_task, task_spec
    from langchain_fslm.models import ModelNotFoundError

    _check_out(out)
    try:
        factory = load_chain_factory(chain) if chain else None
        items = load_task(task, full=full, limit=limit, seed=seed)
        models_out = compare(models, items, chain_factory=factory, max_new_tokens=max_new_tokens)
    except (FSLMError, ModelNotFoundError) as err:
        raise fail(str(err)) from None
    results = {
        "kind": "fslm-compare",
        "task": task,
        "chain": chain or "ChatPromptTemplate(QA prompt) | model | StrOutputParser()",
        "note": _sample_note(full, seed, limit),
        "settings": {"limit": limit, "full": full, "seed": seed, "max_new_tokens": max_new_tokens},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "models": models_out,
    }
    multiple_choice = task_spec(task).kind == "multiple_choice"
    chance = task_spec(task).chance if multiple_choice else None
    metric = "acc (option read from the reply)" if multiple_choice else "exact_match (last number)"
    bars = [
        Bar(m["label"], m["score"], m["ci95"][0], m["ci95"][1], chance, metric=metric, n=m["n"])
        for m in models_out
    ]
    title = f"fslm compare on {task}: the same chain per model, 95% Wilson CI"
    subtitle = _plot_subtitle(full, seed, limit, f"max {max_new_tokens} new tokens")
    _publish(out, results, compare_markdown(results), bars, title, subtitle)


__all__ = ["compare_command", "compare_markdown", "eval_command", "eval_markdown"]
