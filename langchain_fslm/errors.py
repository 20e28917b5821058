"""The errors langchain-fslm raises. Each names what was wrong (the stage, file or field)."""

from __future__ import annotations

from langchain_core.exceptions import OutputParserException


class FSLMError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidInputError(FSLMError, ValueError):
    """The input to a stack or stage cannot be used (empty, wrong type, unsupported role...)."""


class PromptTooLongError(FSLMError, ValueError):
    """A prompt does not fit the model's context window with the requested generation budget."""


class PromptTruncatedWarning(UserWarning):
    """A prompt was cut from the left to fit the context window (``on_too_long="truncate_left"``)."""


class ConstraintError(FSLMError, ValueError):
    """An output constraint (schema, regex, grammar, tool) cannot be used; raised before any generation.

    The message names the stage and the constraint: a schema the decoding library cannot compile, a
    recursive or unsupported schema, a tool without a schema, a pattern that cannot end within the budget.
    """


class AdapterError(FSLMError):
    """A LoRA adapter is missing, broken, or does not fit the base model."""


class ManifestError(FSLMError, ValueError):
    """A stack folder's manifest is missing, broken, or inconsistent (the message names the field)."""


class StageOutputError(FSLMError, OutputParserException):
    """A stage's generated text could not be parsed into its output type.

    It is LangChain's ``OutputParserException`` (``llm_output`` is the raw text), and carries the
    token counts of every attempt so far, so a stage that retries or hands the raw text on still
    reports what it spent.
    """

    def __init__(
        self,
        stage: str,
        raw: str,
        reason: str,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        latency_s: float = 0.0,
        attempts: int = 1,
    ) -> None:
        self.stage = stage
        self.raw = raw
        self.reason = reason
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.latency_s = latency_s
        self.attempts = attempts
        message = f"Stage {stage!r} produced output that does not parse ({reason}): {raw!r}"
        OutputParserException.__init__(self, message, llm_output=raw)

    def __reduce__(self) -> tuple[object, ...]:  # picklable across processes (keyword-only counts)
        counts = (self.prompt_tokens, self.completion_tokens, self.latency_s, self.attempts)
        return (_rebuild_stage_output_error, (self.stage, self.raw, self.reason, *counts))


def _rebuild_stage_output_error(
    stage: str, raw: str, reason: str, prompt: int, completion: int, latency: float, attempts: int
) -> StageOutputError:
    return StageOutputError(
        stage,
        raw,
        reason,
        prompt_tokens=prompt,
        completion_tokens=completion,
        latency_s=latency,
        attempts=attempts,
    )
