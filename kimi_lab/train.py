"""Hydra entry point: compose -> validate -> build -> fit.

Run it as ``kimi-lab train [overrides]`` (or ``python -m kimi_lab.train``); add
``--multirun`` to sweep. The run directory is Hydra's output directory.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from kimi_lab.config import register_schemas, to_run_config, validate_run
from kimi_lab.config.schema import RunConfig, TrainerConfig
from kimi_lab.cpu import cpu_has_native_bf16
from kimi_lab.errors import ConfigError, KimiLabError, one_line
from kimi_lab.metrics import CHECKPOINT_DIR, TRAIN_LOSS, VAL_LOSS

if TYPE_CHECKING:
    from kimi_lab.tracking.checkpoint_io import StepCheckpoint
    from kimi_lab.tracking.interrupt import StopOnSignal

log = logging.getLogger("kimi_lab.train")


# --------------------------------------------------------------------- resolution
def resolve_precision(t: TrainerConfig) -> str:
    if t.precision != "auto":
        return t.precision
    import torch

    if t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto" and torch.cuda.is_available()):
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    if ckpt_path is None:
        return None
    if ckpt_path == "auto":
        from kimi_lab.tracking.checkpoint_io import latest_checkpoint
        from kimi_lab.tracking.resume import describe, is_finished

        last = latest_checkpoint(run_dir / CHECKPOINT_DIR)
        if last is not None:
            if is_finished(run_dir):  # named explicitly (hydra.run.dir): ckpt_path=auto alone never picks one
                log.info("ckpt_path=auto: continuing the finished run %s in place", describe(run_dir))
            log.info("resuming from %s", last)
            return str(last)
        log.info("ckpt_path=auto: no checkpoint in %s yet, starting fresh", run_dir)
        return None
    from kimi_lab.tracking.checkpoint_io import complete_checkpoint

    if not complete_checkpoint(Path(ckpt_path)):
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file (or sharded checkpoint folder)")
    log.info("continuing from %s in a new run directory, %s", ckpt_path, run_dir)
    return ckpt_path


def build_strategy(t: TrainerConfig) -> Any:
    """Lightning's strategy: a name, or for ``fsdp2`` a ModelParallelStrategy (FSDP2 via
    ``fully_shard`` in ``configure_model``; Lightning's ``fsdp`` strategy refuses CPU)."""
    if t.strategy != "fsdp2":
        return t.strategy
    from lightning.pytorch.strategies import ModelParallelStrategy

    return ModelParallelStrategy(
        data_parallel_size=t.devices * t.num_nodes,
        tensor_parallel_size=1,
        save_distributed_checkpoint=True,  # each rank writes its shard; kimi-lab consolidate joins them
    )


# ------------------------------------------------------------------------- the run
def train(
    cfg: RunConfig, run_dir: Path, config_dict: dict[str, Any], overrides: list[str] | None = None
) -> dict[str, float]:
    """Fit one run into ``run_dir``; returns the final scalar metrics.

    A stop signal (Ctrl-C, SIGTERM, a cluster's pre-emption) checkpoints the current step,
    prints the command that resumes it (``overrides``: the run's command-line overrides) and
    raises ``StoppedBySignal``."""
    from kimi_lab.tracking.checkpoint_io import StepCheckpoint
    from kimi_lab.tracking.interrupt import StopOnSignal

    t = cfg.trainer
    checkpoint = StepCheckpoint(run_dir / CHECKPOINT_DIR, t.checkpoint_every_n_steps)
    stopper = StopOnSignal(checkpoint)
    stopper.install()  # from here on, a stop signal ends the run at a step boundary
    try:
        return _fit(cfg, run_dir, config_dict, checkpoint, stopper, overrides)
    finally:
        stopper.restore()


