"""Hugging Face checkpoints in and out, streamed tensor by tensor.

The released Kimi checkpoints are far larger than one machine's memory (K2: about
1T parameters in FP8; K2.5: routed experts in INT4), so nothing here ever holds a
whole model: ``config`` reads config.json, ``source`` reads safetensors shards one
tensor at a time (dequantizing FP8 block-scaled and INT4 pack-quantized weights
with ``quant``), ``layout`` says which HF tensors make each kimi_lab tensor,
``dcp_stream`` writes a sharded torch.distributed.checkpoint chunk by chunk,
``importer`` and ``exporter`` drive the two directions, ``plan`` sizes a
conversion from config.json and the index alone.
"""
