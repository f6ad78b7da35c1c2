"""What one rank holds while training, from the config alone (``kimi-lab plan``; ``kimi-lab
train`` prints it at start): before renting a cluster, whether K2 fits its accelerators.

Per rank, in bytes:
- parameters: under FSDP2 every tensor is split over the ranks of one replica (the routed
  experts over ``ep`` x ``dp_shard_mod_ep``, the rest over all ``dp_shard``); under DDP the
  non-expert weights are whole on every rank and the experts split over ``ep``. Stored in the
  parameter dtype: fp32 for ``32-true`` and ``bf16-mixed`` (bf16 only in the matmuls), bf16
  for ``bf16-true``.
- gradients: as the parameters (DDP adds its bucket copy of the replicated ones).
- optimizer state, fp32: AdamW two moments (8 bytes a parameter); Muon one momentum for the
  weight matrices (4 bytes) and AdamW for embeddings, the head, norms and biases.
- activations saved for the backward pass of one micro-batch (``data.batch_size`` x
  ``data.seq_len`` tokens per rank), counted per decoder layer from what this implementation's
  autograd saves (MLA, router, routed and shared experts, the dense layers, the fp32 logits and
  their loss), with each ``trainer.activation_checkpointing`` mode.
- buffers: FSDP2 gathers a unit's parameters whole (the unit being computed and the next,
  prefetched) and reduces its gradients through a buffer of the same size; the expert-parallel
  all-to-all sends and receives each token's ``top_k`` copies.
Temporaries inside one operation (a matmul's workspace, allocator slack) are not modelled: on
GPUs keep the headroom the verdict leaves (``HEADROOM``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from kimi_lab.config.schema import ActivationCheckpointing, ModelConfig, OptimizerName, RunConfig

GIB = 1 << 30
# usable memory of each accelerator (what nvidia-smi reports), and the share a plan may fill
ACCELERATORS = {"H100 80GB": 79.6 * GIB, "H200 141GB": 139.8 * GIB}
HEADROOM = 0.9
RUNTIME_GPU = 2 * GIB  # CUDA context, NCCL buffers, allocator caches


@dataclass
class Layout:
    world: int
    strategy: str  # fsdp2 | ddp | single
    ep: int
    dp_replicate: int

    @property
    def dp_shard(self) -> int:
        return self.world // self.dp_replicate if self.strategy == "fsdp2" else 1

    def describe(self) -> str:
        out = f"{self.world} rank{'s' if self.world > 1 else ''}, {self.strategy}"
        if self.ep > 1:
            out += f", expert_parallel={self.ep}"
        if self.dp_replicate > 1:
            out += f", dp_replicate={self.dp_replicate} (HSDP)"
        return out


@dataclass
class Plan:
    layout: str
    model: str
    parameters_total: int
    params_per_rank: int
    param_bytes: int
    parameters: float
    gradients: float
    optimizer: float
    optimizer_name: str
    activations: dict[str, float]  # per checkpointing mode
    checkpointing: str
    buffers: float
    runtime: float
    tokens_per_rank: int

    @property
    def total(self) -> float:
        return (
            self.parameters
            + self.gradients
            + self.optimizer
            + self.activations[self.checkpointing]
            + self.buffers
            + self.runtime
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


_SIZES: dict[str, dict[str, int]] = {}


def _sizes(m: ModelConfig) -> dict[str, int]:
    """Parameter counts by how they are sharded and optimised, from the model built on the meta
    device (no memory, any size); cached per model config."""
    key = repr(m)
    if key not in _SIZES:
        _SIZES[key] = _count(m)
    return _SIZES[key]


def _count(m: ModelConfig) -> dict[str, int]:
    import logging

    import torch

    from kimi_lab.model.moe.experts import Experts
    from kimi_lab.model.multimodal import KimiK25
    from kimi_lab.optim.groups import build_param_groups

    backbone_log = logging.getLogger("kimi_lab.model.backbone")
    level = backbone_log.level
    backbone_log.setLevel(logging.WARNING)  # not "experts backend: torch" for a model never run
    try:
        with torch.device("meta"):
            model = KimiK25(replace(m, moe=replace(m.moe, backend="torch")), device_type="meta")
    finally:
        backbone_log.setLevel(level)
    numel = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    experts = [mod for mod in model.modules() if isinstance(mod, Experts)]
    lm = model.language_model
    total = numel(model)
    routed = sum(numel(e) for e in experts)
    units = [
        numel(layer) - sum(numel(e) for e in layer.modules() if isinstance(e, Experts)) for layer in lm.layers
    ]
    units += [numel(lm.embed), numel(lm.lm_head) + numel(lm.norm)]
    if model.vision_tower is not None:
        units += [numel(block) for block in model.vision_tower.layers]
    matrices = sum(g.numel for g in build_param_groups(model, 0.0) if g.name.endswith("/matrices"))
    return {
        "total": total,
        "experts": routed,
        "non_expert": total - routed,
        "adamw_only": total - matrices,
        "experts_per_layer": routed // max(len(experts), 1),
        "largest_unit": max(units),
    }


def _activation_values(m: ModelConfig, ep: int) -> dict[str, float]:
    """Values saved for backward, per token: (attention per layer, MoE layer, of which routed
    experts, dense layer, in fp32 (router scores), the head's per-token values)."""
    a, e = m.attention, m.moe
    D, H = m.hidden_size, a.n_heads
    n, r, v, c = a.qk_nope_head_dim, a.qk_rope_head_dim, a.v_head_dim, a.kv_lora_rank
    q = 3 * a.q_lora_rank if a.q_lora_rank else 0
    attention = 2 * D + q + 3 * c + r + H * (n + v) + 2 * H * r + 2 * H * (n + r) + 3 * H * v + H
    K, F = e.top_k, e.expert_ffn_dim
    routed = K * (2 * D + 3 * F) + (K * D if ep > 1 else 0)  # tokens in, gate/up, activation, out
    shared = D + 3 * F * e.n_shared_experts
    return {
        "attention": attention,
        "moe": 2 * D + routed + shared,
        "routed": routed,
        "router_fp32": 3 * e.n_routed_experts,
        "dense": 2 * D + 3 * m.dense_ffn_dim,
        "head": 2 * D,  # + the logits, counted apart (vocab-sized)
    }


def plan_memory(cfg: RunConfig) -> Plan:
    m, t, o = cfg.model, cfg.trainer, cfg.phase.optim
    world = t.devices * t.num_nodes
    strategy = t.strategy if t.strategy in ("fsdp2", "ddp") else ("ddp" if world > 1 else "single")
    ep = m.moe.expert_parallel if m.first_k_dense < m.n_layers else 1
    layout = Layout(world, strategy, ep, t.dp_replicate if strategy == "fsdp2" else 1)
    s = _sizes(m)
    if strategy == "fsdp2":
        per_rank = math.ceil(s["total"] / layout.dp_shard)
        replicated = 0
    else:
        per_rank = s["non_expert"] + math.ceil(s["experts"] / ep)
        replicated = s["non_expert"] if strategy == "ddp" else 0
    pbytes = 2 if t.precision == "bf16-true" else 4
    abytes = 2 if "bf16" in t.precision or "16" in t.precision else 4
    share = per_rank / s["total"]
    adamw_share = s["adamw_only"] / s["total"]
    muon = o.name in (OptimizerName.muon, OptimizerName.muonclip)
    optim_per_param = (4 * (1 - adamw_share) + 8 * adamw_share) if muon else 8.0
    # activations of one micro-batch
    N = cfg.data.batch_size * cfg.data.seq_len
    vals = _activation_values(m, ep)
    n_moe, n_dense = m.n_layers - m.first_k_dense, m.first_k_dense
    # CPU attention runs SDPA's math path, which keeps the attention probabilities (heads x
    # sequence per token); GPU kernels (flash, memory-efficient) keep only a log-sum-exp.
    on_gpu = t.accelerator in ("gpu", "cuda")
    probs = 0 if on_gpu else m.attention.n_heads * cfg.data.seq_len
    layers = m.n_layers * (vals["attention"] + probs) + n_moe * vals["moe"] + n_dense * vals["dense"]
    fp32 = n_moe * vals["router_fp32"]
    # logits (compute dtype), their fp32 copy, and the loss's log-softmax (fp32)
    head = vals["head"] * abytes + m.vocab_size * (abytes + 8)
    # The experts' weights enter their grouped GEMM as one operand in the compute dtype: a copy,
    # saved for backward, unless they are stored fused in that dtype (fp32 without FSDP2).
    copies = 0.0
    if n_moe and (strategy == "fsdp2" or abytes == 2):
        copies = (2 / 3 if abytes == 4 else 1.0) * s["experts_per_layer"] / ep * abytes
    # At the start of backward: the loss's gradient (fp32 logits and log-softmax) besides the saved.
    transient = N * m.vocab_size * 8
    plain = N * (layers * abytes + fp32 * 4 + head) + n_moe * copies + transient
    biggest_layer = probs + max(vals["attention"] + vals["moe"], vals["attention"] + vals["dense"])
    full = (
        N * (m.n_layers * m.hidden_size * abytes + biggest_layer * abytes + vals["router_fp32"] * 4 + head)
        + copies
        + transient
    )
    moe_only = plain - (n_moe - 1) * (N * vals["routed"] * abytes + copies)
    activations = {"none": plain, "full": full, "moe": moe_only}
    # buffers: gathered units and gradient reduction (FSDP2), DDP buckets, all-to-all
    if strategy == "fsdp2":
        unit = max(s["largest_unit"], math.ceil(s["experts_per_layer"] / ep))
        # the unit computed and the next (prefetched), the gathered gradients and their reduction
        gathered = 2 if t.precision == "bf16-mixed" else pbytes  # FSDP2 gathers in bf16 under bf16-mixed
        buffers = unit * (2 * gathered + 8)
    else:
        buffers = replicated * 4 if strategy == "ddp" else 0
    if ep > 1:
        buffers += 2 * N * m.moe.top_k * m.hidden_size * abytes
    checkpointing = ActivationCheckpointing(t.activation_checkpointing).value
    return Plan(
        layout=layout.describe(),
        model=m.name,
        parameters_total=s["total"],
        params_per_rank=per_rank,
        param_bytes=pbytes,
        parameters=per_rank * pbytes,
        gradients=per_rank * pbytes,
        optimizer=per_rank * optim_per_param if share else 0.0,
        optimizer_name="muon" if muon else "adamw",
        activations=activations,
        checkpointing=checkpointing,
        buffers=float(buffers),
        runtime=float(RUNTIME_GPU if on_gpu else 0),
        tokens_per_rank=N,
    )


def fits(plan: Plan) -> dict[str, bool]:
    return {name: plan.total <= HEADROOM * cap for name, cap in ACCELERATORS.items()}


def _knobs(cfg: RunConfig) -> list[tuple[str, RunConfig]]:
    """Changes that lower a rank's memory, in the order worth trying."""
    t, d = cfg.trainer, cfg.data
    out = []
    if t.activation_checkpointing != ActivationCheckpointing.full:
        out.append(
            (
                "trainer.activation_checkpointing=full",
                replace(cfg, trainer=replace(t, activation_checkpointing=ActivationCheckpointing.full)),
            )
        )
    if t.strategy != "fsdp2" and t.devices * t.num_nodes > 1:
        out.append(("trainer=fsdp2", replace(cfg, trainer=replace(t, strategy="fsdp2"))))
    if t.dp_replicate > 1:
        out.append(("trainer.dp_replicate=1", replace(cfg, trainer=replace(t, dp_replicate=1))))
    if cfg.phase.optim.name == OptimizerName.adamw:
        optim = replace(cfg.phase.optim, name=OptimizerName.muonclip)
        out.append(
            ("phase.optim.name=muonclip (one moment)", replace(cfg, phase=replace(cfg.phase, optim=optim)))
        )
    if d.batch_size > 1:
        out.append(
            (
                f"data.batch_size={d.batch_size // 2} (and trainer.accumulate_grad_batches x2)",
                replace(cfg, data=replace(d, batch_size=d.batch_size // 2)),
            )
        )
    out.append(
        (f"trainer.num_nodes={2 * t.num_nodes}", replace(cfg, trainer=replace(t, num_nodes=2 * t.num_nodes)))
    )
    return out


def advice(cfg: RunConfig, accelerator: str) -> list[str]:
    """What to turn, one knob at a time, until the plan fits ``accelerator``."""
    cap = HEADROOM * ACCELERATORS[accelerator]
    lines, current = [], cfg
    for _ in range(6):
        p = plan_memory(current)
        if p.total <= cap:
            break
        best = min(_knobs(current), key=lambda kc: plan_memory(kc[1]).total)
        current = best[1]
        lines.append(f"{best[0]} -> {plan_memory(current).total / GIB:,.1f} GiB")
    return lines


def render(plan: Plan, cfg: RunConfig) -> str:
    g = lambda b: f"{b / GIB:,.2f} GiB"  # noqa: E731
    rows = [
        f"memory plan: model {plan.model} ({plan.parameters_total:,} parameters), {plan.layout}",
        f"  per rank: {plan.params_per_rank:,} parameters, {plan.tokens_per_rank:,} tokens per micro-batch",
        f"  parameters    {g(plan.parameters):>13}  ({'bf16' if plan.param_bytes == 2 else 'fp32'})",
        f"  gradients     {g(plan.gradients):>13}",
        f"  optimizer     {g(plan.optimizer):>13}  ({plan.optimizer_name})",
        "  activations   "
        + "  ".join(
            f"{mode}: {g(b)}{' <-' if mode == plan.checkpointing else ''}"
            for mode, b in plan.activations.items()
        ),
        f"  buffers       {g(plan.buffers):>13}  (gathered FSDP2 units, gradient reduction, all-to-all)",
    ]
    if plan.runtime:
        rows.append(f"  runtime       {g(plan.runtime):>13}  (CUDA context, NCCL)")
    rows.append(f"  total         {g(plan.total):>13}")
    for name, ok in fits(plan).items():
        verdict = "fits" if ok else "does not fit"
        rows.append(f"  {name}: {verdict} ({plan.total / ACCELERATORS[name]:.0%} of its memory)")
        if not ok:
            rows += [f"    turn: {line}" for line in advice(cfg, name)]
    return "\n".join(rows)