def _fit(
    cfg: RunConfig,
    run_dir: Path,
    config_dict: dict[str, Any],
    checkpoint: StepCheckpoint,
    stopper: StopOnSignal,
    overrides: list[str] | None,
) -> dict[str, float]:
    import lightning as L
    import torch

    from kimi_lab.cpu import tune_cpu_allocator
    from kimi_lab.phases import build_datamodule, build_phase
    from kimi_lab.tracking.checkpoint_io import AtomicCheckpointIO
    from kimi_lab.tracking.loggers import build_loggers, finish_wandb
    from kimi_lab.tracking.preflight import check_writable
    from kimi_lab.tracking.progress import progress_callback
    from kimi_lab.tracking.run_dir import RunDirCallback

    _route_lightning_logs_through_hydra()
    tune_cpu_allocator()
    check_writable(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t = cfg.trainer
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    precision = resolve_precision(t)
    datamodule = build_datamodule(cfg)
    # With several processes, built on the meta device: each rank allocates only its own part,
    # once the model is laid out over them (PhaseModule.configure_model), with values that do
    # not depend on the layout, and phase.init_from is read into it. One process keeps the
    # constructors' initial values (and so every single-process baseline).
    module = build_phase(cfg, meta=t.devices * t.num_nodes > 1)
    if cfg.phase.init_from:
        path = cfg.phase.init_from
        module.init_weights = lambda model: load_init_weights(model, path)
    check_tokenizer_matches(cfg)
    n_params = sum(p.numel() for p in module.parameters())
    log.info("model %s: %s parameters, precision %s", cfg.model.name, f"{n_params:,}", precision)
    log_memory_plan(cfg, precision)
    from kimi_lab.tracking.preflight import check_free_space

    check_free_space(run_dir, n_params, checkpoints_kept=2)  # top-2 step files; last.ckpt is a link

    callbacks: list[L.Callback] = [
        RunDirCallback(run_dir, cfg.experiment, t.log_every_n_steps),
        checkpoint,
        stopper,
    ]
    if t.progress_bar:
        callbacks.append(progress_callback(t.log_every_n_steps))  # a bar on a terminal, else lines
    loggers = build_loggers(cfg, run_dir, config_dict)
    trainer = L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=build_strategy(t),
        precision=precision,  # type: ignore[arg-type]
        max_steps=t.max_steps,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val or None,
        val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=None,
        limit_val_batches=t.limit_val_batches,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        fast_dev_run=t.fast_dev_run,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        logger=loggers,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
    )
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resolve_ckpt_path(cfg.ckpt_path, run_dir))
    finally:
        finish_wandb()
    stopped = stopper.stopped()
    if trainer.is_global_zero:
        if stopped is not None:
            _say_how_to_resume(stopped, stopper.saved, trainer.global_step, t.max_steps, run_dir, overrides)
        print(f"run directory: {run_dir}", flush=True)
    if stopped is not None:
        raise stopped
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def _say_how_to_resume(
    stopped: BaseException,
    saved: str | None,
    step: int,
    max_steps: int,
    run_dir: Path,
    overrides: list[str] | None,
) -> None:
    from kimi_lab.tracking.checkpoint_io import latest_checkpoint
    from kimi_lab.tracking.interrupt import resume_command

    if saved:
        print(f"interrupted ({stopped}) at step {step} of {max_steps}: checkpoint {saved}", flush=True)
    else:
        print(
            f"interrupted ({stopped}) at step {step} of {max_steps}, before a step ran: no new checkpoint",
            flush=True,
        )
    if overrides is None:
        return
    if saved or latest_checkpoint(run_dir / CHECKPOINT_DIR) is not None:
        print(f"resume with: {resume_command(overrides, run_dir)}", flush=True)


def log_memory_plan(cfg: RunConfig, precision: str) -> None:
    """What each rank will hold (``kimi-lab plan``), once, before anything is allocated."""
    from dataclasses import replace

    from lightning.pytorch.utilities import rank_zero_info

    from kimi_lab.parallel.memory_plan import plan_memory, render

    resolved = replace(cfg, trainer=replace(cfg.trainer, precision=precision))
    rank_zero_info(render(plan_memory(resolved), resolved))


