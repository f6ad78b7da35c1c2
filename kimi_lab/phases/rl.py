"""Phase ``rl``: joint text-vision RL with the sandboxed code tool (K2.5).

Each step: ``prompts_per_step`` task prompts (text and vision tasks mixed by
``phase.rl.tasks`` weights), K sampled episodes each (``kimi_lab.rl.rollout``),
verifiable rewards (``kimi_lab.tasks.rewards``), optionally Toggle's length term,
group advantages (r - mean_K r) / tau, and the masked policy-gradient loss over
every sampled token (``kimi_lab.rl.loss``). Validation plays each source's val
prompts greedily and logs reward and accuracy per source.
"""

from __future__ import annotations

from typing import Any

import torch

from kimi_lab.config.schema import RunConfig
from kimi_lab.data.task_prompts import TaskDataModule, TaskInput
from kimi_lab.data.tokenizer import load_or_train
from kimi_lab.decode.generation import vision_inputs
from kimi_lab.metrics import (
    RL_ACCURACY,
    RL_KEPT_FRACTION,
    RL_LOG_RATIO,
    RL_RESPONSE_TOKENS,
    RL_REWARD,
    RL_SOURCE_REWARD,
    RL_TOGGLE,
    RL_TOOL_CALLS,
    RL_TOOL_ERRORS,
    RL_TRUNCATED,
    TRAIN_LOSS,
    VAL_SOURCE_ACCURACY,
    VAL_SOURCE_REWARD,
)
from kimi_lab.phases.sampling import SamplingPhase
from kimi_lab.rl.evaluate import CORRECT, score_episode, summarize
from kimi_lab.rl.loss import Toggle, group_advantages, k25_policy_loss
from kimi_lab.rl.rescore import ScoredRow, rescore
from kimi_lab.rl.rollout import Episode, RolloutRunner


class RLModule(SamplingPhase):
    runner: RolloutRunner  # built in setup(): it needs the tokenizer, which prepare_data makes

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        rl = cfg.phase.rl
        self.toggle = Toggle(rl.toggle_every, rl.toggle_lambda, rl.toggle_rho)
        self.sampler = torch.Generator().manual_seed(cfg.seed)
        self._val: dict[str, tuple[list[Episode], list[float]]] = {}  # per val source: episodes, rewards

    def setup(self, stage: str) -> None:
        rl = self.cfg.phase.rl
        tok = load_or_train(self.cfg.data.tokenizer, self.cfg.model.vocab_size)
        self.runner = RolloutRunner(
            tok,
            self.cfg.data.vision if self.model.has_vision else None,
            rl.tool,
            rl.max_new_tokens,
            rl.max_turns,
            self.cfg.model.max_seq_len,
        )

    # ------------------------------------------------------------------- train
    def training_step(self, batch: list[TaskInput], batch_idx: int) -> torch.Tensor | None:
        rl = self.cfg.phase.rl
        K = rl.samples_per_prompt
        with self.clock.sampling():
            episodes = self.runner.run(self.model, batch, K, rl.temperature, self.sampler)
        self.clock.tokens += sum(ep.n_sampled for ep in episodes)
        rewards = [score_episode(ep) for ep in episodes]
        correct = [r >= CORRECT for r in rewards]
        lengths = [ep.n_sampled for ep in episodes]
        shaped, toggled = self.toggle.apply(self.global_step, rewards, correct, lengths, K)
        adv = group_advantages(torch.tensor(shaped), K, rl.tau)
        rows = [
            ScoredRow(ep.tokens, ep.sampled, ep.old_logprobs, float(a))
            for ep, a in zip(episodes, adv, strict=True)
        ]
        vision = vision_inputs([b for ep in episodes for b in ep.blocks])
        sc = rescore(self.model, rows, self.runner.turns.tok.pad_id, self.runner.turns.enc.banned_ids, vision)
        pl = k25_policy_loss(sc.logp_new, sc.logp_old, sc.advantages, rl.alpha, rl.beta)
        self.count_step_tokens(sc.n_tokens)
        self._log_rollouts(episodes, rewards, correct, pl.kept_fraction, pl.mean_log_ratio, toggled)
        self.log(TRAIN_LOSS, pl.loss, on_step=True, on_epoch=False)
        if not pl.loss.requires_grad:
            return None  # nothing was sampled
        return pl.loss + sc.aux_loss

    def _log_rollouts(
        self,
        episodes: list[Episode],
        rewards: list[float],
        correct: list[bool],
        kept: float,
        log_ratio: float,
        toggled: bool,
    ) -> None:
        n = len(episodes)
        kw: dict[str, Any] = {"on_step": True, "on_epoch": False}
        self.log(RL_REWARD, sum(rewards) / n, prog_bar=True, **kw)
        self.log(RL_ACCURACY, sum(correct) / n, **kw)
        self.log(RL_RESPONSE_TOKENS, sum(ep.n_sampled for ep in episodes) / n, **kw)
        self.log(RL_TOOL_CALLS, sum(ep.tool_calls for ep in episodes) / n, **kw)
        calls = sum(ep.tool_calls for ep in episodes)
        self.log(RL_TOOL_ERRORS, sum(ep.tool_errors for ep in episodes) / max(1, calls), **kw)
        self.log(RL_TRUNCATED, sum(ep.truncated for ep in episodes) / n, **kw)
        self.log(RL_KEPT_FRACTION, kept, **kw)
        self.log(RL_LOG_RATIO, log_ratio, **kw)
        self.log(RL_TOGGLE, float(toggled), **kw)
        by_source: dict[str, list[float]] = {}
        for ep, r in zip(episodes, rewards, strict=True):
            by_source.setdefault(ep.task.source, []).append(r)
        for source, rs in by_source.items():
            self.log(RL_SOURCE_REWARD.format(source=source), sum(rs) / len(rs), **kw)

    # -------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val = {}

    def validation_step(self, batch: list[TaskInput], batch_idx: int, dataloader_idx: int = 0) -> None:
        episodes = self.runner.run(self.model, batch, 1, temperature=0.0)
        rewards = [score_episode(ep) for ep in episodes]
        dm = self.trainer.datamodule
        names = dm.val_names if isinstance(dm, TaskDataModule) else []
        name = names[dataloader_idx] if dataloader_idx < len(names) else str(dataloader_idx)
        eps, rs = self._val.setdefault(name, ([], []))
        eps.extend(episodes)
        rs.extend(rewards)

    def on_validation_epoch_end(self) -> None:
        for name, (episodes, rewards) in self._val.items():
            s = summarize(episodes, rewards)["all"]
            self.log(VAL_SOURCE_REWARD.format(source=name), s["reward"], on_step=False, on_epoch=True)
            self.log(VAL_SOURCE_ACCURACY.format(source=name), s["accuracy"], on_step=False, on_epoch=True)
