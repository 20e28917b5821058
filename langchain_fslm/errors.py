"""The errors langchain-fslm raises. Each names what was wrong (the stage, file or field)."""

from __future__ import annotations


class FSLMError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidInputError(FSLMError, ValueError):
    """The input to a stack or stage cannot be used (empty, wrong type, unsupported role...)."""


class PromptTooLongError(FSLMError, ValueError):
    """A prompt does not fit the model's context window with the requested generation budget."""


class PromptTruncatedWarning(UserWarning):
    """A prompt was cut from the left to fit the context window (``on_too_long="truncate_left"``)."""


class AdapterError(FSLMError):
    """A LoRA adapter is missing, broken, or does not fit the base model."""


class ManifestError(FSLMError, ValueError):
    """A stack folder's manifest is missing, broken, or inconsistent (the message names the field)."""


class StageOutputError(FSLMError, ValueError):
    """A stage's generated text could not be parsed into its output type."""

    def __init__(self, stage: str, raw: str, reason: str) -> None:
        self.stage = stage
        self.raw = raw
        self.reason = reason
        super().__init__(f"Stage {stage!r} produced output that does not parse ({reason}): {raw!r}")
