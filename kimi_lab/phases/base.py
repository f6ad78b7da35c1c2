"""What every training phase shares: the backbone, optimizer groups, the WSD schedule,
router-bias updates after each optimizer step, throughput metrics, and the running
totals (``RunCounters``) its checkpoints carry.

The state the run-directory callback reads is declared here, in ``__init__``
(``tracking.contract.PhaseReport``); data statistics come from the datamodule's
typed ``BatchStats``."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import OmegaConf

from kimi_lab.config.schema import OptimizerName, RunConfig
from kimi_lab.data.datamodule import KimiDataModule
from kimi_lab.errors import ConfigError, NonFiniteError
from kimi_lab.metrics import (
    CHECKPOINT_COUNTERS,
    DATA_IMAGE_TOKENS,
    DATA_PAD_TOKENS,
    DATA_SKIPPED_PREFIX,
    DATA_TEXT_TOKENS,
    DATA_VIDEO_TOKENS,
    DATA_VISION_RATIO,
    DATA_VISION_RATIO_TARGET,
    DATA_WAIT_FRACTION,
    TRAIN_LR,
    TRAIN_SKIPPED_STEPS,
    TRAIN_TOKENS,
    TRAIN_TOKENS_PER_SEC,
)
from kimi_lab.model.init import is_meta, materialise_
from kimi_lab.model.moe.balance import update_router_biases
from kimi_lab.model.multimodal import KimiK25
from kimi_lab.optim.groups import build_param_groups
from kimi_lab.optim.muon import MuonAdamW
from kimi_lab.optim.qk_clip import LogitReport, qk_clip_step, set_measuring
from kimi_lab.optim.schedule import WSD, schedule_steps, schedule_warning
from kimi_lab.parallel import expert_parallel
from kimi_lab.parallel.activation_checkpointing import apply_activation_checkpointing
from kimi_lab.parallel.expert_parallel import ExpertParallel
from kimi_lab.tracking.contract import MoELoad, RunCounters

log = logging.getLogger(__name__)

_ON_META: contextvars.ContextVar[bool] = contextvars.ContextVar("kimi_lab_model_on_meta", default=False)


@contextlib.contextmanager
def model_on_meta(on: bool = True) -> Iterator[None]:
    """Phase modules built inside build their ``KimiK25`` on the meta device (no memory)."""
    token = _ON_META.set(on)
    try:
        yield
    finally:
        _ON_META.reset(token)


@rank_zero_only
def rank_zero_warning_line(message: str) -> None:
    """One log line (not a Python warning with its source excerpt), on rank 0 only."""
    log.warning(message)


def device_type_for(accelerator: str) -> str:
    if accelerator in ("gpu", "cuda"):
        return "cuda"
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu"


class PhaseModule(L.LightningModule):
    def __init__(self, cfg: RunConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # The checkpoint carries the full config, so a checkpoint alone can rebuild its model.
        self.save_hyperparameters(
            {"config": OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)}
        )
        meta = contextlib.nullcontext() if not _ON_META.get() else torch.device("meta")
        with meta:
            self.model = KimiK25(cfg.model, device_type=device_type_for(cfg.trainer.accelerator))
        # Called with the model once it is laid out and has values (phase.init_from, see train.py).
        self.init_weights: Callable[[KimiK25], None] | None = None
        # Read by the run-directory callback (tracking.contract.PhaseReport).
        self.counters = RunCounters()
        self.latest_moe_load: MoELoad | None = None
        self.attn_logits_since_log: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        # This step's bookkeeping.
        self._skip_step = False  # a non-finite gradient: the optimizer step is skipped
        self._configured = False  # laid out over the ranks (configure_model may be called more than once)
        self._step_started: float | None = None
        self._batch_ended: float | None = None
        self._waited = 0.0
        self._tokens_in_step = 0  # this rank's, over the step's micro-batches so far
        self._step_tokens = 0  # the last optimizer step's, all ranks
        self.expert_parallel: ExpertParallel | None = None  # set in configure_model when EP > 1

    # ------------------------------------------------------------- optimization
    @property
    def uses_muon(self) -> bool:
        return self.cfg.phase.optim.name in (OptimizerName.muon, OptimizerName.muonclip)

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.cfg.phase.optim
        scales = {
            "language_model": o.lr_scale.language_model,
            "vision_tower": o.lr_scale.vision_tower,
            "projector": o.lr_scale.projector,
        }
        groups = build_param_groups(self.model, o.weight_decay, scales)
        for name, scale in scales.items():
            if scale == 0 and getattr(self.model, name, None) is not None:
                rank_zero_info(f"frozen: {name}")
        if not groups:
            raise ConfigError("phase.optim.lr_scale freezes every module: nothing to train")
        # Muon takes the weight matrices; embeddings, the LM head, norms and biases stay on AdamW.
        param_groups = [
            {
                "params": g.params,
                "weight_decay": g.weight_decay,
                "lr": o.lr * g.lr_scale,
                "name": g.name,
                "use_muon": self.uses_muon and g.name.endswith("/matrices"),
                "fused_row_parts": g.fused_row_parts,
            }
            for g in groups
        ]
        for g, pg in zip(groups, param_groups):
            rank_zero_info(
                f"param group {g.name:<32} {g.numel:>12,} params  {'muon ' if pg['use_muon'] else 'adamw'}"
                f"  lr={pg['lr']:g}  weight_decay={g.weight_decay:g}"
            )
        optimizer: torch.optim.Optimizer
        if self.uses_muon:
            optimizer = MuonAdamW(
                param_groups,
                lr=o.lr,
                momentum=o.momentum,
                nesterov=o.nesterov,
                ns_steps=o.ns_steps,
                ns_polish_steps=o.ns_polish_steps,
                betas=(o.beta1, o.beta2),
                eps=o.eps,
            )
        else:
            for pg in param_groups:
                pg.pop("use_muon")
                pg.pop("fused_row_parts")
            optimizer = torch.optim.AdamW(param_groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
        if self.expert_parallel is not None:  # checkpoints hold every expert's state: keep ours
            expert_parallel.slice_optimizer_state(self.expert_parallel, optimizer)
        warmup, decay = schedule_steps(self.cfg)
        if (note := schedule_warning(self.cfg)) is not None:
            rank_zero_warning_line(note)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, WSD(self.cfg.trainer.max_steps, warmup, decay, self.cfg.phase.schedule.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_model(self) -> None:
        """Called once the processes are connected: lay the model out over them, then give a
        meta-device model its values (each rank only its own part) and load ``phase.init_from``
        into it. Under ``trainer=fsdp2``: one mesh for FSDP2 and expert parallelism
        (``kimi_lab.parallel.fsdp``); under DDP: the routed experts split over
        ``model.moe.expert_parallel`` ranks (``kimi_lab.parallel.expert_parallel``)."""
        if self._configured:
            return
        t, moe = self.cfg.trainer, self.cfg.model.moe
        device_type = device_type_for(t.accelerator)
        ep = moe.expert_parallel if self.model.language_model.moe_layers else 1
        mesh = getattr(self, "device_mesh", None)  # Lightning's ModelParallelStrategy (trainer=fsdp2)
        if mesh is not None:
            from kimi_lab.parallel.fsdp import parallelize
            from kimi_lab.parallel.mesh import ParallelDims

            dims = ParallelDims(mesh.size(), ep, t.dp_replicate)
            dims.validate(moe.n_routed_experts if ep > 1 else None)
            meshes = dims.build(device_type)
            precision = self.trainer.precision if self._trainer is not None else t.precision
            param_dtype = torch.bfloat16 if precision == "bf16-mixed" else None
            parallelize(self.model, meshes, t.activation_checkpointing, param_dtype)
            rank_zero_info(f"fsdp2: {meshes.describe()}")
        else:
            if ep > 1 and self.expert_parallel is None:
                ep_mesh = expert_parallel.build_mesh(ep, device_type)
                self.expert_parallel = expert_parallel.apply(self, ep_mesh)
                rank_zero_info(
                    f"expert parallel: mesh {tuple(ep_mesh.shape)} {ep_mesh.mesh_dim_names}, "
                    f"{moe.n_routed_experts // ep} of {moe.n_routed_experts} routed experts per rank"
                )
            apply_activation_checkpointing(self.model, t.activation_checkpointing)
        # Read by DDP when it wraps this module (after this hook): what it must not sync.
        self._ddp_params_and_buffers_to_ignore = expert_parallel.ddp_ignored_names(self, self.expert_parallel)
        if is_meta(self.model):
            materialise_(self.model, self.cfg.model, self._root_device(), self.cfg.seed)
        resuming = self._trainer is not None and self.trainer.ckpt_path is not None
        if self.init_weights is not None and not resuming:  # a resumed run's checkpoint has them all
            self.init_weights(self.model)
        self._configured = True

    def _apply(self, fn: Any, recurse: bool = True) -> PhaseModule:
        # Before configure_model a meta-device model has nothing to move (a run that fails early
        # is still torn down with .cpu(): its own error must be the one that shows).
        if not self._configured and is_meta(self.model):
            return self
        return super()._apply(fn, recurse)

    def _root_device(self) -> torch.device:
        trainer = self._trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def on_train_start(self) -> None:
        clip = self.cfg.phase.optim.name == OptimizerName.muonclip
        set_measuring(self.model, clip or self.cfg.phase.track_attn_logits)

    # ------------------------------------------------------- non-finite steps
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """A NaN/Inf gradient (a NaN/Inf loss gives one) skips the step: every grad is dropped,
        so the optimizer leaves weights and moments as they were. ``trainer.max_nonfinite_steps``
        such steps in a row stop the run; checkpoints only ever hold finite weights."""
        if self.expert_parallel is not None:  # DDP left the experts alone: average theirs here
            expert_parallel.reduce_expert_grads(self.expert_parallel)
        # Sharded (FSDP2) grads: each rank checks its own shard, then all ranks agree.
        grads = [
            g.to_local() if hasattr(g, "to_local") else g
            for p in self.parameters()
            if (g := p.grad) is not None
        ]
        finite = bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()) if grads else True
        finite = bool(self.trainer.strategy.reduce_boolean_decision(finite, all=True))
        self._skip_step = not finite
        c = self.counters
        if finite:
            c.nonfinite_streak = 0
            return
        c.nonfinite_streak += 1
        c.nonfinite_steps += 1
        for p in self.parameters():
            p.grad = None
        limit = self.cfg.trainer.max_nonfinite_steps
        rank_zero_info(
            f"step {self.global_step}: non-finite loss or gradient, step skipped "
            f"({c.nonfinite_streak} in a row, {c.nonfinite_steps} in this run)"
        )
        if limit and c.nonfinite_streak >= limit:
            raise NonFiniteError(
                f"{c.nonfinite_streak} non-finite steps in a row (trainer.max_nonfinite_steps={limit}) "
                f"at step {self.global_step}: stopped; the last checkpoint is intact (weights never took a "
                "non-finite update). Lower the learning rate or check the data, then resume with ckpt_path=auto"
            )

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        sharded = getattr(self, "device_mesh", None) is not None  # trainer=fsdp2: DTensor gradients
        if not gradient_clip_val or (self.expert_parallel is None and not sharded):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        # The norm of the whole model: each rank holds different experts' gradients (or shards).
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if sharded:
            from kimi_lab.parallel.fsdp import clip_grad_norm_

            clip_grad_norm_(params, gradient_clip_val)
        else:
            assert self.expert_parallel is not None
            expert_parallel.clip_grad_norm_(params, gradient_clip_val, self.expert_parallel)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        step = self.global_step  # 0-based index of this training step
        super().optimizer_step(*args, **kwargs)
        o = self.cfg.phase.optim
        skipped = self._skip_step
        self._skip_step = False
        # Counted here, not in on_train_batch_end: a checkpoint of this step is written by a
        # callback's on_train_batch_end, which runs before the module's, and must include it.
        # Ranks may see different padding: sum their counts (exact, one scalar per step).
        local = torch.tensor(float(self._tokens_in_step), device=self.device)
        self._step_tokens = int(self.trainer.strategy.reduce(local, reduce_op="sum").item())
        self._tokens_in_step = 0
        self.counters.tokens += self._step_tokens
        self.log(TRAIN_SKIPPED_STEPS, float(self.counters.nonfinite_steps), on_step=True, on_epoch=False)
        # QK-Clip with the maxima this step's forward passes measured (weights already updated).
        # A skipped step still drains the measurements, and clips nothing.
        tau = o.qk_clip_tau if o.name == OptimizerName.muonclip and not skipped else None
        for report in qk_clip_step(self.model, tau):
            self._accumulate_logits(report)
        # Aux-loss-free balancing uses this step's token counts (all micro-batches, all ranks);
        # a frozen language model (or a skipped step) keeps its routing as it is.
        frozen = o.lr_scale.language_model == 0 or skipped
        rate = 0.0 if frozen else self.cfg.model.moe.bias_update_rate
        load = update_router_biases(self.model, rate)
        if load is not None:
            layers = tuple(i for i, layer in enumerate(self.model.language_model.layers) if layer.is_moe)
            self.latest_moe_load = MoELoad(step, load[0].cpu(), load[1].cpu(), layers)

    def _accumulate_logits(self, report: LogitReport) -> None:
        """Max logit and clip events per head since the last logged step."""
        self.counters.clipped_head_steps += int(report.clipped_LH.sum())
        prev = self.attn_logits_since_log.get(report.tower)
        if prev is None:
            self.attn_logits_since_log[report.tower] = (report.max_logit_LH, report.clipped_LH)
        else:
            self.attn_logits_since_log[report.tower] = (
                torch.maximum(prev[0], report.max_logit_LH),
                prev[1] | report.clipped_LH,
            )

    def pop_attn_logits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out, self.attn_logits_since_log = self.attn_logits_since_log, {}
        return out

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints are canonical: under expert parallelism every rank contributes its experts
        (collective: Lightning calls this on every rank), so any layout loads them."""
        if self.expert_parallel is not None:
            expert_parallel.gather_checkpoint(checkpoint, self.expert_parallel, "", self.trainer.optimizers)
        checkpoint[CHECKPOINT_COUNTERS] = self.counters.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.counters = RunCounters.from_state(checkpoint.get(CHECKPOINT_COUNTERS))

    # ------------------------------------------------------------- throughput
    def count_step_tokens(self, n: int) -> None:
        """This rank's real (non-padding) tokens of a micro-batch."""
        self._tokens_in_step += n

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._step_started is None:
            self._step_started = now
        # Between the previous step's end and now the trainer was fetching this batch.
        self._waited += now - (self._batch_ended or now)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._batch_ended = time.perf_counter()
        if (batch_idx + 1) % self.trainer.accumulate_grad_batches != 0:
            return
        elapsed = self._batch_ended - (self._step_started or self._batch_ended)
        log = {"on_step": True, "on_epoch": False}
        self.log(TRAIN_TOKENS_PER_SEC, self._step_tokens / max(elapsed, 1e-9), prog_bar=True, **log)
        self.log(TRAIN_TOKENS, float(self.counters.tokens), **log)
        self.log(TRAIN_LR, self.trainer.optimizers[0].param_groups[0]["lr"], **log)
        if self._step_started is not None and self.trainer.global_step > 1:
            self.log(DATA_WAIT_FRACTION, min(1.0, self._waited / max(elapsed, 1e-9)), **log)
        self._log_data_stats(log)
        self._waited = 0.0
        self._step_started = self._batch_ended

    def _log_data_stats(self, log: dict[str, Any]) -> None:
        dm = self.trainer.datamodule
        stats = dm.latest if isinstance(dm, KimiDataModule) else None
        if stats is None:  # task and swarm datamodules report no packing statistics
            return
        values = {
            DATA_TEXT_TOKENS: stats.text_tokens,
            DATA_IMAGE_TOKENS: stats.image_tokens,
            DATA_VIDEO_TOKENS: stats.video_tokens,
            DATA_PAD_TOKENS: stats.pad_tokens,
            DATA_VISION_RATIO: stats.vision_source_tokens / max(stats.tokens, 1),
        }
        if stats.vision_ratio_target is not None:
            values[DATA_VISION_RATIO_TARGET] = stats.vision_ratio_target
        for reason, n in stats.skipped.items():
            values[DATA_SKIPPED_PREFIX + reason] = n
        self.log_dict({k: float(v) for k, v in values.items()}, **log)
