"""Property tests: no input makes the manifest loader or the stage output parsers raise anything but
their documented errors (ManifestError; OutputParserException)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.exceptions import OutputParserException

from langchain_fslm import ManifestError, StackManifest, StageOutputParser, load_manifest
from langchain_fslm.outputs import OUTPUT_TYPES, KeyPoints

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)

VALID = {
    "format_version": 1,
    "name": "s",
    "base_model": {"source": "embedded:smollm2-135m-instruct"},
    "stages": [{"name": "answer", "prompt": "{input}", "adapter": None}],
}


def load_text(text: str | bytes) -> StackManifest:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fslm_stack.json"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
        return load_manifest(folder)


@FAST
@given(st.binary(max_size=200))
def test_manifest_loader_on_any_bytes(data: bytes):
    try:
        load_text(data)
    except ManifestError as err:
        assert "fslm_stack.json" in str(err)


@FAST
@given(json_values)
def test_manifest_loader_on_any_json(value):
    try:
        load_text(json.dumps(value))
    except ManifestError as err:
        assert "fslm_stack.json" in str(err)


paths = st.sampled_from(["format_version", "name", "base_model", "stages", "description", "extra"])
stage_fields = st.sampled_from(
    ["name", "prompt", "output_type", "adapter", "generation", "parse_retries", "on_parse_error", "backend"]
)


@FAST
@given(top=paths, field=stage_fields, value=json_values, where=st.booleans())
def test_manifest_loader_on_one_wrong_field(top, field, value, where):
    data = json.loads(json.dumps(VALID))
    if where:
        data["stages"][0][field] = value
    else:
        data[top] = value
    try:
        manifest = load_text(json.dumps(data))
    except ManifestError as err:
        assert "fslm_stack.json" in str(err)
    else:
        assert manifest.stages[0].name  # whatever loads is a valid manifest


@FAST
@given(st.text(max_size=300), st.sampled_from(sorted(OUTPUT_TYPES)))
def test_output_parsers_on_any_text(text: str, type_name: str):
    parser = StageOutputParser(output_type=OUTPUT_TYPES[type_name])
    try:
        value = parser.parse(text)
    except OutputParserException as err:
        assert err.llm_output == text
    else:
        assert value.as_text().strip()  # what is handed on is never empty


points = st.lists(
    st.text(alphabet=st.characters(categories=["L", "N"]), min_size=1, max_size=12), min_size=2, max_size=4
)  # what KeyPoints holds: two to four points


@FAST
@given(points)
def test_key_points_round_trip(items: list[str]):
    value = KeyPoints(points=items)
    assert StageOutputParser(output_type=KeyPoints).parse(value.as_text()) == value
