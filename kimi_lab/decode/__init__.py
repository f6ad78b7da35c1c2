"""Decoding a checkpoint: loading it (any kimi_lab or import-hf format), the one generation path
(prefill, the latent KV cache, sampling), and the one tool turn that training, chat, serving and the
swarm share. Above the model and data; below the phases that sample from it and the servers."""
