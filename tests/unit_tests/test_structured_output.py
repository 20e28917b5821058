"""Structured output under the schema's constraint (a scripted engine that says it constrains decoding)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import pytest
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from langchain_fslm import ChatFSLM, FSLMChain, KeyPoints, StageOutputError, StageSpec
from langchain_fslm.errors import ConstraintError
from langchain_fslm.schemas import check_text, parse_json
from tests.unit_tests.fake_engines import ConstrainedFake


class Person(BaseModel):
    """A person mentioned in the text."""

    name: str = Field(description="full name")
    age: int
    city: Optional[str] = None  # noqa: UP045 - the standard suites' Optional form


class PersonDict(TypedDict):
    """A person."""

    zeta: Annotated[str, ..., "written first"]
    alpha: int


class Node(BaseModel):
    value: int
    children: list[Node] = []


def stack_of(engine, stages: int = 1) -> FSLMChain:
    specs = [StageSpec(name=f"s{i}", prompt="Request: {input}") for i in range(stages - 1)]
    specs.append(StageSpec(name="answer", prompt="Request: {input}", output_type="answer"))
    return FSLMChain.from_specs(specs, engine=engine)


def test_the_last_stage_generates_under_the_schema_in_declared_order():
    engine = ConstrainedFake(["an intent", '{"name": "Ada Lovelace", "age": 36}'])
    person = stack_of(engine, stages=2).with_structured_output(Person).invoke("Ada Lovelace was 36.")
    assert person == Person(name="Ada Lovelace", age=36)
    first, last = engine.requests
    assert first.constraint is None  # upstream stages are untouched
    schema = last.constraint.json_schema()
    assert last.constraint.kind == "json_schema" and last.constraint.name == "Person"
    assert list(schema["properties"]) == ["name", "age", "city"]  # declared, not sorted
    assert schema["additionalProperties"] is False
    assert 'in this form: {"name": <string: full name>, "age": <integer>, "city": <string>}' in last.prompt
    assert engine.checked and engine.checked[-1][1] == "answer"  # compiled before generation


def test_nested_models_are_inlined_and_closed():
    class Address(BaseModel):
        street: str
        zip: str

    class Customer(BaseModel):
        name: str
        address: Address

    engine = ConstrainedFake(['{"name": "Bo", "address": {"street": "Main", "zip": "1"}}'])
    out = stack_of(engine).with_structured_output(Customer).invoke("x")
    assert out.address.zip == "1"
    schema = engine.last.constraint.json_schema()
    assert "$defs" not in json.dumps(schema) and "$ref" not in json.dumps(schema)
    assert schema["properties"]["address"]["additionalProperties"] is False


def test_typeddict_and_dict_schemas_return_dicts_in_order():
    engine = ConstrainedFake(['{"zeta": "z", "alpha": 1}'])
    assert stack_of(engine).with_structured_output(PersonDict).invoke("x") == {"zeta": "z", "alpha": 1}
    assert list(engine.last.constraint.json_schema()["properties"]) == ["zeta", "alpha"]
    schema = {
        "title": "Pair",
        "type": "object",
        "properties": {"b": {"type": "string"}, "a": {"type": "integer"}},
        "required": ["b", "a"],
    }
    engine = ConstrainedFake(['{"b": "x", "a": 2}'])
    assert stack_of(engine).with_structured_output(schema).invoke("x") == {"b": "x", "a": 2}


def test_a_dict_schema_is_checked_by_its_grammar():
    schema = {"title": "Pair", "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    engine = ConstrainedFake(['{"a": "not a number"}'])
    with pytest.raises(StageOutputError, match="does not fit Pair"):
        stack_of(engine).with_structured_output(schema).invoke("x")


def test_an_unfinished_object_is_an_error_never_a_truncated_value():
    engine = ConstrainedFake(['{"name": "Ada", "age": 3'])
    with pytest.raises(StageOutputError, match="unfinished") as failure:
        stack_of(engine).with_structured_output(Person).invoke("x")
    assert "max_tokens" in str(failure.value)
    assert len(engine.requests) == 2  # regenerated once (parse_retries=1), then raised


def test_include_raw_on_the_stack():
    engine = ConstrainedFake(['{"name": "Ada", "age": 36}'])
    out = stack_of(engine).with_structured_output(Person, include_raw=True).invoke("x")
    assert out == {
        "raw": '{"name": "Ada", "age": 36}',
        "parsed": Person(name="Ada", age=36),
        "parsing_error": None,
    }
    bad = ConstrainedFake(["prose, no JSON"])
    out = stack_of(bad).with_structured_output(Person, include_raw=True).invoke("x")
    assert out["raw"] == "prose, no JSON" and out["parsed"] is None
    assert isinstance(out["parsing_error"], OutputParserException)


def test_chat_structured_output_methods_and_include_raw():
    for method in ("json_schema", "function_calling", "json_mode"):
        engine = ConstrainedFake(['{"name": "Ada", "age": 36, "city": "London"}'])
        chat = ChatFSLM(stack=stack_of(engine))
        assert chat.with_structured_output(Person, method=method).invoke("x").city == "London"
        assert engine.last.constraint.name == "Person"
    engine = ConstrainedFake(['{"name": "Ada", "age": 36}'])
    out = ChatFSLM(stack=stack_of(engine)).with_structured_output(Person, include_raw=True).invoke("x")
    assert isinstance(out["raw"], AIMessage) and out["parsed"].age == 36 and out["parsing_error"] is None


def test_json_mode_without_schema_is_any_object():
    engine = ConstrainedFake(['{"anything": [1, 2]}'])
    out = ChatFSLM(stack=stack_of(engine)).with_structured_output(method="json_mode").invoke("x")
    assert out == {"anything": [1, 2]}
    assert engine.last.constraint.json_schema() == {"type": "object"}


def test_stage_output_types_keep_their_own_format():
    engine = ConstrainedFake(["- one\n- two"])
    points = ChatFSLM(stack=stack_of(engine)).with_structured_output(KeyPoints).invoke("x")
    assert points.points == ["one", "two"]
    assert engine.last.constraint == KeyPoints.constraint()


def test_recursive_and_unsupported_schemas_fail_before_generation():
    engine = ConstrainedFake(["{}"])
    with pytest.raises(ConstraintError, match="'Node' is recursive"):
        stack_of(engine).with_structured_output(Node)
    with pytest.raises(ConstraintError, match="Odd.*Unimplemented keys"):
        ChatFSLM(stack=stack_of(engine)).with_structured_output(
            {"title": "Odd", "type": "object", "if": {"type": "object"}}
        )
    with pytest.raises(ConstraintError, match="refers to '#/\\$defs/Gone'"):
        stack_of(engine).with_structured_output(
            {"type": "object", "properties": {"a": {"$ref": "#/$defs/Gone"}}}
        )
    assert engine.requests == []


def test_strict_json_reading():
    assert parse_json('```json\n{"a": 1}\n```') == {"a": 1}
    for text, reason in [
        ('{"a": "cut', "unfinished"),
        ('{"a": 1,', "unfinished"),
        ('{"a": 1} and more', "followed by other text"),
        ("", "empty"),
        ("{'a': 1}", "not valid JSON"),
    ]:
        with pytest.raises(ValueError, match=reason):
            parse_json(text)


def test_check_text_says_where_a_reply_leaves_the_grammar():
    from langchain_fslm.schemas import json_constraint

    constraint = json_constraint(Person)
    check_text(constraint, '{"name": "Ada", "age": 36}')
    with pytest.raises(ValueError, match="at character"):
        check_text(constraint, '{"name": "Ada", "age": 36, "extra": 1}')
    with pytest.raises(ValueError, match="unfinished"):
        check_text(constraint, '{"name": "Ada"')
