"""Phase ``parl``: Parallel-Agent RL (K2.5) — train the orchestrator of an agent swarm.

Each step: ``prompts_per_step`` swarm tasks, K episodes each, played concurrently
by the asyncio runtime (``kimi_lab.swarm.runtime``). The orchestrator's turns are
sampled from the model being trained (``CheckpointPolicy``, batched across the
episodes); sub-agents are frozen — scripted from the task's verified calls, or a
fixed checkpoint — and their tokens never enter the loss. Each episode is scored
with the PARL reward (``kimi_lab.swarm.reward``: r_perf + annealed lambda1 *
r_parallel + lambda2 * r_finish), advantages are (r - mean_K r) / tau, and the
loss is phase rl's masked policy gradient (``kimi_lab.rl.loss``) over every token
the orchestrator sampled, re-scored in the context it was sampled in (consecutive
turns share one row where the later context extends the earlier: ``turn_rows``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kimi_lab.config.schema import RunConfig
from kimi_lab.data.tokenizer import Tokenizer
from kimi_lab.metrics import (
    PARL_CRITICAL_STEPS,
    PARL_DELEGATED,
    PARL_EXCESS,
    PARL_FINISH,
    PARL_KEPT_FRACTION,
    PARL_LAMBDA1,
    PARL_LAMBDA2,
    PARL_OVER_BUDGET,
    PARL_PARALLEL,
    PARL_PARALLELISM,
    PARL_PERF,
    PARL_REWARD,
    PARL_SUBAGENTS,
    PARL_TOTAL_STEPS,
    PARL_TRUNCATED,
    SWARM_DIR,
    TRAIN_LOSS,
    VAL_PARL,
)
from kimi_lab.phases.sampling import SamplingPhase
from kimi_lab.rl.loss import group_advantages, k25_policy_loss
from kimi_lab.rl.rescore import ScoredRow, rescore, turn_rows
from kimi_lab.swarm.checkpoint_policy import CheckpointPolicy
from kimi_lab.swarm.environment import SearchEnvironment
from kimi_lab.swarm.play import play
from kimi_lab.swarm.result import EpisodeResult
from kimi_lab.swarm.reward import ParlWeights, lambdas, parl_reward
from kimi_lab.swarm.summary import EpisodeSummary, summarize
from kimi_lab.swarm.types import Policy, SwarmTask


class PARLModule(SamplingPhase):
    # Built in setup(): they need the tokenizer (made by prepare_data) and the datamodule's corpus.
    tok: Tokenizer
    banned_ids: tuple[int, ...]
    env: SearchEnvironment

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.sampler = torch.Generator().manual_seed(cfg.seed)
        self.frozen: torch.nn.Module | None = None  # the frozen sub-agent model, when not scripted
        self._val: list[EpisodeSummary] = []  # this validation's episodes

    def setup(self, stage: str) -> None:
        from kimi_lab.chat_format import ChatEncoder
        from kimi_lab.data.tokenizer import load_or_train

        pc = self.cfg.phase.parl
        self.tok = load_or_train(self.cfg.data.tokenizer, self.cfg.model.vocab_size)
        self.banned_ids = ChatEncoder(self.tok).banned_ids  # never sampled, so never scored
        corpus = self.trainer.datamodule.corpus
        self.env = SearchEnvironment(corpus)
        if pc.subagent != "scripted":
            from kimi_lab.swarm.checkpoint_policy import load_checkpoint_policy

            _, frozen = load_checkpoint_policy(pc.subagent)
            for p in frozen.model.parameters():
                p.requires_grad_(False)
            self.frozen = frozen.model  # not a submodule: never saved, never trained

    # --------------------------------------------------------------- episodes
    def weights(self) -> ParlWeights:
        return lambdas(self.cfg.phase.parl, self.global_step, self.cfg.trainer.max_steps)

    def _subagent(self, task: SwarmTask) -> Policy:
        if self.frozen is None:
            from kimi_lab.swarm.scripted import ScriptedSubagent

            return ScriptedSubagent(task)
        pc = self.cfg.phase.parl
        return CheckpointPolicy(
            self.frozen, self.tok, pc.max_new_tokens, temperature=pc.subagent_temperature, name="subagent"
        )

    def play(
        self, tasks: list[SwarmTask], k: int, temperature: float, traces: list[Path | None] | None = None
    ) -> list[EpisodeResult]:
        """``k`` episodes per task (grouped: task 0's first), all played concurrently."""
        pc = self.cfg.phase.parl
        weights = self.weights()
        orchestrator = CheckpointPolicy(
            self.model,
            self.tok,
            pc.max_new_tokens,
            max_seq_len=self.cfg.model.max_seq_len,
            temperature=temperature,
            generator=self.sampler,
            max_batch=max(1, len(tasks) * k),
            name="orchestrator",
        )

        def reward(task: SwarmTask, res: EpisodeResult) -> dict[str, float]:
            return parl_reward(task, res, weights, pc.parallel_form, pc.finish_form)

        return play(
            tasks,
            self.env,
            lambda task: orchestrator,
            self._subagent,
            pc.swarm,
            repeats=k,
            traces=traces,
            reward=reward,
        )

    # ------------------------------------------------------------------ train
    def training_step(self, batch: list[SwarmTask], batch_idx: int) -> torch.Tensor | None:
        pc = self.cfg.phase.parl
        K = pc.samples_per_prompt
        with self.clock.sampling():  # the whole swarm episode: the orchestrator's turns, sub-agents, tools
            results = self.play(batch, K, pc.temperature)
        self.clock.tokens += sum(len(t.tokens) for r in results for t in r.orchestrator_turns)
        rewards = torch.tensor([(r.reward or {}).get("total", 0.0) for r in results])
        adv = group_advantages(rewards, K, pc.tau)
        sc = rescore(self.model, self._orchestrator_rows(results, adv), self.tok.pad_id, self.banned_ids)
        pl = k25_policy_loss(sc.logp_new, sc.logp_old, sc.advantages, pc.alpha, pc.beta)
        self.count_step_tokens(sc.n_tokens)
        self._log_episodes(
            [EpisodeSummary.of(t, r) for t, r in zip(self._episodes(batch, K), results)], pl.kept_fraction
        )
        self.log(TRAIN_LOSS, pl.loss, on_step=True, on_epoch=False)
        if not pl.loss.requires_grad:
            return None  # the orchestrator sampled nothing this step
        return pl.loss + sc.aux_loss

    def _orchestrator_rows(self, results: list[EpisodeResult], adv: torch.Tensor) -> list[ScoredRow]:
        """The orchestrator's sampled turns, each in the context it saw (folded per episode)."""
        return [
            row
            for i, res in enumerate(results)
            for row in turn_rows(
                [(t.prompt_tokens, t.tokens, t.logprobs) for t in res.orchestrator_turns], float(adv[i])
            )
        ]

    @staticmethod
    def _episodes(tasks: list[SwarmTask], k: int) -> list[SwarmTask]:
        """Each episode's task, in the order ``play`` returns them."""
        return [t for t in tasks for _ in range(k)]

    def _log_episodes(self, episodes: list[EpisodeSummary], kept: float) -> None:
        s = summarize(episodes)
        w = self.weights()
        kw: dict[str, Any] = {"on_step": True, "on_epoch": False}
        self.log(PARL_REWARD, s.get("reward_total", 0.0), prog_bar=True, **kw)
        self.log(PARL_PERF, s["score"], prog_bar=True, **kw)
        self.log(PARL_PARALLEL, s.get("reward_parallel", 0.0), **kw)
        self.log(PARL_FINISH, s.get("reward_finish", 0.0), **kw)
        self.log(PARL_LAMBDA1, w.lambda1, **kw)
        self.log(PARL_LAMBDA2, w.lambda2, **kw)
        for key, name in (
            (PARL_CRITICAL_STEPS, "critical_steps"),
            (PARL_TOTAL_STEPS, "total_steps"),
            (PARL_SUBAGENTS, "subagents"),
            (PARL_PARALLELISM, "parallelism"),
            (PARL_OVER_BUDGET, "over_budget"),
            (PARL_DELEGATED, "delegated"),
            (PARL_EXCESS, "excess_subagents"),
            (PARL_TRUNCATED, "truncated_turns"),
        ):
            self.log(key, s[name], **kw)
        self.log(PARL_KEPT_FRACTION, kept, **kw)

    # -------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch: list[SwarmTask], batch_idx: int, dataloader_idx: int = 0) -> None:
        n_traces = self.cfg.phase.parl.traces_per_eval
        traces: list[Path | None] = []
        folder = Path(self.trainer.default_root_dir) / SWARM_DIR
        for task in batch:
            if len(self._val) + len(traces) < n_traces and self.trainer.is_global_zero:
                traces.append(folder / f"step{self.global_step:06d}-{task.id}.jsonl")
            else:
                traces.append(None)
        if any(traces):
            folder.mkdir(parents=True, exist_ok=True)
        results = self.play(batch, 1, 0.0, traces)
        self._val.extend(EpisodeSummary.of(t, r) for t, r in zip(batch, results, strict=True))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        s = summarize(self._val)
        keys = (
            "score",
            "critical_steps",
            "total_steps",
            "subagents",
            "parallelism",
            "over_budget",
            "delegated",
            "truncated_turns",
        )
        for key in keys:
            self.log(VAL_PARL.format(key=key), s[key], on_step=False, on_epoch=True)


__all__ = ["PARLModule"]
