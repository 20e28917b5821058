"""Evaluation: lm-eval model types ``fslm`` and ``langchain``, the local task suite, eval and compare.

Importing this package registers both model types with lm-eval (it needs the ``eval`` extra).
"""

from langchain_fslm.evaluation.langchain_lm import LangChainLM
from langchain_fslm.evaluation.lm_eval_model import FSLMLM
from langchain_fslm.evaluation.runner import evaluate, wilson_interval
from langchain_fslm.evaluation.tasks import SAMPLE_NOTE, TASKS, load_task

__all__ = ["FSLMLM", "SAMPLE_NOTE", "TASKS", "LangChainLM", "evaluate", "load_task", "wilson_interval"]
