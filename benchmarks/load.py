"""Where a cached load of the embedded default goes: imports, first load, second load in one process.

    HF_HUB_OFFLINE=1 python benchmarks/load.py

Run it after one load has filled the converted-model cache (``benchmarks/inference.py`` does). In this
fresh process it times ``import torch, transformers``, then the first cached ``load_base_model()``
(which also pays for the transformers modules imported on first use), then a second one. Writes
``benchmarks/results/load.json``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
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
    out = {
        "machine": machine(),
        "import_s": imported - start,
        "first_cached_load_s": t1 - t0,
        "second_load_s": t2 - t1,
    }
    rows = [
        ("import torch, transformers (s)", f"{out['import_s']:.2f}", ""),
        ("first cached load in this process (s)", f"{out['first_cached_load_s']:.2f}", "<= 3 s"),
        ("second load, same process (s)", f"{out['second_load_s']:.2f}", "<= 3 s"),
    ]
    report("load", rows, out)


if __name__ == "__main__":
    main()
