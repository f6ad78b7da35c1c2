"""Stop on a signal at a step boundary, with a checkpoint of that step.

Ctrl-C (SIGINT), SIGTERM, and the pre-emption signals of clusters (SIGUSR1, which
Lightning's SLURM convention and ``sbatch --signal=USR1@90`` use; submitit's, SIGUSR2 unless
``SUBMITIT_PREEMPT_SIGNAL`` names another) ask the run to stop. The handler only raises a
flag: the step being computed finishes, then ``StepCheckpoint`` saves that step the way
its periodic saves do (a ``step-*.ckpt`` in its rotation, ``last.ckpt`` linked to it; under
FSDP2 a sharded folder, every rank writing its shard), and training ends with status
``interrupted``. All ranks agree on the step and the signal (one all-reduce of the signal
number per step when there are several). A second Ctrl-C quits at once, without saving.

Lightning's own SIGTERM and SLURM requeue handlers are replaced for the run (they raise
mid-loop or save inside the signal handler); a handler installed before the run (submitit's
requeue) gets the signal after the checkpoint is written (``hand_over``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from kimi_lab.tracking.checkpoint_io import StepCheckpoint

log = logging.getLogger("kimi_lab.interrupt")


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that stop a run with a checkpoint."""
    preempt = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
    return tuple(dict.fromkeys((signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, preempt)))


class StoppedBySignal(Exception):
    """Training stopped on a signal after checkpointing; the process should exit 128 + signum."""

    def __init__(self, signum: int, outer: Any) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.outer = outer  # the handler installed before the run (submitit's requeue), if any

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def hand_over(self) -> None:
        """Let the handler that was there before the run see the signal (submitit requeues the job)."""
        if callable(self.outer) and self.outer is not signal.default_int_handler:
            self.outer(self.signum, None)


class StopOnSignal(L.Callback):
    """Catches the stop signals for the whole run; saves and stops at the next step boundary.

    ``install()`` before building anything (a Ctrl-C while the data or model is set up then
    stops before the first step); the callback installs its handlers again when training
    starts, over the ones Lightning registers for the fit.
    """

    def __init__(self, checkpoint: StepCheckpoint) -> None:
        self.checkpoint = checkpoint
        self.signum: int | None = None  # the first stop signal received
        self.saved: str | None = None  # the checkpoint written for it (None: stopped before a step)
        self._outer: dict[int, Any] = {}

    # ----------------------------------------------------------------- signals
    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for s in stop_signals():
            if s not in self._outer:
                self._outer[s] = signal.getsignal(s)
            signal.signal(s, self._on_signal)

    def restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s, handler in self._outer.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._outer = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt  # the second Ctrl-C: quit now, without a checkpoint
        if self.signum is None:
            self.signum = signum
            log.warning(
                "%s: stopping after the current step with a checkpoint (Ctrl-C again quits without one)",
                signal.Signals(signum).name,
            )

    def stopped(self) -> StoppedBySignal | None:
        if self.signum is None:
            return None
        return StoppedBySignal(self.signum, self._outer.get(self.signum))

    # ------------------------------------------------------------------- hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.install()  # over Lightning's SIGTERM / SLURM handlers, registered since install()
        if self._requested(trainer):
            trainer.should_stop = True  # asked before the first step: nothing new to save

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches != 0:
            return  # inside a step (gradient accumulation): the boundary comes later
        self._save_and_stop(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # validation inside fit, after a step
            self._save_and_stop(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.restore()

    # ---------------------------------------------------------------- stopping
    def _requested(self, trainer: L.Trainer) -> bool:
        if trainer.world_size > 1:
            # Ranks may see a signal at different steps: any rank stops all. The flag is the signal
            # itself (0: none), so a rank that got none records, and exits with, the one received
            # (the largest number where ranks got different ones; a rank keeps its own).
            from torch.distributed import ReduceOp

            mine = torch.tensor(self.signum or 0, device=trainer.strategy.root_device)
            received = int(trainer.strategy.reduce(mine, reduce_op=ReduceOp.MAX))
            if received and self.signum is None:
                self.signum = received
            return received != 0  # what all ranks agreed (a signal arriving meanwhile waits a step)
        return self.signum is not None

    def _save_and_stop(self, trainer: L.Trainer) -> None:
        if trainer.should_stop or trainer.sanity_checking or not self._requested(trainer):
            return
        self.saved = self.checkpoint.save_now(trainer)  # the path periodic saves take, sharded too
        trainer.should_stop = True


def resume_command(overrides: list[str], run_dir: os.PathLike[str] | str) -> str:
    """The command that continues ``run_dir``: the run's own overrides, its folder, ``ckpt_path=auto``."""
    import shlex

    kept = [o for o in overrides if not o.startswith(("ckpt_path=", "hydra.run.dir=", "+ckpt_path="))]
    words = ["kimi-lab", "train", *kept, f"hydra.run.dir={run_dir}", "ckpt_path=auto"]
    return " ".join(shlex.quote(w) for w in words)
