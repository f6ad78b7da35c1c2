"""Names shared by everything that writes a run directory and everything that reads one.

The dashboard's pages read run folders through these names alone, and this is the one
kimi_lab module they import when they start; only the routing inspector imports more (the
checkpoint loader, the tokenizer and image preprocessing, when it routes). So this module
must stay free of torch and heavy imports.
"""

from __future__ import annotations

# ---------------------------------------------------------------- run directory files
CONFIG_FILE = ".hydra/config.yaml"  # the resolved config, written by Hydra
OVERRIDES_FILE = ".hydra/overrides.yaml"
METRICS_FILE = "metrics.parquet"  # long format: step, key, value
MOE_LOAD_FILE = "moe_load.parquet"  # step, layer (the model's index: MoE layers only), expert, tokens, bias
ATTN_LOGITS_FILE = "attn_logits.parquet"  # step, layer, head, max_logit, clipped, tower
SWARM_DIR = "swarm"  # one JSONL trace per episode
SWARM_EPISODES_FILE = "episodes.jsonl"  # kimi-lab swarm run: one EpisodeSummary per line
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
WANDB_DIR = "wandb"
WANDB_ID_FILE = "wandb_run_id"  # the wandb run id, reused when the run resumes
STATUS_FILE = "status.json"  # {"status": one of RUN_STATUSES, "step", "pid", "host", "final": {...}}
CHECKPOINT_COUNTERS = "kimi_lab_counters"  # a checkpoint's running totals (tokens, skipped steps, ...)
LOG_FILE = "train.log"  # the run's log (Hydra names it after the job, kimi_lab.train)
# kimi-lab evaluate (lm-evaluation-harness): <run>/lm_eval/<checkpoint path, sanitised>/results_<time>.json
# (lm-eval's own format) and samples_<task>_<time>.jsonl with --log-samples
HARNESS_DIR = "lm_eval"
HARNESS_RESULTS_GLOB = "results_*.json"

METRICS_COLUMNS = ("step", "key", "value")
MOE_LOAD_COLUMNS = ("step", "layer", "expert", "tokens", "bias")
# max_logit: the head's largest pre-softmax logit over the steps since the previous logged
# step; clipped: QK-Clip rescaled the head in one of them; tower: language_model | vision_tower
ATTN_LOGITS_COLUMNS = ("step", "layer", "head", "max_logit", "clipped", "tower")

# --------------------------------------------------------------------- metric keys
TRAIN_LOSS = "train/loss"  # total objective: cross-entropy + router losses
TRAIN_CE = "train/ce_loss"
TRAIN_AUX = "train/aux_loss"  # weighted router losses
TRAIN_SEQ_BALANCE = "train/seq_balance_loss"  # unweighted, mean over MoE layers
TRAIN_Z_LOSS = "train/router_z_loss"  # unweighted, mean over MoE layers
TRAIN_LR = "train/lr"
TRAIN_SKIPPED_BATCHES = "train/skipped_batches"  # batches that reached no trainable parameter
TRAIN_SKIPPED_STEPS = "train/nonfinite_steps"  # steps skipped for a NaN/Inf loss or gradient (cumulative)
TRAIN_TOKENS = "train/tokens"  # running total of real (non-padding) tokens, all ranks, across resumes
TRAIN_TOKENS_PER_SEC = "train/tokens_per_sec"  # real tokens per second, all ranks
VAL_LOSS = "val/loss"
VAL_PPL = "val/ppl"
MOE_IMBALANCE = "moe/imbalance"  # max/mean tokens per expert, mean over MoE layers
MOE_IMBALANCE_MAX = "moe/imbalance_max"  # the worst layer
MOE_DEAD_EXPERTS = "moe/dead_experts"  # experts that received no token in the step, summed over layers

# attention logits (language model unless named; since the previous logged step)
ATTN_MAX_LOGIT = "attn/max_logit"
ATTN_LAYER_MAX_LOGIT = "attn/max_logit/layer_{layer}"
ATTN_VISION_MAX_LOGIT = "attn/vision_max_logit"
ATTN_CLIPPED_HEADS = "attn/clipped_heads"  # heads QK-Clip rescaled, both towers
ATTN_CLIPPED_HEAD_STEPS = "attn/clipped_head_steps"  # cumulative

# data (per logged step; skipped counts are cumulative, by reason)
DATA_TEXT_TOKENS = "data/text_tokens"
DATA_IMAGE_TOKENS = "data/image_tokens"
DATA_VIDEO_TOKENS = "data/video_tokens"
DATA_PAD_TOKENS = "data/pad_tokens"
DATA_VISION_RATIO = "data/vision_ratio"  # share of this step's input tokens from vision sources
DATA_VISION_RATIO_TARGET = "data/vision_ratio_target"  # the fusion schedule's target (0 before vision starts)
DATA_SKIPPED_PREFIX = "data/skipped/"  # + reason, see kimi_lab.data.decode.SKIP_REASONS
DATA_WAIT_FRACTION = "data/wait_fraction"  # share of the step spent waiting for the batch
VAL_SOURCE_LOSS = "val/{source}/loss"  # per data source

