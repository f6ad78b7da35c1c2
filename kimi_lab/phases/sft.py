"""Phase ``sft``: supervised fine-tuning on chat samples, loss on the assistant's tokens only.

The data path is the pre-training one (mixed shard sources, resumable), with chat
documents packed whole and their non-assistant tokens masked out of the loss
(``Document.train_flags``); so this phase differs from ``pretrain`` only in its
data and in where it starts: a pre-training checkpoint (``phase.init_from``).
"""

from __future__ import annotations

import logging

from lightning.pytorch.utilities import rank_zero_warn

from kimi_lab.data.datamodule import KimiDataModule
from kimi_lab.errors import ConfigError
from kimi_lab.phases.pretrain import PretrainModule

log = logging.getLogger(__name__)


class SFTModule(PretrainModule):
    def on_fit_start(self) -> None:
        super().on_fit_start()
        dm = self.trainer.datamodule
        modalities = dm.modalities if isinstance(dm, KimiDataModule) else {}
        if modalities and "chat" not in modalities.values():
            raise ConfigError(
                f"phase sft trains on chat samples, but data.sources ({', '.join(modalities)}) hold none: "
                "build some with kimi-lab data build zero-vision-sft"
            )
        if not self.cfg.phase.init_from:
            rank_zero_warn("phase sft without phase.init_from: fine-tuning a randomly initialised model")
