"""Distil a teacher into one LoRA adapter per stage and train it (``fslm distill`` / ``fslm train``).

Importing this package is light; torch, transformers and peft load when training starts.
"""

from langchain_fslm.training.config import DistillConfig, TrainConfig, load_config
from langchain_fslm.training.data import load_alpaca, split_heldout
from langchain_fslm.training.distill import DistillStats, distill
from langchain_fslm.training.finetune import TrainResult, train_single_lora, train_stack

__all__ = [
    "DistillConfig",
    "DistillStats",
    "TrainConfig",
    "TrainResult",
    "distill",
    "load_alpaca",
    "load_config",
    "split_heldout",
    "train_single_lora",
    "train_stack",
]
