"""One LightningModule per training phase, all over the same K2 backbone."""

from kimi_lab.config.schema import PhaseName, RunConfig
from kimi_lab.phases.base import PhaseModule, model_on_meta
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


def build_phase(cfg: RunConfig, meta: bool = False) -> PhaseModule:
    """The phase's module; ``meta``: its model on the meta device, given values only once it is
    laid out over the processes (``PhaseModule.configure_model``)."""
    with model_on_meta(meta):
        return PHASES[cfg.phase.name](cfg)


__all__ = ["PHASES", "PARLModule", "PhaseModule", "PretrainModule", "RLModule", "SFTModule", "build_phase"]
