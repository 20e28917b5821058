"""Base models: references (:mod:`.refs`), the GGUF cache (:mod:`.gguf_cache`), loading (:mod:`.loading`).

Every name users and the rest of the package import from ``langchain_fslm.models`` is re-exported here,
so the split into modules is not part of the public API.
"""

from __future__ import annotations

from langchain_fslm.models.loading import load_base_model, prepare_tokenizer
from langchain_fslm.models.refs import (
    EMBEDDED_DEFAULT,
    PYTHIA_TOKENIZER_DIR,
    SMOLLM2_DIR,
    SMOLLM2_GGUF,
    BaseModelRef,
    ModelNotFoundError,
    ResolvedModel,
    cache_dir,
    embedded_default_gguf,
    resolve,
    shared_dir,
)

__all__ = [
    "EMBEDDED_DEFAULT",
    "PYTHIA_TOKENIZER_DIR",
    "SMOLLM2_DIR",
    "SMOLLM2_GGUF",
    "BaseModelRef",
    "ModelNotFoundError",
    "ResolvedModel",
    "cache_dir",
    "embedded_default_gguf",
    "load_base_model",
    "prepare_tokenizer",
    "resolve",
    "shared_dir",
]
