"""Typed schemas for every config group.

Hydra merges the YAML files in ``conf/`` into these dataclasses, so an unknown key
or a value of the wrong type fails at composition time and names the full key
(``model.moe.top_kk``). Cross-field rules (top-k <= experts, ...) live in
``validate.py``; nothing here derives one field from another, so overrides are
never silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

from kimi_lab.config.swarm import SwarmConfig


class MoEBackend(str, Enum):
    auto = "auto"
    torch = "torch"
    megablocks = "megablocks"


class RopeScaling(str, Enum):
    none = "none"
    yarn = "yarn"


# Lightning's precision names; "auto" = bf16-mixed where the device multiplies bf16
# natively, else 32-true. (A plain string, validated, since the names contain "-".)
PRECISIONS = ("auto", "32-true", "bf16-mixed", "bf16-true", "16-mixed")


class LoggerKind(str, Enum):
    wandb = "wandb"
    csv = "csv"
    none = "none"


class WandbMode(str, Enum):
    auto = "auto"  # online when an API key is configured, else offline
    offline = "offline"
    online = "online"
    disabled = "disabled"


class OptimizerName(str, Enum):
    adamw = "adamw"  # AdamW everywhere
    muon = "muon"  # Muon on weight matrices, AdamW on the rest
    muonclip = "muonclip"  # Muon + QK-Clip (K2)


class ActivationCheckpointing(str, Enum):
    none = "none"  # keep every activation for the backward pass
    full = "full"  # each decoder layer keeps its input only and recomputes the rest in backward
    moe = "moe"  # recompute only the routed experts (their token copies and hidden activations)


class PhaseName(str, Enum):
    pretrain = "pretrain"
    sft = "sft"
    rl = "rl"
    parl = "parl"


# --------------------------------------------------------------------------- model


@dataclass
class RopeConfig:
    theta: float = 10000.0
    scaling: RopeScaling = RopeScaling.none
    # YaRN (used when scaling=yarn): context extended `factor` times beyond
    # `original_max_seq_len`; frequencies between beta_slow and beta_fast are blended.
    factor: float = 1.0
    original_max_seq_len: int = 4096
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0


@dataclass
class AttentionConfig:
    """Multi-head Latent Attention (DeepSeek-V2/V3, K2)."""

    n_heads: int = 4
    q_lora_rank: int | None = None  # None: a full-rank query projection
    kv_lora_rank: int = 32
    qk_nope_head_dim: int = 16
    qk_rope_head_dim: int = 8
    v_head_dim: int = 16
    rope: RopeConfig = field(default_factory=RopeConfig)


@dataclass
class MoEConfig:
    n_routed_experts: int = 8
    n_shared_experts: int = 1
    top_k: int = 2
    expert_ffn_dim: int = 64
    routed_scaling_factor: float = 1.0
    # Aux-loss-free balancing: after every optimizer step each expert's selection
    # bias moves by this much towards the mean load (DeepSeek-V3's u).
    bias_update_rate: float = 1e-3
    seq_aux_loss_coef: float = 0.0  # sequence-wise balance loss (alpha); 0 disables
    z_loss_coef: float = 0.0  # router z-loss; 0 disables
    backend: MoEBackend = MoEBackend.auto
    # Expert parallelism: the routed experts are split over this many ranks (each holds
    # n_routed_experts / expert_parallel of them, whole) and tokens travel to their experts
    # by all-to-all. It must divide the number of processes; 1: every rank holds all experts.
    # A way to run, not part of the architecture: checkpoints are the same for every value.
    expert_parallel: int = 1


@dataclass
class VisionConfig:
    """MoonViT-3D and its projector (K2.5); the defaults are the real shape (about 400M parameters)."""

    hidden_size: int = 1152
    n_layers: int = 27
    n_heads: int = 16
    ffn_dim: int = 4304
    patch_size: int = 14
    pos_emb_size: int = 64  # the learned 2-D position grid (side), interpolated to each image
    pos_emb_time: int = 4  # frames per video chunk that get a time embedding
    # "joint": one attention over a video chunk's frames (space and time, K2.5); "per_frame":
    # each frame attends only to itself, chunks still mean-pooled over time (the ablation).
    temporal_attention: str = "joint"
    merge_size: int = 2  # the projector merges merge_size x merge_size patches into one LM token
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    # Placeholder token ids in the LM input (kimi_lab's tokenizer: <|image_pad|>, <|video_pad|>;
    # the released K2.5 tokenizer uses 163605 and 163840).
    image_token_id: int = 14
    video_token_id: int = 15


@dataclass
class ModelConfig:
    name: str = "custom"
    vocab_size: int = 512
    hidden_size: int = 64
    n_layers: int = 2
    first_k_dense: int = 1
    dense_ffn_dim: int = 128
    max_seq_len: int = 4096
    norm_eps: float = 1e-6
    init_std: float = 0.02
    tie_embeddings: bool = False
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    vision: VisionConfig | None = None  # None: a text-only K2 model


# ---------------------------------------------------------------------------- data


@dataclass
class SourceConfig:
    """One stream of WebDataset shards: a folder from ``kimi-lab data build`` (train-*.tar,
    val-*.tar), a single .tar, or a brace pattern such as shards-{0000..0009}.tar."""

    path: str = "data/text"
    weight: float = 1.0  # relative share among the sources of its kind (text or vision)


@dataclass
class FusionConfig:
    """When vision joins the mix, and how much of it there is afterwards (K2.5: constant)."""

    vision_start: float = 0.0  # fraction of trainer.max_steps before the first vision sample
    # Vision placeholder tokens / all input tokens once vision has started; null mixes
    # every source by its weight alone.
    vision_ratio: float | None = None


@dataclass
class VisionDataConfig:
    """How images and video become patches (MoonViT-3D's input) and placeholder tokens."""

    # In a composed config both follow model.vision (conf/config.yaml); validation rejects a mismatch.
    patch_size: int = 14
    merge_size: int = 2  # the projector merges merge_size x merge_size patches into one token
    max_patches: int = 576  # per image or video frame, before merging; larger inputs are downscaled
    chunk_frames: int = 4  # video frames encoded together (one chunk -> one frame's worth of tokens)
    max_frames: int = 16  # frames sampled from a clip


@dataclass
class DataConfig:
    # name -> SourceConfig. Untyped here so that a source can be added from the command
    # line (+data.sources.mine={path:...,weight:...}); to_run_config() checks each entry.
    sources: dict[str, Any] = field(default_factory=dict)
    # Byte-level BPE; built from the Python standard library and cached here when missing.
    tokenizer: str = "data/tokenizers/bpe-${model.vocab_size}.json"
    seq_len: int = 128
    batch_size: int = 8
    num_workers: int = 0
    shuffle_buffer: int = 1000  # samples per source; a resume may skip at most these
    val_batches: int = 8  # per source
    fusion: FusionConfig = field(default_factory=FusionConfig)
    vision: VisionDataConfig = field(default_factory=VisionDataConfig)
    strict: bool = False  # raise on the first bad sample instead of skipping and counting it
    allow_unsafe_urls: bool = False  # pipe: and remote URLs run commands / reach the network


# -------------------------------------------------------------------------- phases


@dataclass
class LrScaleConfig:
    """Per-module learning-rate multipliers; 0 freezes the module (K2.5's staged training)."""

    language_model: float = 1.0
    vision_tower: float = 1.0
    projector: float = 1.0


@dataclass
class OptimConfig:
    name: OptimizerName = OptimizerName.adamw
    lr: float = 3e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    lr_scale: LrScaleConfig = field(default_factory=LrScaleConfig)
    # Muon (used by muon and muonclip)
    momentum: float = 0.95
    nesterov: bool = False
    ns_steps: int = 5  # quintic Newton-Schulz steps (Moonlight / K2: 5, coefficients 3.4445, -4.7750, 2.0315)
    # Cubic steps after the quintic that bring singular values to 1; 0 is the reference, 2 makes each
    # update 12-16% larger than K2's.
    ns_polish_steps: int = 0
    # QK-Clip (muonclip): heads whose largest pre-softmax logit exceeds tau are rescaled
    qk_clip_tau: float = 100.0


@dataclass
class ScheduleConfig:
    """Warmup-stable-decay: linear warmup, a long constant stage, cosine to a floor."""

    warmup_steps: int = 20
    decay_fraction: float = 0.2  # share of trainer.max_steps spent in the final decay
    min_lr_ratio: float = 0.1  # floor = lr * min_lr_ratio
    # In tokens instead (as K2's schedule is stated): when set, these replace the two above,
    # converted with tokens per step = batch_size x seq_len x accumulation x data-parallel size.
    warmup_tokens: int | None = None
    decay_tokens: int | None = None


@dataclass
class ToolConfig:
    """The sandboxed ``python`` tool (bubblewrap): limits per call."""

    wall_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    output_bytes: int = 16384
    observation_chars: int = 1200  # what the model reads of a tool result


@dataclass
class RLConfig:
    """Joint text-vision RL (K2.5): K samples per prompt, the masked policy-gradient loss."""

    # Task prompts: name -> shard folder (kimi-lab data build visual-tasks), mixed by weight.
    tasks: dict[str, Any] = field(default_factory=dict)
    prompts_per_step: int = 4
    samples_per_prompt: int = 4  # K
    max_new_tokens: int = 256  # per assistant turn
    max_turns: int = 3  # assistant turns per episode (each may call the tool)
    temperature: float = 1.0
    # L = -(1/N) sum 1[alpha <= log(pi/pi_old) <= beta] * (r - mean_K r) / tau * log pi
    alpha: float = -0.2
    beta: float = 0.2
    tau: float = 1.0
    # Toggle (token efficiency): every other block of toggle_every steps, add a length
    # penalty when the batch's mean accuracy exceeds toggle_lambda; budget = the
    # toggle_rho-th percentile of correct responses' lengths. Off when toggle_every = 0.
    toggle_every: int = 0
    toggle_lambda: float = 0.5
    toggle_rho: float = 50.0
    eval_prompts: int = 32  # per task source, at validation
    tool: ToolConfig = field(default_factory=ToolConfig)


PARALLEL_FORMS = ("spawn", "degree")  # ParlConfig.parallel_form (kimi_lab.swarm.reward computes them)
FINISH_FORMS = ("completed", "answered")  # ParlConfig.finish_form


@dataclass
class ParlConfig:
    """Parallel-Agent RL (K2.5): train the orchestrator; sub-agents are frozen.

    r = r_perf + lambda1 * r_parallel + lambda2 * r_finish, lambdas annealed to 0
    (``kimi_lab.swarm.reward`` documents the forms). The policy loss is phase rl's.
    """

    tasks: str = ""  # folder of kimi-lab data build swarm-tasks
    prompts_per_step: int = 2
    samples_per_prompt: int = 4  # K
    max_new_tokens: int = 160  # per orchestrator turn
    temperature: float = 1.0
    alpha: float = -0.2
    beta: float = 0.2
    tau: float = 1.0
    lambda1: float = 0.5  # r_parallel
    lambda2: float = 0.5  # r_finish
    # K2.5 anneals both lambdas to 0: held until anneal_start x trainer.max_steps, then
    # linearly to 0 at anneal_end x trainer.max_steps; the rest of training optimises r_perf
    # alone. anneal=false holds them for the whole run (an ablation).
    anneal: bool = True
    anneal_start: float = 0.0
    anneal_end: float = 0.75
    parallel_form: str = "spawn"  # spawn | degree
    finish_form: str = "completed"  # completed | answered
    # "scripted": sub-agents follow the task's verified calls; else a checkpoint path whose
    # model runs every sub-agent, frozen.
    subagent: str = "scripted"
    subagent_temperature: float = 0.0
    # The episodes' limits (budgets in critical steps, timeouts): the runtime's own schema.
    swarm: SwarmConfig = field(default_factory=SwarmConfig)
    eval_tasks: int = 16
    traces_per_eval: int = 4  # val episodes written to swarm/*.jsonl per validation


@dataclass
class PhaseConfig:
    name: PhaseName = PhaseName.pretrain
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    init_from: str | None = None  # a checkpoint of an earlier phase to start from
    # Record every attention head's largest logit (QK-Clip needs it; attn_logits.parquet shows it).
    track_attn_logits: bool = True
    rl: RLConfig = field(default_factory=RLConfig)  # used by phase rl only
    parl: ParlConfig = field(default_factory=ParlConfig)  # used by phase parl only


# ------------------------------------------------------------------- trainer, logs


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"  # one of PRECISIONS
    max_steps: int = 200
    accumulate_grad_batches: int = 1
    gradient_clip_val: float = 1.0
    val_check_interval: int = 50
    limit_val_batches: int = 8
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: int = 100
    deterministic: bool = False
    fast_dev_run: bool = False
    num_threads: int | None = None  # torch intra-op threads; None keeps torch's choice
    # NaN/Inf loss or gradient: the step is skipped; this many in a row stop the run (0: never).
    max_nonfinite_steps: int = 5
    progress_bar: bool = True
    # trainer=fsdp2 only: HSDP, the ranks split into this many replicas, the weights sharded
    # within each (fewer, larger all-gathers; gradients averaged across replicas). 1: plain FSDP2.
    dp_replicate: int = 1
    activation_checkpointing: ActivationCheckpointing = ActivationCheckpointing.none


@dataclass
class LoggerConfig:
    kind: LoggerKind = LoggerKind.wandb
    project: str = "kimi_lab"
    entity: str | None = None
    mode: WandbMode = WandbMode.auto
    tags: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- root


@dataclass
class RunConfig:
    experiment: str = "default"
    seed: int = 0
    runs_dir: str = "runs"
    # None: start fresh; "auto": resume this run directory's checkpoints/last.ckpt
    # when present; any other value: a checkpoint file to resume from.
    ckpt_path: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    phase: PhaseConfig = field(default_factory=PhaseConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def source_config(name: str, value: Any) -> SourceConfig:
    """A ``data.sources`` entry as a SourceConfig, with errors that name the key."""
    if isinstance(value, SourceConfig):
        return value
    if not isinstance(value, dict):
        raise TypeError(f"data.sources.{name} must be a mapping with keys path, weight (got {value!r})")
    allowed = {f.name for f in fields(SourceConfig)}
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise KeyError(
            f"data.sources.{name}.{unknown[0]} is not a source key (allowed: {', '.join(sorted(allowed))})"
        )
    path, weight = value.get("path", SourceConfig.path), value.get("weight", SourceConfig.weight)
    if not isinstance(path, str) or not isinstance(weight, (int, float)) or isinstance(weight, bool):
        raise TypeError(f"data.sources.{name}: path must be a string and weight a number")
    return SourceConfig(path=path, weight=float(weight))
