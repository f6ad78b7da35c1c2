"""An imported checkpoint loads straight into an FSDP2-sharded model: each rank reads only its shards."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hf import released as R

pytest.importorskip("transformers")

RANK = """
import sys, torch, torch.distributed as dist
from kimi_lab.decode.loading import build_model, load_weights, read_checkpoint, read_config
from kimi_lab.parallel.fsdp import parallelize
from kimi_lab.parallel.mesh import ParallelDims

ckpt, port, rank = sys.argv[1], sys.argv[2], int(sys.argv[3])
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
model = build_model(read_config(ckpt))
parallelize(model, ParallelDims(2).build("cpu"))  # plain FSDP2 over both ranks, as trainer=fsdp2 lays it out
with torch.no_grad():
    for p in model.parameters():
        p.zero_()
load_weights(model, ckpt)  # dcp.load into this rank's DTensor shards
state = model.state_dict()
local = sum(t.to_local().numel() for t in state.values() if hasattr(t, "to_local"))
full = {k: (t.full_tensor() if hasattr(t, "full_tensor") else t) for k, t in state.items()}
if rank == 0:
    _, want, _ = read_checkpoint(ckpt)
    total = sum(t.numel() for t in want.values())
    assert full.keys() == want.keys() and all(torch.equal(full[k], want[k]) for k in want)
    assert local < 0.6 * total, (local, total)  # half of the sharded tensors, not the model
    print("ok", local, total)
dist.destroy_process_group()
"""


@pytest.mark.slow  # three interpreters with torch: 2.5 minutes on the shared 2-core machine
def test_an_imported_checkpoint_loads_into_fsdp2_shards(tmp_path: Path) -> None:
    from transformers import DeepseekV3ForCausalLM

    from kimi_lab.hf.importer import import_hf

    k2 = R.k2_text_config()
    hf = R.randomise(DeepseekV3ForCausalLM(R.transformers_text_config(k2)), 0)
    R.write_k2(tmp_path / "k2", hf, k2, 60_000)
    import_hf(tmp_path / "k2", tmp_path / "ours")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RANK, str(tmp_path / "ours"), port, str(rank)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert outs[0][0].startswith("ok")
