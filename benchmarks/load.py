"""Where a cached load of the embedded default goes: imports, first load, second load in one process.

    HF_HUB_OFFLINE=1 python benchmarks/load.py

Run it after one load has filled the converted-model cache (``benchmarks/inference.py`` does). In this
fresh process it times ``import torch, transformers``, then the first cached ``load_base_model()``
(which also pays for the transformers modules imported on first use), then a second one. It then
starts two more fresh processes: the first lists the modules a load imports, the second imports them
and only then times the load, so the load itself (reading the cached weights, building the model and
the tokenizer) is measured in a fresh process, apart from Python imports. Writes
``benchmarks/results/load.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def child(preimport: list[str]) -> dict[str, object]:
    """In a fresh process: import ``preimport``, time one cached load, list the modules it imported."""
    import importlib

    start = time.perf_counter()
    for name in preimport:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a module that only imports as a side effect is skipped
            pass
    imported = time.perf_counter()
    from langchain_fslm.models import BaseModelRef, load_base_model

    before = set(sys.modules)
    t0 = time.perf_counter()
    load_base_model(BaseModelRef())
    return {
        "import_s": imported - start,
        "load_s": time.perf_counter() - t0,
        "new_modules": sorted(set(sys.modules) - before),
    }


def run_child(preimport: list[str]) -> dict[str, object]:
    """Run :func:`child` in a fresh interpreter."""
    cmd = [sys.executable, __file__, "--child", json.dumps(preimport)]
    lines = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()
    result: dict[str, object] = json.loads(lines[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))))
        return

    start = time.perf_counter()
    import torch  # noqa: F401
    import transformers  # noqa: F401

    imported = time.perf_counter()
    from benchmarks.common import machine, report
    from langchain_fslm.models import BaseModelRef, load_base_model

    t0 = time.perf_counter()
    load_base_model(BaseModelRef())
    t1 = time.perf_counter()
    load_base_model(BaseModelRef())
    t2 = time.perf_counter()
    discover = run_child(["torch", "transformers", "langchain_fslm.models"])
    modules = [str(m) for m in discover["new_modules"]]  # type: ignore[attr-defined]
    timed = run_child(["torch", "transformers", "langchain_fslm.models", *modules])
    out = {
        "machine": machine(),
        "import_s": imported - start,
        "first_cached_load_s": t1 - t0,
        "second_load_s": t2 - t1,
        "fresh_process_modules_imported_by_load": len(modules),
        "fresh_process_import_s": timed["import_s"],
        "fresh_process_load_after_imports_s": timed["load_s"],
    }
    rows = [
        ("import torch, transformers (s)", f"{out['import_s']:.2f}", ""),
        ("first cached load in this process (s)", f"{out['first_cached_load_s']:.2f}", ""),
        ("second load, same process (s)", f"{out['second_load_s']:.2f}", "<= 3 s"),
        (
            f"fresh process: imports incl. the {len(modules)} modules a load uses (s)",
            f"{timed['import_s']:.2f}",
            "",
        ),
        ("fresh process: cached load after those imports (s)", f"{timed['load_s']:.2f}", "<= 3 s"),
    ]
    report("load", rows, out)


if __name__ == "__main__":
    main()
