"""Where text is generated: one interface, a local (transformers + peft) implementation."""

from langchain_fslm.engine.base import Engine, Generation, GenerationConfig, GenerationRequest
from langchain_fslm.engine.local import LocalEngine, get_engine

__all__ = [
    "Engine",
    "Generation",
    "GenerationConfig",
    "GenerationRequest",
    "LocalEngine",
    "get_engine",
]
