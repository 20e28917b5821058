"""langchain-fslm: fine-tuned stacks of small language models (FSLM) as a LangChain model.

Heavy libraries (torch, transformers, peft) load only when a model is loaded.
"""

from importlib import metadata

from langchain_fslm.chain import FSLMChain, StackOutput, StageStep
from langchain_fslm.chat_model import ChatFSLM
from langchain_fslm.engine.base import Generation, GenerationConfig, GenerationRequest
from langchain_fslm.engine.constraint import OutputConstraint
from langchain_fslm.errors import (
    AdapterError,
    ConstraintError,
    FSLMError,
    InvalidInputError,
    ManifestError,
    PromptTooLongError,
    PromptTruncatedWarning,
    StageOutputError,
)
from langchain_fslm.handoff import HANDOFF_EVENT, Handoff, HandoffLogger
from langchain_fslm.manifest import StackManifest, StageSpec, load_manifest
from langchain_fslm.models import EMBEDDED_DEFAULT, BaseModelRef, load_base_model
from langchain_fslm.outputs import (
    Answer,
    Draft,
    Intent,
    KeyPoints,
    StageOutput,
    StageOutputParser,
    Text,
    register_output_type,
)
from langchain_fslm.small_lm import SmallLM
from langchain_fslm.stage import SLMRunnable, StageResult

try:
    __version__ = metadata.version(__package__ or "langchain-fslm")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "EMBEDDED_DEFAULT",
    "HANDOFF_EVENT",
    "AdapterError",
    "Answer",
    "BaseModelRef",
    "ChatFSLM",
    "ConstraintError",
    "Draft",
    "FSLMChain",
    "FSLMError",
    "Generation",
    "GenerationConfig",
    "GenerationRequest",
    "Handoff",
    "HandoffLogger",
    "Intent",
    "InvalidInputError",
    "KeyPoints",
    "ManifestError",
    "OutputConstraint",
    "PromptTooLongError",
    "PromptTruncatedWarning",
    "SLMRunnable",
    "SmallLM",
    "StackManifest",
    "StackOutput",
    "StageOutput",
    "StageOutputError",
    "StageOutputParser",
    "StageResult",
    "StageSpec",
    "StageStep",
    "Text",
    "__version__",
    "load_base_model",
    "load_manifest",
    "register_output_type",
]
