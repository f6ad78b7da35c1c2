"""One LightningModule per training phase, all over the same K2 backbone."""

from kimi_lab.config.schema import PhaseName, RunConfig
from kimi_lab.phases.base import PhaseModule
from kimi_lab.phases.parl import PARLModule
from kimi_lab.phases.pretrain import PretrainModule
from kimi_lab.phases.rl import RLModule
from kimi_lab.phases.sft import SFTModule

PHASES: dict[PhaseName, type[PhaseModule]] = {
    PhaseName.pretrain: PretrainModule,
    PhaseName.sft: SFTModule,
    PhaseName.rl: RLModule,
    PhaseName.parl: PARLModule,
}


def build_phase(cfg: RunConfig) -> PhaseModule:
    return PHASES[cfg.phase.name](cfg)


__all__ = ["PHASES", "PARLModule", "PhaseModule", "PretrainModule", "RLModule", "SFTModule", "build_phase"]
