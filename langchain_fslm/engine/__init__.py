"""Where text is generated: one interface; local (transformers + peft) and remote (OpenAI-compatible)."""

from langchain_fslm.engine.base import Engine, Generation, GenerationConfig, GenerationRequest
from langchain_fslm.engine.local import LocalEngine, get_engine
from langchain_fslm.engine.remote import (
    RemoteEngine,
    RemoteEngineError,
    RemoteSettings,
    ServerUnreachableError,
)

__all__ = [
    "Engine",
    "Generation",
    "GenerationConfig",
    "GenerationRequest",
    "LocalEngine",
    "RemoteEngine",
    "RemoteEngineError",
    "RemoteSettings",
    "ServerUnreachableError",
    "get_engine",
]
