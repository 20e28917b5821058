"""A few training steps on the real SmolLM2-135M-Instruct produce an adapter that changes its output."""

from __future__ import annotations

import pytest

from langchain_fslm.engine.base import GenerationConfig, GenerationRequest
from langchain_fslm.training import TrainConfig, distill, train_stack
from langchain_fslm.training.distill import read_records

pytestmark = pytest.mark.slow


class ZebraTeacher:
    name = "zebra"

    def write(self, spec, prompts):
        if spec.name == "key_points":  # texts of each stage's type, or distillation drops them
            return ["- zebras\n- more zebras" for _ in prompts]
        return ["The request asks about zebras, zebras, zebras." for _ in prompts]


def test_a_few_steps_on_smollm2_change_its_output(tmp_path, smollm2_engine):
    rows = [
        {"instruction": f"Tell me fact {i} about the sea.", "input": "", "output": "Salty."} for i in range(8)
    ]
    handoffs = tmp_path / "h.jsonl"
    distill(rows, ZebraTeacher(), handoffs, progress=False)
    cfg = TrainConfig(
        handoffs=handoffs,
        base="embedded:smollm2-135m-instruct",
        out=tmp_path / "stack",
        stages=["intent"],
        max_steps=4,
        logging_steps=1,
        batch_size=4,
        learning_rate=3e-3,
        max_length=192,
    )
    result = train_stack(cfg, progress=False)
    assert result.losses["intent"][-1] < result.losses["intent"][0]
    smollm2_engine.load_adapter("zebra-intent", tmp_path / "stack" / "adapters" / "intent")
    prompt = read_records(handoffs)[0]["stages"]["intent"]["prompt"]
    config = GenerationConfig(max_new_tokens=12)
    before, after = smollm2_engine.generate(
        [
            GenerationRequest(prompt=prompt, config=config),
            GenerationRequest(prompt=prompt, adapter="zebra-intent", config=config),
        ]
    )
    assert before.text != after.text
