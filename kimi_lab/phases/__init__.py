"""One LightningModule per training phase, all over the same K2 backbone."""

from kimi_lab.config.schema import PhaseName, RunConfig
from kimi_lab.phases.base import PhaseModule
from kimi_lab.phases.pretrain import PretrainModule

PHASES: dict[PhaseName, type[PhaseModule]] = {PhaseName.pretrain: PretrainModule}


def build_phase(cfg: RunConfig) -> PhaseModule:
    return PHASES[cfg.phase.name](cfg)


__all__ = ["PHASES", "PhaseModule", "PretrainModule", "build_phase"]
