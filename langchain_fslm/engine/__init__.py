"""Where text is generated: one contract (an ABC), a registry of engine kinds, and three engines.

The local engine runs transformers + peft in this process, the llama.cpp engine runs a GGUF base through
llama.cpp's own server in this process, and the remote one calls an OpenAI-compatible server.
"""

from langchain_fslm.engine.base import (
    Engine,
    EngineCapabilities,
    Generation,
    GenerationConfig,
    GenerationRequest,
)
from langchain_fslm.engine.constraint import OutputConstraint
from langchain_fslm.engine.llamacpp import LlamaCppEngine
from langchain_fslm.engine.local import LocalEngine, get_engine
from langchain_fslm.engine.registry import capabilities_of, create_engine, kind_of, register_engine
from langchain_fslm.engine.remote import (
    RemoteEngine,
    RemoteEngineError,
    RemoteSettings,
    ServerUnreachableError,
)

__all__ = [
    "Engine",
    "EngineCapabilities",
    "Generation",
    "GenerationConfig",
    "GenerationRequest",
    "LlamaCppEngine",
    "LocalEngine",
    "OutputConstraint",
    "RemoteEngine",
    "RemoteEngineError",
    "RemoteSettings",
    "ServerUnreachableError",
    "capabilities_of",
    "create_engine",
    "get_engine",
    "kind_of",
    "register_engine",
]
