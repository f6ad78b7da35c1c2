"""The import streams: converting a checkpoint several times larger than a memory limit stays under it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hf import released as R
from tests.hf import synthetic as S

pytest.importorskip("safetensors")

LIMIT_MB = 40  # what the import may add to the interpreter (torch and kimi_lab loaded)
FILE_MB = 8  # --file-mb: the output file size, the writer's share of that memory
BIG = {  # a K2-shaped FP8 checkpoint of about 90 MB, about 340 MB once imported at float32
    "vocab_size": 4096,
    "hidden_size": 512,
    "intermediate_size": 1024,
    "moe_intermediate_size": 512,
    "n_routed_experts": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "q_lora_rank": 256,
    "kv_lora_rank": 128,
    "qk_nope_head_dim": 64,
    "qk_rope_head_dim": 32,
    "v_head_dim": 64,
}

MEASURE = """
import json, resource, sys
from kimi_lab.hf.importer import import_hf, model_shapes, resolve_config
import kimi_lab.hf.dcp_stream, kimi_lab.hf.import_chunks, torch.distributed.checkpoint
model_shapes(resolve_config(__import__("pathlib").Path(sys.argv[1])).model)  # the plan's own setup
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import_hf(sys.argv[1], sys.argv[2], file_bytes=int(sys.argv[3]) << 20)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_mb": base / 1024, "peak_mb": peak / 1024}))
"""


def test_import_of_a_checkpoint_several_times_the_memory_limit_stays_under_it(tmp_path: Path) -> None:
    source_bytes = S.write_synthetic_k2(tmp_path / "big", R.k2_text_config(**BIG), shard_bytes=24 << 20)
    res = subprocess.run(
        [sys.executable, "-c", MEASURE, str(tmp_path / "big"), str(tmp_path / "ours"), str(FILE_MB)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rss = json.loads(res.stdout.strip().splitlines()[-1])
    out_bytes = sum(f.stat().st_size for f in (tmp_path / "ours").iterdir())
    added_mb = rss["peak_mb"] - rss["base_mb"]
    print(
        f"source {source_bytes / 2**20:.0f} MiB, imported {out_bytes / 2**20:.0f} MiB, "
        f"added RSS {added_mb:.0f} MiB"
    )
    assert out_bytes > 5 * LIMIT_MB * 2**20 and source_bytes > LIMIT_MB * 2**20
    assert added_mb < LIMIT_MB