# RL (phase rl): per step, means over the step's episodes
RL_REWARD = "rl/reward"  # task reward before shaping
RL_ACCURACY = "rl/accuracy"  # share of episodes with a correct answer
RL_SOURCE_REWARD = "rl/{source}/reward"  # per task source (e.g. text vs vision tasks)
RL_RESPONSE_TOKENS = "rl/response_tokens"  # sampled tokens per episode (all turns)
RL_TOOL_CALLS = "rl/tool_calls"  # per episode
RL_TOOL_ERRORS = "rl/tool_error_rate"  # failed or malformed calls / calls
RL_TRUNCATED = "rl/truncated"  # episodes cut off by a token budget
RL_KEPT_FRACTION = "rl/kept_fraction"  # sampled tokens inside [alpha, beta]
RL_LOG_RATIO = "rl/log_ratio"  # mean log(pi / pi_old) of sampled tokens
RL_TOGGLE = "rl/toggle"  # 1 when Toggle's length term applied this step
# sampling speed, phases rl and parl: tokens the policy sampled per second of playing episodes,
# and that time's share of the whole training step (optimizer step included)
RL_ROLLOUT_TOKENS_PER_S = "rl/rollout_tokens_per_s"
RL_SAMPLING_FRACTION = "rl/sampling_fraction"
VAL_SOURCE_REWARD = "val/{source}/reward"  # greedy, one sample per val prompt
VAL_SOURCE_ACCURACY = "val/{source}/accuracy"
# An evaluation's summary (kimi-lab eval, an experiment's eval stages): {"n", "reward", "accuracy"}
# per task source and per task family, beside "all" and the tool-use means
EVAL_SOURCE = "source/{source}"
EVAL_FAMILY = "family/{family}"

# phase parl (agent swarm): per training step, means over the step's episodes
PARL_REWARD = "parl/reward"  # the total, lambdas included
PARL_PERF = "parl/r_perf"  # task score: item-F1 (wide), exact match (deep)
PARL_PARALLEL = "parl/r_parallel"
PARL_FINISH = "parl/r_finish"
PARL_LAMBDA1 = "parl/lambda1"
PARL_LAMBDA2 = "parl/lambda2"
PARL_CRITICAL_STEPS = "parl/critical_steps"
PARL_TOTAL_STEPS = "parl/total_steps"
PARL_SUBAGENTS = "parl/subagents"  # sub-agents created
PARL_PARALLELISM = "parl/parallelism"  # mean assignments per stage
PARL_OVER_BUDGET = "parl/over_budget"  # share of episodes that ran out of a budget
PARL_DELEGATED = "parl/delegated"  # share of episodes that assigned any work (0: serial collapse)
PARL_EXCESS = "parl/excess_subagents"  # sub-agents beyond the task's width (spurious parallelism)
PARL_TRUNCATED = "parl/truncated_turns"  # turns cut by the token budget per episode (any agent's)
PARL_KEPT_FRACTION = "parl/kept_fraction"
VAL_PARL = "val/parl/{key}"  # greedy episodes on held-out tasks: score, critical_steps, ...

# status.json's "status": a run killed outright (SIGKILL, power loss) stays "running" with a dead pid
STATUS_RUNNING = "running"
STATUS_FINISHED = "finished"  # reached trainer.max_steps
STATUS_FAILED = "failed"  # an exception stopped it
STATUS_INTERRUPTED = "interrupted"  # Ctrl-C, SIGTERM or a pre-emption signal: checkpointed, then stopped
RUN_STATUSES = (STATUS_RUNNING, STATUS_FINISHED, STATUS_FAILED, STATUS_INTERRUPTED)

# ------------------------------------------------------------------ swarm traces
# One JSON object per line in <run>/swarm/<episode>.jsonl:
# {"v": 1, "t": seconds, "step": critical step, "agent": "orchestrator" | <name>,
#  "kind": one of SWARM_EVENT_KINDS, "parent": <agent> | null, "detail": {...}}
SWARM_TRACE_VERSION = 1
SWARM_ORCHESTRATOR = "orchestrator"
SWARM_EVENT_KINDS = ("spawn", "assign", "tool_call", "tool_result", "message", "finish", "error")
# detail keys: "stage" (int) on assign/finish; "steps" (int) on a sub-agent's finish;
# "reward" ({component: value}) on the orchestrator's finish

# ------------------------------------------------------- loss on named token subsets
# A sample's record may mark spans of its text as a named subset (kimi_lab.data.schema.LOSS_SPANS);
# validation then also logs the loss on those tokens alone, per source. Bit i of a batch's
# "loss_subsets" mask is LOSS_SUBSETS[i].
LOSS_SUBSETS = ("motion",)  # motion: the caption words only motion shows (direction, event frame)
VAL_SOURCE_SUBSET_LOSS = "val/{source}/{subset}_loss"  # e.g. val/video/motion_loss
