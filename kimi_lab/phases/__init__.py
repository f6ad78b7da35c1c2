"""One LightningModule per training phase, all over the same K2 backbone."""

from kimi_lab.config.schema import PhaseName, RunConfig
from kimi_lab.phases.base import PhaseModule
from kimi_lab.phases.pretrain import PretrainModule
from kimi_lab.phases.rl import RLModule
from kimi_lab.phases.sft import SFTModule

PHASES: dict[PhaseName, type[PhaseModule]] = {
    PhaseName.pretrain: PretrainModule,
    PhaseName.sft: SFTModule,
    PhaseName.rl: RLModule,
}


def build_phase(cfg: RunConfig) -> PhaseModule:
    return PHASES[cfg.phase.name](cfg)


__all__ = ["PHASES", "PhaseModule", "PretrainModule", "RLModule", "SFTModule", "build_phase"]
