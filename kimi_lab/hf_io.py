"""``kimi-lab export-hf`` and ``kimi-lab import-hf``: checkpoints to and from the released layout.

Both stream (``kimi_lab.hf``): import reads a Hugging Face folder (the released
K2 in FP8, K2.5 with INT4 experts, or any deepseek_v3 / kimi_k25 checkpoint)
shard by shard into a sharded kimi_lab checkpoint that ``phase.init_from``
trains from; export writes a checkpoint back in the layout Moonshot releases
(optionally with K2.5's INT4 experts), which transformers loads.
"""

from __future__ import annotations

from kimi_lab.hf.exporter import export_hf
from kimi_lab.hf.importer import import_hf
from kimi_lab.loading import read_checkpoint

__all__ = ["export_hf", "import_hf", "read_checkpoint"]
