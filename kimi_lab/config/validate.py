"""Cross-field checks that run after composition and before anything is built.

Each failure names the offending key(s) and the allowed range, in one line.
"""

from __future__ import annotations

from kimi_lab.config.schema import (
    FINISH_FORMS,
    PARALLEL_FORMS,
    PRECISIONS,
    ModelConfig,
    ParlConfig,
    PhaseName,
    RLConfig,
    RopeScaling,
    RunConfig,
    source_config,
)
from kimi_lab.errors import ConfigError


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate_model(m: ModelConfig, prefix: str = "model") -> None:
    p = prefix
    _require(m.vocab_size >= 2, f"{p}.vocab_size={m.vocab_size} must be >= 2")
    _require(m.hidden_size >= 1, f"{p}.hidden_size={m.hidden_size} must be >= 1")
    _require(m.n_layers >= 1, f"{p}.n_layers={m.n_layers} must be >= 1")
    _require(
        0 <= m.first_k_dense <= m.n_layers,
        f"{p}.first_k_dense={m.first_k_dense} must be between 0 and {p}.n_layers={m.n_layers}",
    )
    if m.first_k_dense > 0:
        _require(m.dense_ffn_dim >= 1, f"{p}.dense_ffn_dim={m.dense_ffn_dim} must be >= 1")
    _require(m.max_seq_len >= 1, f"{p}.max_seq_len={m.max_seq_len} must be >= 1")
    _require(m.norm_eps > 0, f"{p}.norm_eps={m.norm_eps} must be > 0")
    _require(m.init_std > 0, f"{p}.init_std={m.init_std} must be > 0")

    a = m.attention
    pa = f"{p}.attention"
    _require(a.n_heads >= 1, f"{pa}.n_heads={a.n_heads} must be >= 1")
    _require(
        a.q_lora_rank is None or a.q_lora_rank >= 1, f"{pa}.q_lora_rank={a.q_lora_rank} must be null or >= 1"
    )
    _require(a.kv_lora_rank >= 1, f"{pa}.kv_lora_rank={a.kv_lora_rank} must be >= 1")
    _require(a.qk_nope_head_dim >= 0, f"{pa}.qk_nope_head_dim={a.qk_nope_head_dim} must be >= 0")
    _require(
        a.qk_rope_head_dim >= 2 and a.qk_rope_head_dim % 2 == 0,
        f"{pa}.qk_rope_head_dim={a.qk_rope_head_dim} must be an even number >= 2 (RoPE rotates pairs)",
    )
    _require(a.v_head_dim >= 1, f"{pa}.v_head_dim={a.v_head_dim} must be >= 1")
    r = a.rope
    pr = f"{pa}.rope"
    _require(r.theta > 0, f"{pr}.theta={r.theta} must be > 0")
    if r.scaling == RopeScaling.yarn:
        _require(r.factor >= 1.0, f"{pr}.factor={r.factor} must be >= 1 for YaRN")
        _require(r.original_max_seq_len >= 1, f"{pr}.original_max_seq_len must be >= 1")
        _require(
            # K2-Instruct and its 0905 update ship beta_fast == beta_slow == 1 (a one-dimension ramp)
            r.beta_fast >= r.beta_slow > 0,
            f"{pr}.beta_fast={r.beta_fast} must be >= {pr}.beta_slow={r.beta_slow} > 0",
        )

    if m.vision is not None:
        v, pv = m.vision, f"{p}.vision"
        _require(
            v.hidden_size >= 1 and v.n_heads >= 1 and v.n_layers >= 1 and v.ffn_dim >= 1,
            f"{pv}: sizes must be >= 1",
        )
        _require(
            v.hidden_size % v.n_heads == 0,
            f"{pv}.hidden_size={v.hidden_size} must be a multiple of {pv}.n_heads={v.n_heads}",
        )
        head_dim = v.hidden_size // v.n_heads
        _require(
            head_dim % 4 == 0,
            f"{pv}: head dim {head_dim} must be a multiple of 4 (2-D RoPE rotates pairs on two axes)",
        )
        _require(v.patch_size >= 1 and v.merge_size >= 1, f"{pv}.patch_size and merge_size must be >= 1")
        _require(
            v.temporal_attention in ("joint", "per_frame"),
            f"{pv}.temporal_attention={v.temporal_attention!r}: choose joint or per_frame",
        )
        _require(
            v.pos_emb_size >= 1 and v.pos_emb_time >= 1, f"{pv}.pos_emb_size and pos_emb_time must be >= 1"
        )
        _require(
            v.image_token_id >= 0 and v.video_token_id >= 0,
            f"{pv}.image_token_id and video_token_id must be >= 0",
        )
        _require(v.image_token_id != v.video_token_id, f"{pv}.image_token_id and video_token_id must differ")

    if m.first_k_dense < m.n_layers:  # at least one MoE layer
        e = m.moe
        pm = f"{p}.moe"
        _require(e.n_routed_experts >= 1, f"{pm}.n_routed_experts={e.n_routed_experts} must be >= 1")
        _require(
            1 <= e.top_k <= e.n_routed_experts,
            f"{pm}.top_k={e.top_k} must be between 1 and {pm}.n_routed_experts={e.n_routed_experts}",
        )
        _require(e.n_shared_experts >= 0, f"{pm}.n_shared_experts={e.n_shared_experts} must be >= 0")
        _require(e.expert_ffn_dim >= 1, f"{pm}.expert_ffn_dim={e.expert_ffn_dim} must be >= 1")
        _require(e.routed_scaling_factor > 0, f"{pm}.routed_scaling_factor must be > 0")
        _require(e.bias_update_rate >= 0, f"{pm}.bias_update_rate={e.bias_update_rate} must be >= 0")
        _require(e.seq_aux_loss_coef >= 0, f"{pm}.seq_aux_loss_coef must be >= 0")
        _require(e.z_loss_coef >= 0, f"{pm}.z_loss_coef must be >= 0")
        _require(e.expert_parallel >= 1, f"{pm}.expert_parallel={e.expert_parallel} must be >= 1")
        _require(
            e.n_routed_experts % e.expert_parallel == 0,
            f"{pm}.expert_parallel={e.expert_parallel} must divide {pm}.n_routed_experts={e.n_routed_experts} "
            "(each rank holds whole experts)",
        )