def _route_lightning_logs_through_hydra() -> None:
    # Lightning attaches its own console handler; Hydra's root handlers already print
    # (and write train.log), so drop Lightning's to avoid every line appearing twice.
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True


def load_init_weights(model: Any, path: str) -> None:
    """Start a phase from an earlier phase's (or an imported) checkpoint: weights only, read into
    the model as it is laid out (a sharded folder: each rank reads only its own part)."""
    from kimi_lab.decode.loading import load_weights

    try:
        load_weights(model, path)
    except ConfigError as exn:
        raise ConfigError(f"phase.init_from={exn}") from None
    log.info("initialised from %s", path)


def check_tokenizer_matches(cfg: RunConfig) -> None:
    """The vision placeholders the model expects must be the tokenizer's placeholder tokens."""
    v = cfg.model.vision
    if v is None:
        return
    from kimi_lab.data.tokenizer import load_or_train

    tok = load_or_train(cfg.data.tokenizer, cfg.model.vocab_size)
    ids = {"image_token_id": tok.token_id("<|image_pad|>"), "video_token_id": tok.token_id("<|video_pad|>")}
    for key, tid in ids.items():
        if getattr(v, key) != tid:
            raise ConfigError(
                f"model.vision.{key}={getattr(v, key)} but the tokenizer {cfg.data.tokenizer} has it as {tid}"
            )


# -------------------------------------------------------------------- hydra glue
def adopt_init_model(cfg: RunConfig) -> RunConfig:
    """With ``phase.init_from``, the weights define the architecture: take the checkpoint's model config."""
    if not cfg.phase.init_from:
        return cfg
    from dataclasses import replace

    from kimi_lab.decode.loading import read_config

    saved = read_config(cfg.phase.init_from)
    # The backend and the expert-parallel split are how this run executes, not the architecture.
    moe = replace(
        saved.model.moe, backend=cfg.model.moe.backend, expert_parallel=cfg.model.moe.expert_parallel
    )
    model = replace(saved.model, moe=moe)
    if model != cfg.model:
        log.info("phase.init_from: using the checkpoint's model config (%s)", model.name)
    data = cfg.data
    if model.vision is not None:  # data.vision follows the model's patching (conf/config.yaml)
        vision = replace(data.vision, patch_size=model.vision.patch_size, merge_size=model.vision.merge_size)
        data = replace(data, vision=vision)
    return replace(cfg, model=model, data=data)


def _run_from_hydra(dcfg: DictConfig) -> dict[str, float]:
    cfg = adopt_init_model(to_run_config(dcfg))
    validate_run(cfg)
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    config = OmegaConf.to_container(dcfg, resolve=True)
    return train(cfg, run_dir, config, list(hc.overrides.task))  # type: ignore[arg-type]


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def hydra_main(dcfg: DictConfig) -> float | None:
    from kimi_lab.tracking.interrupt import StoppedBySignal

    try:
        metrics = _run_from_hydra(dcfg)
    except KimiLabError as exn:
        print(f"error: {one_line(exn)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except StoppedBySignal as stopped:  # checkpointed: hand the signal on (submitit requeues), then exit
        stopped.hand_over()
        raise SystemExit(stopped.exit_code) from None
    val = metrics.get(VAL_LOSS, metrics.get(TRAIN_LOSS))
    return float(val) if val is not None else None  # the sweep objective for Hydra plugins


def main(argv: list[str] | None = None) -> None:
    """Run training with Hydra overrides (``argv`` defaults to the command line)."""
    from kimi_lab.train_args import prepare

    register_schemas()
    args = prepare(list(sys.argv[1:] if argv is None else argv))
    sys.argv = [str(Path(__file__).resolve()), *args]
    hydra_main()


if __name__ == "__main__":
    main()
