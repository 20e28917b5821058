"""``fslm train`` distributed: two CPU processes (torchrun, DDP over gloo) train one stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from langchain_fslm.training import TrainConfig

from .test_training import _records_file

DDP_SCRIPT = """
import json, os, sys
from pathlib import Path
import torch.distributed as dist
from langchain_fslm.training import TrainConfig, train_stack

result = train_stack(TrainConfig.model_validate_json(Path(sys.argv[1]).read_text()), progress=False)
rank = dist.get_rank() if dist.is_initialized() else -1
backend = dist.get_backend() if dist.is_initialized() else None
Path(sys.argv[2], f"rank{rank}.json").write_text(json.dumps(
    {"world": int(os.environ.get("WORLD_SIZE", 1)), "backend": backend,
     "steps": len(result.losses["intent"]), "wrote": result.stack is not None}))
"""


def test_two_cpu_processes_ddp_train_one_stack(tmp_path, tiny_model_dir, tiny_engine):
    from langchain_fslm import FSLMChain

    cfg = TrainConfig(
        handoffs=_records_file(tmp_path),
        base=str(tiny_model_dir),
        out=tmp_path / "stack",
        stages=["intent"],
        max_steps=3,
        logging_steps=1,
        batch_size=2,
        max_length=128,
        lora_r=4,
    )
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    # torchrun is what `accelerate launch --multi_gpu` runs underneath; on a CPU-only host accelerate
    # falls back to one process, so the 2-process CPU run uses torchrun directly (gloo backend)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        str(tmp_path / "ddp.py"),
        str(tmp_path / "cfg.json"),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = {p.name: json.loads(p.read_text()) for p in tmp_path.glob("rank*.json")}
    assert sorted(ranks) == ["rank0.json", "rank1.json"], proc.stderr[-2000:]
    assert all(r["world"] == 2 and r["backend"] == "gloo" and r["steps"] >= 1 for r in ranks.values()), ranks
    assert ranks["rank0.json"]["wrote"] and not ranks["rank1.json"]["wrote"]
    stack = FSLMChain.from_pretrained(tmp_path / "stack", engine=tiny_engine)
    assert stack.stages[0].adapter