def validate_rl(rl: RLConfig) -> None:
    p = "phase.rl"
    _require(len(rl.tasks) > 0, f"{p}.tasks must name at least one folder of task prompts")
    for name, value in rl.tasks.items():
        try:
            src = source_config(name, value)
        except (KeyError, TypeError) as exn:
            raise ConfigError(f"{p}.tasks: {str(exn).strip(chr(39))}") from None
        _require(src.weight >= 0, f"{p}.tasks.{name}.weight={src.weight} must be >= 0")
    _require(rl.prompts_per_step >= 1, f"{p}.prompts_per_step={rl.prompts_per_step} must be >= 1")
    _require(
        rl.samples_per_prompt >= 2,
        f"{p}.samples_per_prompt={rl.samples_per_prompt} must be >= 2 (advantages compare samples of a prompt)",
    )
    _require(rl.max_new_tokens >= 1 and rl.max_turns >= 1, f"{p}.max_new_tokens and max_turns must be >= 1")
    _require(rl.temperature > 0, f"{p}.temperature={rl.temperature} must be > 0 for sampling")
    _require(rl.alpha < 0 < rl.beta, f"{p}: need alpha < 0 < beta (got alpha={rl.alpha}, beta={rl.beta})")
    _require(rl.tau > 0, f"{p}.tau={rl.tau} must be > 0")
    _require(rl.toggle_every >= 0, f"{p}.toggle_every={rl.toggle_every} must be >= 0 (0 disables Toggle)")
    _require(0 <= rl.toggle_rho <= 100, f"{p}.toggle_rho={rl.toggle_rho} must be a percentile in [0, 100]")
    t = rl.tool
    _require(
        t.wall_s > 0 and t.cpu_s >= 1 and t.memory_mb >= 64,
        f"{p}.tool: wall_s > 0, cpu_s >= 1, memory_mb >= 64",
    )


