"""Names shared by everything that writes a run directory and everything that reads one.

The dashboard imports this module (and only this one) from kimi_lab, so it must
stay free of torch and heavy imports.
"""

from __future__ import annotations

# ---------------------------------------------------------------- run directory files
CONFIG_FILE = ".hydra/config.yaml"  # the resolved config, written by Hydra
OVERRIDES_FILE = ".hydra/overrides.yaml"
METRICS_FILE = "metrics.parquet"  # long format: step, key, value
MOE_LOAD_FILE = "moe_load.parquet"  # step, layer, expert, tokens, bias
ATTN_LOGITS_FILE = "attn_logits.parquet"  # step, layer, head, max_logit, clipped
SWARM_DIR = "swarm"  # one JSONL trace per episode
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
WANDB_DIR = "wandb"
WANDB_ID_FILE = "wandb_run_id"  # the wandb run id, reused when the run resumes
STATUS_FILE = "status.json"  # {"status": running|finished|failed|interrupted, "step", "final": {...}}

METRICS_COLUMNS = ("step", "key", "value")
MOE_LOAD_COLUMNS = ("step", "layer", "expert", "tokens", "bias")
ATTN_LOGITS_COLUMNS = ("step", "layer", "head", "max_logit", "clipped")

# --------------------------------------------------------------------- metric keys
TRAIN_LOSS = "train/loss"  # total objective: cross-entropy + router losses
TRAIN_CE = "train/ce_loss"
TRAIN_AUX = "train/aux_loss"  # weighted router losses
TRAIN_SEQ_BALANCE = "train/seq_balance_loss"  # unweighted, mean over MoE layers
TRAIN_Z_LOSS = "train/router_z_loss"  # unweighted, mean over MoE layers
TRAIN_LR = "train/lr"
TRAIN_TOKENS = "train/tokens"  # cumulative tokens seen (all ranks)
TRAIN_TOKENS_PER_SEC = "train/tokens_per_sec"  # all ranks
VAL_LOSS = "val/loss"
VAL_PPL = "val/ppl"
MOE_IMBALANCE = "moe/imbalance"  # max/mean tokens per expert, mean over MoE layers
MOE_IMBALANCE_MAX = "moe/imbalance_max"  # the worst layer
MOE_DEAD_EXPERTS = "moe/dead_experts"  # experts that received no token in the step, summed over layers

RUN_STATUSES = ("running", "finished", "failed", "interrupted")
