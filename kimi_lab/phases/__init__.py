"""One LightningModule per training phase, all over the same K2 backbone; each phase names its data.

``PHASES`` is the table: a phase's module, and the datamodule it trains on (token streams
for pretrain and sft, task prompts for rl, swarm tasks for parl).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import lightning as L

from kimi_lab.config.schema import PhaseName, RunConfig
from kimi_lab.phases.base import PhaseModule, model_on_meta
from kimi_lab.phases.parl import PARLModule
from kimi_lab.phases.pretrain import PretrainModule
from kimi_lab.phases.rl import RLModule
from kimi_lab.phases.sft import SFTModule


def token_streams(cfg: RunConfig) -> L.LightningDataModule:
    """Packed token windows of the configured sources (``data.*``)."""
    from kimi_lab.data.datamodule import KimiDataModule

    return KimiDataModule(
        cfg.data,
        cfg.model.vocab_size,
        seed=cfg.seed,
        max_steps=cfg.trainer.max_steps,
        batches_per_step=cfg.trainer.accumulate_grad_batches,
    )


def task_prompts(cfg: RunConfig) -> L.LightningDataModule:
    """Task prompts the policy answers with the code tool (``phase.rl.tasks``)."""
    from kimi_lab.data.task_prompts import TaskDataModule

    rl = cfg.phase.rl
    return TaskDataModule(rl.tasks, rl.prompts_per_step, rl.eval_prompts, seed=cfg.seed)


def swarm_tasks(cfg: RunConfig) -> L.LightningDataModule:
    """Swarm tasks the orchestrator plays (``phase.parl.tasks``)."""
    from kimi_lab.swarm.datamodule import SwarmTaskDataModule

    pc = cfg.phase.parl
    return SwarmTaskDataModule(pc.tasks, pc.prompts_per_step, pc.eval_tasks, seed=cfg.seed)


@dataclass(frozen=True)
class Phase:
    module: type[PhaseModule]
    datamodule: Callable[[RunConfig], L.LightningDataModule]


PHASES: dict[PhaseName, Phase] = {
    PhaseName.pretrain: Phase(PretrainModule, token_streams),
    PhaseName.sft: Phase(SFTModule, token_streams),
    PhaseName.rl: Phase(RLModule, task_prompts),
    PhaseName.parl: Phase(PARLModule, swarm_tasks),
}


def build_phase(cfg: RunConfig, meta: bool = False) -> PhaseModule:
    """The phase's module; ``meta``: its model on the meta device, given values only once it is
    laid out over the processes (``PhaseModule.configure_model``)."""
    with model_on_meta(meta):
        return PHASES[cfg.phase.name].module(cfg)


def build_datamodule(cfg: RunConfig) -> L.LightningDataModule:
    return PHASES[cfg.phase.name].datamodule(cfg)


__all__ = [
    "PHASES",
    "PARLModule",
    "Phase",
    "PhaseModule",
    "PretrainModule",
    "RLModule",
    "SFTModule",
    "build_datamodule",
    "build_phase",
]