def validate_parl(pc: ParlConfig) -> None:
    p = "phase.parl"
    _require(bool(pc.tasks), f"{p}.tasks must name a folder of kimi-lab data build swarm-tasks")
    _require(pc.prompts_per_step >= 1, f"{p}.prompts_per_step={pc.prompts_per_step} must be >= 1")
    _require(
        pc.samples_per_prompt >= 2,
        f"{p}.samples_per_prompt={pc.samples_per_prompt} must be >= 2 (advantages compare samples of a task)",
    )
    _require(pc.max_new_tokens >= 1, f"{p}.max_new_tokens must be >= 1")
    _require(pc.temperature > 0, f"{p}.temperature={pc.temperature} must be > 0 for sampling")
    _require(pc.alpha < 0 < pc.beta, f"{p}: need alpha < 0 < beta (got alpha={pc.alpha}, beta={pc.beta})")
    _require(pc.tau > 0, f"{p}.tau={pc.tau} must be > 0")
    _require(pc.lambda1 >= 0 and pc.lambda2 >= 0, f"{p}: lambda1 and lambda2 must be >= 0")
    _require(
        0.0 <= pc.anneal_start < pc.anneal_end <= 1.0,
        f"{p}: need 0 <= anneal_start < anneal_end <= 1 (fractions of trainer.max_steps; "
        f"got {pc.anneal_start}, {pc.anneal_end})",
    )
    _require(
        pc.parallel_form in PARALLEL_FORMS,
        f"{p}.parallel_form={pc.parallel_form!r}: choose from {', '.join(PARALLEL_FORMS)}",
    )
    _require(
        pc.finish_form in FINISH_FORMS,
        f"{p}.finish_form={pc.finish_form!r}: choose from {', '.join(FINISH_FORMS)}",
    )


def validate_expert_parallel(cfg: RunConfig) -> None:
    ep, t = cfg.model.moe.expert_parallel, cfg.trainer
    if ep == 1 or cfg.model.first_k_dense >= cfg.model.n_layers:
        return
    key = f"model.moe.expert_parallel={ep}"
    world = t.devices * t.num_nodes
    _require(
        world % ep == 0,
        f"{key} must divide the number of processes, trainer.devices x trainer.num_nodes = {world} "
        f"(e.g. trainer=ddp trainer.devices={ep})",
    )
    _require(
        t.strategy in ("ddp", "fsdp2"),
        f"{key} with trainer.strategy={t.strategy}: expert parallelism runs under trainer=ddp (non-expert "
        "weights replicated on every rank) or trainer=fsdp2 (non-expert weights sharded over all ranks, "
        "each rank's experts over what expert_parallel leaves)",
    )
    replica = world // t.dp_replicate if t.dp_replicate >= 1 and world % t.dp_replicate == 0 else world
    _require(
        replica % ep == 0,
        f"{key} must divide the ranks of one replica ({world} processes / trainer.dp_replicate="
        f"{t.dp_replicate} = {replica})",
    )
    _require(
        cfg.phase.name in (PhaseName.pretrain, PhaseName.sft),
        f"{key} with phase {cfg.phase.name.value}: every rank must run the same forward passes, and "
        "rollouts generate a different number of tokens per rank; use expert_parallel=1 for rl and parl",
    )


