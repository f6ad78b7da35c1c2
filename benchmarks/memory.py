"""``kimi-lab bench memory``: what each rank of a sharded run really holds, against the plan.

One process writes a sharded checkpoint (torch.distributed.checkpoint, files of ``--file-mb``,
as ``import-hf`` writes them) of a model of a few hundred MB. Then N local processes (gloo)
each start as ``kimi-lab train`` does under ``trainer=fsdp2 model.moe.expert_parallel=EP``:
the model built on the meta device, laid out over the mesh, materialised shard by shard, the
checkpoint read straight into the shards (``phase.init_from``); then train a few steps
(AdamW, fp32). Each rank's resident memory is read from /proc (peak reset between phases),
less what the process held before the model existed.

Printed per rank: the start's added peak against the rank's share of the model (the whole
model's bytes / N) and against the whole model; the training's added peak against the
per-rank total of ``kimi-lab plan`` for the same config, as a ratio (the plan's claim: within
15%). ``--check`` exits 1 when a rank's training peak is off by more than 15% or its start
peak exceeds its share plus one file and 25%.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from kimi_lab.config.schema import (
    AttentionConfig,
    DataConfig,
    ModelConfig,
    MoEBackend,
    MoEConfig,
    RunConfig,
    TrainerConfig,
)

MIB = 1 << 20


def model_config(size: str) -> ModelConfig:
    """``medium``: about 60M parameters (240 MB in fp32); ``tiny``: a smoke test."""
    if size == "tiny":
        return ModelConfig(name="bench-tiny", moe=MoEConfig(backend=MoEBackend.torch))
    return ModelConfig(
        name="bench-medium",
        vocab_size=8192,
        hidden_size=384,
        n_layers=6,
        first_k_dense=1,
        dense_ffn_dim=1024,
        attention=AttentionConfig(
            n_heads=6,
            q_lora_rank=192,
            kv_lora_rank=128,
            qk_nope_head_dim=32,
            qk_rope_head_dim=16,
            v_head_dim=32,
        ),
        moe=MoEConfig(n_routed_experts=16, top_k=2, expert_ffn_dim=512, backend=MoEBackend.torch),
    )


def run_config(
    model: ModelConfig, world: int, ep: int, batch: int, seq: int, checkpointing: str
) -> RunConfig:
    return RunConfig(
        model=model,
        data=DataConfig(seq_len=seq, batch_size=batch),
        trainer=TrainerConfig(
            strategy="fsdp2", devices=world, precision="32-true", activation_checkpointing=checkpointing
        ),
    )


def _rss() -> tuple[int, int]:
    """(resident now, peak since the last reset) in bytes."""
    fields = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak (VmHWM) restarts from now


def write_checkpoint(cfg: RunConfig, folder: Path, file_mb: int) -> int:
    """A sharded checkpoint of a freshly initialised model, as import-hf writes one; its bytes."""
    from omegaconf import OmegaConf

    from kimi_lab.decode.loading import PREFIX
    from kimi_lab.hf.dcp_stream import Chunk, write_chunks
    from kimi_lab.model.init import initialise_
    from kimi_lab.model.multimodal import KimiK25

    model = KimiK25(cfg.model)
    initialise_(model, cfg.model, seed=1)
    state = model.state_dict()
    chunks = [
        Chunk(f"state_dict.{PREFIX}{k}", tuple(v.shape), v.dtype, 0, v.shape[0], lambda v=v: v)
        for k, v in state.items()
        if v.ndim
    ]
    write_chunks(folder, chunks, file_bytes=file_mb * MIB)
    config = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    torch.save({"hyper_parameters": {"config": config}}, folder / "meta.pt")
    return sum(v.numel() * v.element_size() for v in state.values())


def _start(cfg: RunConfig, world: int, ckpt: str | None) -> torch.nn.Module:
    """What ``kimi-lab train`` does before the first step under trainer=fsdp2."""
    from kimi_lab.decode.loading import load_weights
    from kimi_lab.model.init import materialise_
    from kimi_lab.model.multimodal import KimiK25
    from kimi_lab.parallel.fsdp import parallelize
    from kimi_lab.parallel.mesh import ParallelDims

    with torch.device("meta"):
        model = KimiK25(cfg.model)
    dims = ParallelDims(world, cfg.model.moe.expert_parallel)
    parallelize(model, dims.build("cpu"), cfg.trainer.activation_checkpointing)
    materialise_(model, cfg.model, "cpu", cfg.seed)
    if ckpt is not None:
        load_weights(model, ckpt)
    return model


def _train(model: torch.nn.Module, cfg: RunConfig, steps: int, seed: int) -> None:
    import torch.nn.functional as F

    from kimi_lab.parallel.fsdp import clip_grad_norm_

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        tokens = torch.randint(
            0, cfg.model.vocab_size, (cfg.data.batch_size, cfg.data.seq_len + 1), generator=g
        )
        logits = model(tokens[:, :-1]).logits.float()
        F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
        clip_grad_norm_(list(model.parameters()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=False)  # gradients stay allocated, as between Lightning's steps


def _rank(rank: int, world: int, cfg: RunConfig, ckpt: str, steps: int) -> dict[str, Any]:
    import gc
    from dataclasses import replace

    from kimi_lab.cpu import tune_cpu_allocator

    tune_cpu_allocator()  # as kimi-lab train does
    # One pass with a tiny model first: imports, kernels and communication buffers are the
    # process's, not the model's, and are left out of the figures.
    warm = replace(
        cfg,
        model=replace(
            model_config("tiny"),
            moe=replace(model_config("tiny").moe, expert_parallel=cfg.model.moe.expert_parallel),
        ),
    )
    _train(_start(warm, world, None), warm, 1, rank)
    gc.collect()
    base, _ = _rss()
    _reset_peak()
    model = _start(cfg, world, ckpt)
    _, start_peak = _rss()
    _reset_peak()
    _train(model, cfg, steps, rank)
    _, train_peak = _rss()
    return {"base": base, "start": start_peak - base, "train": train_peak - base}


def measure(
    world: int, ep: int, size: str, batch: int, seq: int, steps: int, file_mb: int, checkpointing: str
) -> dict[str, Any]:
    from kimi_lab.parallel.memory_plan import plan_memory
    from kimi_lab.parallel.spawn import run_ranks

    cfg = run_config(model_config(size), world, ep, batch, seq, checkpointing)
    cfg.model.moe.expert_parallel = ep
    # One malloc arena per process: glibc otherwise keeps a heap per thread that allocates (gloo's
    # workers allocate their collectives' temporaries), and the resident size then tracks the heaps'
    # high-water marks rather than the tensors alive.
    os.environ.setdefault("MALLOC_ARENA_MAX", "1")
    with tempfile.TemporaryDirectory() as tmp:
        whole = write_checkpoint(cfg, Path(tmp) / "ckpt", file_mb)
        ranks = run_ranks(_rank, world, Path(tmp) / "ranks", cfg, str(Path(tmp) / "ckpt"), steps)
    plan = plan_memory(cfg)
    return {
        "world": world,
        "ep": ep,
        "model_bytes": whole,
        "share_bytes": whole // world,
        "file_bytes": file_mb * MIB,
        "plan_bytes": plan.total,
        "plan": plan.as_dict(),
        "ranks": ranks,
        "start_over_share": [r["start"] / (whole / world) for r in ranks],
        "train_over_plan": [r["train"] / plan.total for r in ranks],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="kimi-lab bench memory")
    p.add_argument("memory", nargs="?")
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--ep", type=int, default=2)
    p.add_argument("--size", choices=("medium", "tiny"), default="medium")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--file-mb", type=int, default=32)
    p.add_argument("--activation-checkpointing", default="none", choices=("none", "full", "moe"))
    p.add_argument("--check", action="store_true", help="exit 1 unless the plan is within 15%% of every rank")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    out = measure(
        args.processes,
        args.ep,
        args.size,
        args.batch,
        args.seq,
        args.steps,
        args.file_mb,
        args.activation_checkpointing,
    )
    if args.json:
        print(json.dumps(out))
    else:
        mb = lambda b: f"{b / MIB:,.0f} MiB"  # noqa: E731
        print(
            f"{out['world']} ranks, FSDP2 x EP={out['ep']}: model {mb(out['model_bytes'])}, share per rank "
            f"{mb(out['share_bytes'])}, checkpoint files {mb(out['file_bytes'])}; plan per rank {mb(out['plan_bytes'])}"
        )
        for i, r in enumerate(out["ranks"]):
            print(
                f"  rank {i}: start +{mb(r['start'])} ({out['start_over_share'][i]:.2f}x its share, "
                f"{r['start'] / out['model_bytes']:.2f}x the model); training +{mb(r['train'])} "
                f"({out['train_over_plan'][i]:.2f}x the plan)"
            )
    if args.check:
        bad_plan = [x for x in out["train_over_plan"] if abs(x - 1) > 0.15]
        limit = (out["share_bytes"] + out["file_bytes"]) * 1.25
        bad_start = [r["start"] for r in out["ranks"] if r["start"] > limit]
        if bad_plan or bad_start:
            raise SystemExit(1)
