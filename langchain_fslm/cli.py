"""The ``fslm`` command. Thin: it parses flags and calls the library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from langchain_fslm import cli_training, export_vllm
from langchain_fslm.cli_errors import fail
from langchain_fslm.evaluation import commands as eval_commands
from langchain_fslm.manifest import MANIFEST_FILE

app = typer.Typer(
    help="Fine-tuned stacks of small language models (FSLM) for LangChain.",
    no_args_is_help=True,
    add_completion=False,
)


def _stack_folder(path: Path) -> Path:
    """The stack folder, also when given its manifest file."""
    return path.parent if path.name == MANIFEST_FILE and path.is_file() else path


@app.command()
def run(
    prompt: Annotated[str, typer.Argument(help="The request to answer.")],
    stack: Annotated[
        Optional[Path], typer.Option(help="Stack folder (default: the built-in four-stage stack).")
    ] = None,
    base: Annotated[
        Optional[str],
        typer.Option(
            help="Base model (hub id, folder, .gguf) for the default stack, or where a --stack's "
            "base model is on this machine (default: its manifest's)."
        ),
    ] = None,
    show_handoffs: Annotated[bool, typer.Option(help="Print every stage's handoff.")] = False,
    handoff_log: Annotated[
        Optional[Path], typer.Option(help="Append handoffs to this JSON-lines file.")
    ] = None,
    max_new_tokens: Annotated[
        Optional[int], typer.Option(min=1, help="Override every stage's generation budget.")
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
) -> None:
    """Answer PROMPT with a stack and print the answer (and, if asked, the handoffs)."""
    from langchain_fslm.chain import FSLMChain
    from langchain_fslm.errors import FSLMError
    from langchain_fslm.handoff import HandoffLogger
    from langchain_fslm.models import ModelNotFoundError

    try:
        if stack is not None:
            chain = FSLMChain.from_pretrained(
                _stack_folder(stack),
                base_model=base,
                compile_decode=compile_decode,
                trust_remote_code=trust_remote_code,
            )
            if max_new_tokens:
                for s in chain.stages:
                    chain = chain.with_generation(s.name, max_new_tokens=max_new_tokens)
        else:
            chain = FSLMChain.default(base, max_new_tokens=max_new_tokens, compile_decode=compile_decode)
        logger = HandoffLogger(handoff_log)
        answer = chain.invoke(prompt, config={"callbacks": [logger]})
    except (FSLMError, ModelNotFoundError) as err:
        raise fail(str(err)) from None
    if show_handoffs:
        for record in logger.records:
            typer.secho(
                f"── {record['from_stage']} → {record['to_stage']} "
                f"({record['prompt_tokens']} in / {record['completion_tokens']} out, "
                f"{record['latency_s']:.2f}s)",
                fg=typer.colors.CYAN,
                err=True,
            )
            typer.echo(record["text"], err=True)
        typer.secho("── answer", fg=typer.colors.GREEN, err=True)
    typer.echo(answer)


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