def validate_run(cfg: RunConfig) -> None:
    validate_model(cfg.model)
    d, t, ph = cfg.data, cfg.trainer, cfg.phase
    _require(d.seq_len >= 2, f"data.seq_len={d.seq_len} must be >= 2")
    _require(
        d.seq_len <= cfg.model.max_seq_len,
        f"data.seq_len={d.seq_len} must be <= model.max_seq_len={cfg.model.max_seq_len}",
    )
    _require(d.batch_size >= 1, f"data.batch_size={d.batch_size} must be >= 1")
    _require(d.num_workers >= 0, f"data.num_workers={d.num_workers} must be >= 0")
    _require(d.shuffle_buffer >= 0, f"data.shuffle_buffer={d.shuffle_buffer} must be >= 0")
    _require(d.val_batches >= 0, f"data.val_batches={d.val_batches} must be >= 0")
    if ph.name == PhaseName.rl:
        validate_rl(ph.rl)
    elif ph.name == PhaseName.parl:
        validate_parl(ph.parl)
    else:
        _require(len(d.sources) > 0, "data.sources must name at least one source")
        for name, src in d.sources.items():
            _require(src.weight >= 0, f"data.sources.{name}.weight={src.weight} must be >= 0")
        _require(
            any(s.weight > 0 for s in d.sources.values()), "data.sources: at least one weight must be > 0"
        )
    validate_expert_parallel(cfg)
    world = t.devices * t.num_nodes
    _require(
        t.dp_replicate >= 1 and world % t.dp_replicate == 0,
        f"trainer.dp_replicate={t.dp_replicate} must divide the number of processes, trainer.devices x "
        f"trainer.num_nodes = {world}",
    )
    _require(
        t.dp_replicate == 1 or t.strategy == "fsdp2",
        f"trainer.dp_replicate={t.dp_replicate} (HSDP) needs trainer=fsdp2 (got trainer.strategy={t.strategy})",
    )
    _require(t.max_nonfinite_steps >= 0, f"trainer.max_nonfinite_steps={t.max_nonfinite_steps} must be >= 0")
    f, v = d.fusion, d.vision
    _require(
        0 <= f.vision_start <= 1,
        f"data.fusion.vision_start={f.vision_start} must be in [0, 1] (a fraction of training)",
    )
    _require(
        f.vision_ratio is None or 0 < f.vision_ratio < 1,
        f"data.fusion.vision_ratio={f.vision_ratio} must be null or strictly between 0 and 1",
    )
    _require(v.patch_size >= 1 and v.merge_size >= 1, "data.vision.patch_size and merge_size must be >= 1")
    if cfg.model.vision is not None:  # the data must be patched as the tower was built
        for key in ("patch_size", "merge_size"):
            data_value, model_value = getattr(v, key), getattr(cfg.model.vision, key)
            _require(
                data_value == model_value,
                f"data.vision.{key}={data_value} but model.vision.{key}={model_value}: set model.vision.{key} "
                f"only (data.vision.{key} follows it)",
            )
    _require(
        v.chunk_frames >= 1 and v.max_frames >= 1, "data.vision.chunk_frames and max_frames must be >= 1"
    )
    _require(
        v.max_patches >= v.merge_size**2, f"data.vision.max_patches={v.max_patches} must be >= merge_size**2"
    )

    _require(t.max_steps >= 1, f"trainer.max_steps={t.max_steps} must be >= 1")
    _require(
        t.precision in PRECISIONS, f"trainer.precision={t.precision} must be one of {', '.join(PRECISIONS)}"
    )
    _require(t.devices >= 1, f"trainer.devices={t.devices} must be >= 1")
    _require(t.num_nodes >= 1, f"trainer.num_nodes={t.num_nodes} must be >= 1")
    _require(t.accumulate_grad_batches >= 1, "trainer.accumulate_grad_batches must be >= 1")
    _require(t.gradient_clip_val >= 0, "trainer.gradient_clip_val must be >= 0 (0 disables clipping)")
    _require(t.val_check_interval >= 1, f"trainer.val_check_interval={t.val_check_interval} must be >= 1")
    _require(t.log_every_n_steps >= 1, f"trainer.log_every_n_steps={t.log_every_n_steps} must be >= 1")
    _require(t.checkpoint_every_n_steps >= 1, "trainer.checkpoint_every_n_steps must be >= 1")
    _require(t.num_threads is None or t.num_threads >= 1, "trainer.num_threads must be null or >= 1")

    o, s = ph.optim, ph.schedule
    _require(o.lr > 0, f"phase.optim.lr={o.lr} must be > 0")
    _require(o.weight_decay >= 0, f"phase.optim.weight_decay={o.weight_decay} must be >= 0")
    _require(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, "phase.optim.beta1 and beta2 must be in [0, 1)")
    _require(o.eps > 0, "phase.optim.eps must be > 0")
    _require(s.warmup_steps >= 0, f"phase.schedule.warmup_steps={s.warmup_steps} must be >= 0")
    _require(
        0 <= s.decay_fraction <= 1, f"phase.schedule.decay_fraction={s.decay_fraction} must be in [0, 1]"
    )
    _require(0 <= s.min_lr_ratio <= 1, f"phase.schedule.min_lr_ratio={s.min_lr_ratio} must be in [0, 1]")
    _require(o.momentum >= 0 and o.momentum < 1, f"phase.optim.momentum={o.momentum} must be in [0, 1)")
    _require(
        o.ns_steps >= 1 and o.ns_polish_steps >= 0,
        "phase.optim.ns_steps must be >= 1 and ns_polish_steps >= 0",
    )
    _require(o.qk_clip_tau > 0, f"phase.optim.qk_clip_tau={o.qk_clip_tau} must be > 0")
