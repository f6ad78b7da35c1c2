"""Hugging Face checkpoints in and out: one adapter, three drivers.

``adapter`` is the one map between kimi_lab's tensors and an HF checkpoint's (names,
per-tensor transforms: RoPE rows, gate/up fusion, expert stacking, the ViT's fused
``wqkv``, the patch embedding) and ``config`` the one map between configs, both
directions. Three drivers use them: ``in_memory`` (transformers' models, for parity
tests and benchmarks), the streamed import (``importer`` over ``import_chunks``) and
the streamed export (``exporter`` over ``export_tensors``). The released Kimi
checkpoints are far larger than one machine's memory (K2: about 1T parameters in
FP8; K2.5: routed experts in INT4), so the streamed drivers never hold a whole model:
``source`` reads safetensors shards one tensor at a time (dequantizing FP8
block-scaled and INT4 pack-quantized weights with ``quant``), ``dcp_stream`` writes
a sharded torch.distributed.checkpoint chunk by chunk, ``shards`` writes safetensors
shards tensor by tensor, ``plan`` sizes an import from config.json and the index alone.
"""
