"""Stop sequences are checked wherever they enter (issue 26, class 3): an empty stop would end every
generation after a token or two, a non-list a raw TypeError deep in the engine."""

from __future__ import annotations

import json

import pytest

from langchain_fslm import ChatFSLM, FSLMChain, GenerationConfig, SLMRunnable
from langchain_fslm.errors import InvalidInputError, ManifestError
from langchain_fslm.roles import four_stage_specs

BAD = [[""], ["ok", ""], 5, [1], [None], "", ["x"] * 17]


@pytest.fixture()
def stack(tiny_engine) -> FSLMChain:
    return FSLMChain.from_specs(four_stage_specs(max_new_tokens=3), engine=tiny_engine)


@pytest.mark.parametrize("stop", BAD)
def test_generation_config_refuses_bad_stops(stop):
    with pytest.raises(ValueError, match="stop"):
        GenerationConfig(stop=stop)


def test_a_single_stop_string_is_a_list_of_one():
    assert GenerationConfig(stop="\n\n").stop == ["\n\n"]


@pytest.mark.parametrize("stop", BAD)
def test_per_call_stops_are_refused_clearly_on_a_stack_a_stage_and_a_chat(stack, stop):
    chat = ChatFSLM(stack=stack)
    stage = stack.stages[0]
    for call in (
        lambda: stack.invoke("Why?", stop=stop),
        lambda: stage.invoke("Why?", stop=stop),
        lambda: stage.lm.invoke("Why?", stop=stop),
        lambda: chat.invoke("Why?", stop=stop),
    ):
        with pytest.raises(InvalidInputError, match="stop"):
            call()


@pytest.mark.parametrize("stop", BAD)
def test_chat_fslm_refuses_bad_stops_when_built(stack, stop):
    with pytest.raises(ValueError, match="stop"):
        ChatFSLM(stack=stack, stop=stop)


def test_a_manifest_with_an_empty_stop_names_file_and_field(stack, tmp_path):
    folder = stack.save_pretrained(tmp_path / "s")
    manifest = json.loads((folder / "fslm_stack.json").read_text())
    manifest["stages"][1]["generation"]["stop"] = [""]
    (folder / "fslm_stack.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"fslm_stack.json.*stages\[key_points\].generation.stop.*non-"):
        FSLMChain.from_pretrained(folder)


def test_good_stops_still_cut_the_text(tiny_engine):
    stage = SLMRunnable(
        name="s", prompt="{input}", engine=tiny_engine, generation=GenerationConfig(max_new_tokens=12)
    )
    full = stage.invoke("Tell me a fact.").raw
    assert len(full) > 2
    stop = full[2:4]
    cut = stage.invoke("Tell me a fact.", stop=[stop]).raw
    assert stop not in cut and full.startswith(cut) and len(cut) < len(full)
