"""``kimi-lab plan``: per-rank memory from the config alone, checked against what autograd saves."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from kimi_lab.cli import main
from kimi_lab.config.schema import (
    ActivationCheckpointing,
    DataConfig,
    OptimizerName,
    RunConfig,
    TrainerConfig,
)
from kimi_lab.parallel.memory_plan import ACCELERATORS, GIB, HEADROOM, fits, plan_memory
from tests.parallel.models import SMALL_MOE

MODEL = replace(SMALL_MOE, attention=replace(SMALL_MOE.attention, q_lora_rank=16))


def _cfg(**trainer: object) -> RunConfig:
    t = TrainerConfig(**{"precision": "32-true", **trainer})  # type: ignore[arg-type]
    return RunConfig(model=MODEL, data=DataConfig(seq_len=64, batch_size=4), trainer=t)


def test_sharding_and_optimizer_choices_move_the_plan_as_they_should() -> None:
    one = plan_memory(_cfg())
    fsdp = plan_memory(_cfg(strategy="fsdp2", devices=4))
    ddp_ep = plan_memory(
        replace(
            _cfg(strategy="ddp", devices=4), model=replace(MODEL, moe=replace(MODEL.moe, expert_parallel=4))
        )
    )
    assert fsdp.params_per_rank == pytest.approx(one.params_per_rank / 4, abs=1)  # every tensor cut 4 ways
    assert (
        fsdp.parameters_total < ddp_ep.params_per_rank * 4 < one.params_per_rank * 4
    )  # DDP keeps the rest whole
    assert one.optimizer == pytest.approx(2 * one.parameters)  # AdamW: two fp32 moments
    muon = plan_memory(
        replace(
            _cfg(),
            phase=replace(
                RunConfig().phase, optim=replace(RunConfig().phase.optim, name=OptimizerName.muonclip)
            ),
        )
    )
    assert one.parameters < muon.optimizer < one.optimizer  # Muon: one moment for the matrices
    bf16 = plan_memory(_cfg(precision="bf16-true"))
    assert bf16.parameters == one.parameters / 2
    acts = one.activations
    assert acts["full"] < acts["moe"] < acts["none"]
    chosen = plan_memory(_cfg(activation_checkpointing=ActivationCheckpointing.full))
    assert chosen.total == pytest.approx(one.total - acts["none"] + acts["full"])


def test_activations_are_what_autograd_saves_within_15_percent() -> None:
    from kimi_lab.model.multimodal import KimiK25

    torch.manual_seed(0)  # routing decides the experts' padded rows: one draw, the same every run
    cfg = _cfg()
    model = KimiK25(MODEL)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    tokens = torch.randint(0, MODEL.vocab_size, (cfg.data.batch_size, cfg.data.seq_len + 1))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(tokens[:, :-1]).logits.float()
        F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    plan = plan_memory(cfg)
    transient = (
        cfg.data.batch_size * cfg.data.seq_len * MODEL.vocab_size * 8
    )  # the loss's gradient, not saved
    assert plan.activations["none"] - transient == pytest.approx(sum(saved.values()), rel=0.15)


def test_plan_command_prints_k2_on_a_cluster_and_what_to_turn(capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "plan",
        "model=k2",
        "trainer=fsdp2",
        "trainer.accelerator=gpu",
        "trainer.devices=8",
        "trainer.num_nodes=32",
        "model.moe.expert_parallel=64",
        "data.seq_len=8192",
        "data.batch_size=1",
        "trainer.precision=bf16-mixed",
        "phase.optim.name=muonclip",
    ]
    main(args)
    out = capsys.readouterr().out
    assert "memory plan: model k2 (1,026,879,353,328 parameters), 256 ranks, fsdp2, expert_parallel=64" in out
    assert "H100 80GB: does not fit" in out and "turn: trainer.activation_checkpointing=full" in out
    main([*args, "trainer.activation_checkpointing=full", "trainer.num_nodes=64", "--json"])
    plan = __import__("json").loads(capsys.readouterr().out)
    assert plan["fits"] == {name: plan["total"] <= HEADROOM * cap for name, cap in ACCELERATORS.items()}
    assert plan["fits"]["H200 141GB"] and plan["total"] < 0.75 * out_total(out)  # it fits the bigger card now
    assert fits(plan_memory(_cfg()))["H100 80GB"]


def out_total(text: str) -> float:
    line = next(x for x in text.splitlines() if x.strip().startswith("total"))
    return float(line.split()[1].replace(",", "")) * GIB


def test_plan_command_refuses_an_unknown_config_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "model=nope"])
    err = capsys.readouterr().err
    # the config error names the bad override and the options (kimi_lab.config.overrides)
    assert exit_.value.code == 2 and err.startswith("error: model=nope: ") and err.count("\n") == 1
    assert "k2" in err and "small" in err
