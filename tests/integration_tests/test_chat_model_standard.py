"""LangChain's standard chat-model integration suite on ChatFSLM over the real default stack
(SmolLM2-135M-Instruct, four zero-shot stages, small budgets so the suite stays quick).

Capabilities a 135M-parameter local model does not have are marked xfail with the reason, as partner
packages do; docs/chat-model.md lists the results.
"""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_fslm import ChatFSLM, FSLMChain
from langchain_fslm.roles import default_stage_specs

pytestmark = pytest.mark.slow

NO_JSON = (
    "SmolLM2-135M zero-shot does not write JSON: run once, every reply was prose (e.g. 'A cat is indeed a "
    "lazily-laid cat!') and the last stage raised StageOutputError after its retry. Not run in CI to save "
    "time; the JSON parsing path is covered in tests/unit_tests/test_chat_model_standard.py"
)
SCHEMAS = ["pydantic", "typeddict", "json_schema"]


@pytest.fixture(scope="module")
def real_stack(smollm2_engine) -> FSLMChain:
    return FSLMChain.from_specs(default_stage_specs(max_new_tokens=4), engine=smollm2_engine)


class TestChatFSLMIntegration(ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _stack(self, real_stack) -> None:
        type(self).stack = real_stack

    @property
    def chat_model_class(self) -> type[ChatFSLM]:
        return ChatFSLM

    @property
    def chat_model_params(self) -> dict:
        return {"stack": type(self).stack}

    @property
    def standard_chat_model_params(self) -> dict:
        return {"temperature": 0, "max_tokens": 8, "timeout": 60, "stop": [], "max_retries": 2}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @pytest.mark.xfail(reason=NO_JSON, run=False)
    @pytest.mark.parametrize("schema_type", SCHEMAS)
    def test_structured_output(self, model, schema_type) -> None:
        super().test_structured_output(model, schema_type)

    @pytest.mark.xfail(reason=NO_JSON, run=False)
    @pytest.mark.parametrize("schema_type", SCHEMAS)
    async def test_structured_output_async(self, model, schema_type) -> None:
        await super().test_structured_output_async(model, schema_type)

    @pytest.mark.xfail(reason=NO_JSON, run=False)
    def test_structured_output_pydantic_2_v1(self, model) -> None:
        super().test_structured_output_pydantic_2_v1(model)

    @pytest.mark.xfail(reason=NO_JSON, run=False)
    def test_structured_output_optional_param(self, model) -> None:
        super().test_structured_output_optional_param(model)

    @pytest.mark.xfail(reason=NO_JSON, run=False)
    def test_json_mode(self, model) -> None:
        super().test_json_mode(model)


def test_structured_output_with_a_stage_type_on_the_real_model(real_stack):
    """What does work on SmolLM2: a plain-text stage type through the last stage's own parser."""
    from langchain_fslm import KeyPoints

    chat = ChatFSLM(stack=real_stack, max_tokens=24)
    points = chat.with_structured_output(KeyPoints).invoke("Give two tips for staying healthy.")
    assert isinstance(points, KeyPoints) and all(p.strip() for p in points.points)
