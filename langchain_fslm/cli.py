"""The ``fslm`` command. Thin: it parses flags and calls the library."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from langchain_fslm import cli_training, export_vllm
from langchain_fslm.cli_errors import fail
from langchain_fslm.evaluation import commands as eval_commands
from langchain_fslm.manifest import MANIFEST_FILE

MAX_NEW_TOKENS = 8192  # GenerationConfig's bound: a larger budget is refused by typer, not a traceback

app = typer.Typer(
    help="Fine-tuned stacks of small language models (FSLM) for LangChain.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # click's plain help: typer's rich panels show flags as `--help <bool>`
)


LIBRARY_NOISE = ("transformers", "peft", "torch", "accelerate")
"""Libraries whose deprecation notices a command's user cannot act on (they are for our code)."""


@app.callback()
def _quiet_libraries() -> None:
    # before any command runs: FutureWarnings such as transformers' `is_gradient_checkpointing is
    # deprecated` leaked into train, eval and run; our own warnings (PromptTruncatedWarning) still show
    for module in LIBRARY_NOISE:
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=rf"{module}(\..*)?$")
    logging.getLogger("transformers").addFilter(_TokenizerNotice())


class _TokenizerNotice(logging.Filter):
    """Drops transformers' notice on ``clean_up_tokenization_spaces`` for BPE tokenizers (not ours)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "clean_up_tokenization_spaces" not in record.getMessage()


def _stack_folder(path: Path) -> Path:
    """The stack folder, also when given its manifest file."""
    return path.parent if path.name == MANIFEST_FILE and path.is_file() else path


@app.command()
def run(
    prompt: Annotated[str, typer.Argument(help="The request to answer.")],
    stack: Annotated[
        Optional[Path],
        typer.Option(help="Stack folder (default: the shipped default stack, trained where one is shipped)."),
    ] = None,
    base: Annotated[
        Optional[str],
        typer.Option(
            help="Base model (hub id, folder, .gguf) for the default stack, or where a --stack's "
            "base model is on this machine (default: its manifest's)."
        ),
    ] = None,
    zero_shot: Annotated[
        bool,
        typer.Option(help="The default stack's zero-shot prompts instead of its shipped trained adapters."),
    ] = False,
    show_handoffs: Annotated[bool, typer.Option(help="Print every stage's handoff.")] = False,
    handoff_log: Annotated[
        Optional[Path], typer.Option(help="Append handoffs to this JSON-lines file.")
    ] = None,
    max_new_tokens: Annotated[
        Optional[int],
        typer.Option(min=1, max=MAX_NEW_TOKENS, help="Override every stage's generation budget."),
    ] = None,
    compile_decode: Annotated[
        bool,
        typer.Option(
            help="Compile the decode step (torch.compile): about 2x the decode rate, but the first "
            "call compiles (20 to 40 s on a 2-core CPU), so a one-shot run gains only when its stages "
            "generate long texts. See docs/performance.md."
        ),
    ] = False,
    trust_remote_code: Annotated[
        bool,
        typer.Option(help="Allow a stack whose base model needs code from its repository (it runs)."),
    ] = False,
    engine: Annotated[
        Optional[str],
        typer.Option(
            help="What runs the stages: torch (transformers + peft), llamacpp (llama.cpp, GGUF bases) or "
            "auto (llamacpp on a GGUF base). Default: the stack's manifest, else $FSLM_ENGINE, else torch; "
            "torch with --compile-decode. See docs/engines.md."
        ),
    ] = None,
) -> None:
    """Answer PROMPT with a stack, streaming the answer (and, if asked, each handoff as it completes)."""
    from langchain_fslm.chain import FSLMChain
    from langchain_fslm.engine.registry import ENGINE_CHOICES
    from langchain_fslm.errors import FSLMError
    from langchain_fslm.handoff import FINAL_TARGET, HandoffLogger
    from langchain_fslm.inputs import input_to_text
    from langchain_fslm.models import ModelNotFoundError

    if engine is not None and engine not in ENGINE_CHOICES:
        raise fail(f"--engine must be one of {', '.join(ENGINE_CHOICES)}; got {engine!r}")
    try:
        input_to_text(prompt)  # an empty request fails before any weights load
        if stack is not None:
            from langchain_fslm.manifest import load_manifest

            load_manifest(_stack_folder(stack))  # so does a broken stack folder
    except FSLMError as err:
        raise fail(str(err)) from None

    def show(record: dict[str, object]) -> None:
        if record["to_stage"] == FINAL_TARGET:  # the answer itself is streamed below, once
            return
        typer.secho(
            f"── {record['from_stage']} → {record['to_stage']} ({record['prompt_tokens']} in / "
            f"{record['completion_tokens']} out, {float(str(record['latency_s'])):.2f}s)",
            fg=typer.colors.CYAN,
            err=True,
        )
        typer.echo(str(record["text"]), err=True)

    try:
        if stack is not None:
            chain = FSLMChain.from_pretrained(
                _stack_folder(stack),
                base_model=base,
                compile_decode=compile_decode,
                trust_remote_code=trust_remote_code,
                engine=engine,  # type: ignore[arg-type]  # checked above
            )
            if max_new_tokens:
                for s in chain.stages:
                    chain = chain.with_generation(s.name, max_new_tokens=max_new_tokens)
        else:
            chain = FSLMChain.default(
                base,
                trained=False if zero_shot else None,
                max_new_tokens=max_new_tokens,
                compile_decode=compile_decode,
                engine=engine,  # type: ignore[arg-type]  # checked above
            )
        logger = HandoffLogger(handoff_log, on_record=show if show_handoffs else None)
        started = False
        for piece in chain.stream(prompt, config={"callbacks": [logger]}):
            if not started and show_handoffs:
                typer.secho("── answer", fg=typer.colors.GREEN, err=True)
            started = True
            typer.echo(piece, nl=False)
        typer.echo()
    except (FSLMError, ModelNotFoundError, ValueError) as err:  # ValueError: engine vs compile_decode
        raise fail(str(err)) from None


@app.command()
def info(folder: Annotated[Path, typer.Argument(help="Stack folder.")]) -> None:
    """Validate a stack folder and print its manifest summary."""
    from langchain_fslm.errors import FSLMError
    from langchain_fslm.manifest import load_manifest

    try:
        manifest = load_manifest(_stack_folder(folder))
    except FSLMError as err:
        raise fail(str(err)) from None
    typer.echo(f"stack:      {manifest.name} (format v{manifest.format_version})")
    base = manifest.base_model.model_dump(exclude_defaults=True)
    typer.echo(f"base model: {json.dumps(base) if base else 'the embedded default (SmolLM2-135M-Instruct)'}")
    for i, stage in enumerate(manifest.stages, 1):
        adapter = stage.adapter or "(none: zero-shot)"
        typer.echo(
            f"  {i}. {stage.name:<12} type={stage.output_type:<11} adapter={adapter} "
            f"max_new_tokens={stage.generation.max_new_tokens} backend={stage.backend}"
        )


@app.command()
def serve(
    folder: Annotated[Path, typer.Argument(help="Stack folder (its base must be a GGUF file).")],
    host: Annotated[str, typer.Option(help="Address to listen on (the server has no authentication).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port (0: a free one).")] = 8080,
    parallel: Annotated[int, typer.Option(min=1, help="Requests decoded together.")] = 4,
    threads: Annotated[
        Optional[int], typer.Option(min=1, help="CPU threads (default: one per core).")
    ] = None,
) -> None:
    """Serve a stack over HTTP on llama.cpp's server: the GGUF base, one LoRA adapter per stage."""
    import time

    from langchain_fslm.errors import FSLMError
    from langchain_fslm.serve import serve_stack

    folder = _stack_folder(folder)
    try:
        served = serve_stack(folder, host=host, port=port, n_parallel=parallel, n_threads=threads)
    except FSLMError as err:  # ManifestError, ModelNotFoundError, AdapterError among them
        raise fail(str(err)) from None
    typer.echo(f"serving {folder} on {served.address}/v1 (OpenAI API; llama.cpp, base {served.base_model})")
    for stage, file in served.adapters.items():
        typer.echo(f"  adapter {stage:<12} {file.name}")
    remote = f"{{'base_url': '{served.address}/v1', 'server': 'llamacpp'}}"
    typer.echo(f"use it: FSLMChain.from_pretrained({str(folder)!r}, backend='remote', remote={remote})")
    typer.echo("Ctrl-C stops it.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        served.close()
        typer.echo("stopped.")


app.add_typer(export_vllm.export_app, name="export")
app.command("eval")(eval_commands.eval_command)
app.command("compare")(eval_commands.compare_command)
app.command()(cli_training.distill)
app.command()(cli_training.train)
app.command()(cli_training.heldout)


def main() -> None:
    """Entry point."""
    app()


if __name__ == "__main__":
    main()
