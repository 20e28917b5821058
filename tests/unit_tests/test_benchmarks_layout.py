"""benchmarks/ holds regression scripts and only their latest results; no machine paths in what users read."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.name not in {"common.py", "__init__.py"})


def test_no_absolute_machine_paths_in_benchmarks_docs_examples():
    pattern = re.compile(r"/work/|/home/|/tmp/")
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("benchmarks", "docs", "examples")
        for path in sorted((ROOT / folder).rglob("*"))
        if path.is_file() and path.suffix not in {".png", ".pyc"}
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


def test_results_are_one_latest_json_per_script():
    names = {p.stem for p in SCRIPTS}
    results = sorted((BENCH / "results").iterdir())
    assert all(p.suffix == ".json" and p.stem in names for p in results), [p.name for p in results]


def test_each_script_says_its_one_command():
    for script in SCRIPTS:
        doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
        assert f"python benchmarks/{script.name}" in doc, script.name


def test_shell_scripts_take_the_run_folder_from_argument_or_env():
    for script in sorted(BENCH.glob("*.sh")):
        text = script.read_text(encoding="utf-8")
        assert "RUNS=${1:-${FSLM_RUNS:-runs}}" in text, script.name
