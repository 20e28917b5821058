"""The shipped trained default stack, loaded offline from the package, answers a held-out Alpaca request."""

from __future__ import annotations

import json

import pytest

from langchain_fslm import FSLMChain, HandoffLogger
from langchain_fslm.models import shared_dir
from langchain_fslm.outputs import output_type_by_name
from langchain_fslm.shipped import SHIPPED_DIR, verify_card
from langchain_fslm.training.data import load_alpaca, request_text, split_heldout

pytestmark = pytest.mark.slow


def test_the_shipped_default_answers_a_heldout_request_with_typed_handoffs(tmp_path):
    verify_card(SHIPPED_DIR)  # a missing or damaged one fails here
    stack = FSLMChain.default()
    assert all(s.adapter for s in stack.stages), "default() must load the shipped adapters"
    row = split_heldout(load_alpaca(shared_dir() / "data" / "alpaca" / "alpaca_5000.json"), 200, 0)[1][0]
    log = tmp_path / "handoffs.jsonl"
    answer = stack.invoke(request_text(row), config={"callbacks": [HandoffLogger(log)]})
    assert answer.strip()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["from_stage"] for r in records] == [s.name for s in stack.stages]
    for record, stage in zip(records, stack.stages, strict=True):
        assert record["parse_error"] is None, record
        output_type_by_name(stage.spec.output_type).from_text(record["text"])  # its type accepts it
