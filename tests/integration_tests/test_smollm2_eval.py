"""The embedded SmolLM2-135M-Instruct, scored by the lm-eval adapter on 20 seeded ARC-Easy items."""

from __future__ import annotations

import pytest

from langchain_fslm import FSLMChain
from langchain_fslm.evaluation import FSLMLM, evaluate
from langchain_fslm.roles import default_stage_specs

pytestmark = pytest.mark.slow


def test_smollm2_beats_chance_on_20_arc_easy_items(smollm2_engine):
    stack = FSLMChain.from_specs(default_stage_specs(), engine=smollm2_engine)
    lm = FSLMLM(stack=stack, scoring="last_stage")  # zero-shot stack: the last stage is the bare base model
    result = evaluate(lm, ["arc_easy"], limit=20)["tasks"]["arc_easy"]
    assert result["n"] == 20
    assert result["score"] > 0.25, result  # chance is 0.25 (four options)
    assert result["ci95"][0] > 0.25, result  # and not by luck alone
