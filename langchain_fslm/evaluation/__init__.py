"""Evaluation: lm-eval model types ``fslm`` and ``langchain``, the local task suite, eval and compare.

Importing this package registers both model types with lm-eval when lm-eval is installed (the
``eval`` extra). Without it the package still imports (the ``fslm`` command needs that), and only
``FSLMLM``/``LangChainLM`` and the commands that score items ask for the extra.
"""

from typing import Any

from langchain_fslm.evaluation.runner import evaluate, wilson_interval
from langchain_fslm.evaluation.tasks import SAMPLE_NOTE, TASKS, load_task

EVAL_EXTRA = "lm-eval is not installed: pip install 'langchain-fslm[eval]'"

try:
    from langchain_fslm.evaluation.langchain_lm import LangChainLM
    from langchain_fslm.evaluation.lm_eval_model import FSLMLM
except ModuleNotFoundError as err:
    if not (err.name or "").startswith("lm_eval"):
        raise
    _missing = err

    def __getattr__(name: str) -> Any:
        if name in ("FSLMLM", "LangChainLM"):
            raise ImportError(f"{name} needs the eval extra; {EVAL_EXTRA}") from _missing
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FSLMLM", "SAMPLE_NOTE", "TASKS", "LangChainLM", "evaluate", "load_task", "wilson_interval"]
