"""Manifests shaped to escape the documented errors (issue 26, class 8): all are ManifestError at load."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from langchain_fslm import ManifestError, StageSpec, load_manifest
from langchain_fslm.templates import template_fields


def _manifest(**stage0) -> dict:
    first = {"name": "intent", "prompt": "Request: {input}", **stage0}
    return {"stages": [first, {"name": "answer", "prompt": "{input}\n{intent}"}]}


def _write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fslm_stack.json").write_text(text, encoding="utf-8")
    return folder


BAD_TEMPLATES = {
    "{input": "malformed template",
    "input}": "malformed template",
    "{0}": "not a plain name",
    "{}": "not a plain name",
    "{input.__class__}": "not a plain name",
    "{input[0]}": "not a plain name",
    "{input.__globals__[x]}": "not a plain name",
    "{_results}": "not a plain name",
    "{input:>50000000}": "format spec or conversion",
    "{input:{input}}": "format spec or conversion",
    "{input!r}": "format spec or conversion",
    "{input!s:^9}": "format spec or conversion",
    "Say {nope}": r"reads \['nope'\]",
    "{answer}": r"reads \['answer'\]",  # a later stage is not there yet
    "{intent}": r"reads \['intent'\]",  # nor the stage itself
}


@pytest.mark.parametrize("template", sorted(BAD_TEMPLATES))
def test_templates_allow_plain_named_fields_only(tmp_path, template):
    folder = _write(tmp_path / "s", json.dumps(_manifest(prompt=template)))
    with pytest.raises(ManifestError, match=r"fslm_stack.json: .*" + BAD_TEMPLATES[template]) as err:
        load_manifest(folder)
    assert "intent" in str(err.value)  # names the stage


@pytest.mark.parametrize(
    ("shape", "text", "expected"),
    [
        (
            "duplicate top-level key",
            '{"stages": [], "stages": [{"name": "a", "prompt": "{input}"}]}',
            r"key\(s\) \['stages'\] appear more than once",
        ),
        (
            "duplicate stage key",
            '{"stages": [{"name": "a", "name": "b", "prompt": "{input}"}]}',
            r"\['name'\] appear more than once",
        ),
        ("deep list", "[" * 50_000 + "]" * 50_000, "nested too deeply"),
        ("deep object", '{"a":' * 50_000 + "1" + "}" * 50_000, "nested too deeply"),
        (
            "NUL in adapter",
            json.dumps(_manifest(adapter="adapters/\u0000intent")),
            r"stages\[intent\]\.adapter",
        ),
        ("newline in adapter", json.dumps(_manifest(adapter="adapters/a\nb")), "control character"),
        (
            "NUL in base source",
            json.dumps({**_manifest(), "base_model": {"source": "/tmp/m\u0000x"}}),
            r"base_model\.source",
        ),
        ("seed 2**64", json.dumps(_manifest(generation={"seed": 2**64})), r"generation\.seed"),
        ("negative seed", json.dumps(_manifest(generation={"seed": -1})), r"generation\.seed"),
        ("not UTF-8", None, "not UTF-8"),
    ],
)
def test_manifest_shapes_are_manifest_errors(tmp_path, shape, text, expected):
    folder = tmp_path / "s"
    if text is None:
        folder.mkdir()
        (folder / "fslm_stack.json").write_bytes(b'{"stages": "\xff\xfe"}')
    else:
        _write(folder, text)
    with pytest.raises(ManifestError, match=expected):
        load_manifest(folder)


def test_a_good_template_with_literal_braces_still_loads(tmp_path):
    folder = _write(tmp_path / "s", json.dumps(_manifest(prompt='Reply as {{"a": 1}} to: {input}')))
    assert load_manifest(folder).stages[0].prompt.startswith("Reply")


def test_python_specs_get_the_same_template_check():
    with pytest.raises(ValueError, match="not a plain name"):
        StageSpec(name="x", prompt="{input.__class__}")


fields = st.sampled_from(["input", "intent", "answer", "nope", "0", "", "input.x", "input[0]", "_r"])
pieces = st.one_of(
    st.text(alphabet=string.ascii_letters + " {}:!<>^0123456789.", max_size=12),
    st.builds(lambda f, spec: "{" + f + spec + "}", fields, st.sampled_from(["", ":>9", "!r", ":{input}"])),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.lists(pieces, min_size=1, max_size=6).map("".join))
def test_any_template_is_a_manifest_error_or_plain_known_fields(tmp_path_factory, template):
    folder = _write(tmp_path_factory.mktemp("s"), json.dumps(_manifest(prompt=template)))
    try:
        manifest = load_manifest(folder)
    except ManifestError:
        return
    used = template_fields(manifest.stages[0].prompt)
    assert set(used) <= {"input"}
    assert template.format(input="x") is not None  # what loads also formats, at no cost
