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

import asyncio
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
    SWARM_DIR,
    TRAIN_LOSS,
    VAL_PARL,
)
from kimi_lab.phases.sampling import SamplingPhase
from kimi_lab.rl.loss import group_advantages, k25_policy_loss
from kimi_lab.rl.rescore import ScoredRow, rescore, turn_rows
from kimi_lab.swarm.checkpoint_policy import CheckpointPolicy
from kimi_lab.swarm.environment import SearchEnvironment
from kimi_lab.swarm.result import EpisodeResult
from kimi_lab.swarm.reward import ParlWeights, lambdas, parl_reward
from kimi_lab.swarm.runtime import run_episode
from kimi_lab.swarm.types import Policy, SwarmTask


def episode_stats(results: list[EpisodeResult], widths: list[int]) -> dict[str, float]:
    """Means over episodes of what PARL logs (reward components come from ``result.reward``);
    ``widths[i]`` is episode i's task width."""
    n = max(1, len(results))

    def mean(f: Any) -> float:
        return sum(f(r) for r in results) / n

    return {
        "reward": mean(lambda r: (r.reward or {}).get("total", 0.0)),
        "perf": mean(lambda r: (r.reward or {}).get("perf", 0.0)),
        "parallel": mean(lambda r: (r.reward or {}).get("parallel", 0.0)),
        "finish": mean(lambda r: (r.reward or {}).get("finish", 0.0)),
        "critical_steps": mean(lambda r: r.critical_steps),
        "total_steps": mean(lambda r: r.total_steps),
        "subagents": mean(lambda r: r.subagents_spawned),
        "parallelism": mean(lambda r: r.parallelism),
        "over_budget": mean(lambda r: r.budget_exceeded is not None),
        "delegated": mean(lambda r: r.assignments > 0),
        "excess_subagents": sum(max(0, r.subagents_spawned - w) for r, w in zip(results, widths)) / n,
    }


class PARLModule(SamplingPhase):
    # Built in setup(): they need the tokenizer (made by prepare_data) and the datamodule's corpus.
    tok: Tokenizer
    banned_ids: tuple[int, ...]
    env: SearchEnvironment

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.sampler = torch.Generator().manual_seed(cfg.seed)
        self.frozen: torch.nn.Module | None = None  # the frozen sub-agent model, when not scripted
        self._val: list[EpisodeResult] = []  # this validation's episodes
        self._val_widths: list[int] = []  # and their tasks' widths

    def setup(self, stage: str) -> None:
        from kimi_lab.chat import ChatEncoder
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

        def reward(task: SwarmTask, res: EpisodeResult) -> dict[str, float]:
            return parl_reward(task, res, weights, pc.parallel_form, pc.finish_form)

        async def main() -> list[EpisodeResult]:
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
            plays = [
                run_episode(
                    task,
                    self.env,
                    orchestrator,
                    self._subagent(task),
                    pc.swarm,
                    trace=traces[i] if traces else None,
                    reward=reward,
                )
                for i, task in enumerate(t for t in tasks for _ in range(k))
            ]
            return list(await asyncio.gather(*plays))

        return asyncio.run(main())

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
        self._log_episodes(results, [t.width for t in batch for _ in range(K)], pl.kept_fraction)
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

    def _log_episodes(self, results: list[EpisodeResult], widths: list[int], kept: float) -> None:
        s = episode_stats(results, widths)
        w = self.weights()
        kw: dict[str, Any] = {"on_step": True, "on_epoch": False}
        self.log(PARL_REWARD, s["reward"], prog_bar=True, **kw)
        self.log(PARL_PERF, s["perf"], prog_bar=True, **kw)
        self.log(PARL_PARALLEL, s["parallel"], **kw)
        self.log(PARL_FINISH, s["finish"], **kw)
        self.log(PARL_LAMBDA1, w.lambda1, **kw)
        self.log(PARL_LAMBDA2, w.lambda2, **kw)
        self.log(PARL_CRITICAL_STEPS, s["critical_steps"], **kw)
        self.log(PARL_TOTAL_STEPS, s["total_steps"], **kw)
        self.log(PARL_SUBAGENTS, s["subagents"], **kw)
        self.log(PARL_PARALLELISM, s["parallelism"], **kw)
        self.log(PARL_OVER_BUDGET, s["over_budget"], **kw)
        self.log(PARL_DELEGATED, s["delegated"], **kw)
        self.log(PARL_EXCESS, s["excess_subagents"], **kw)
        self.log(PARL_KEPT_FRACTION, kept, **kw)

    # -------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val = []
        self._val_widths = []

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
        self._val.extend(self.play(batch, 1, 0.0, traces))
        self._val_widths.extend(t.width for t in batch)

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        s = episode_stats(self._val, self._val_widths)
        keys = (
            "perf",
            "critical_steps",
            "total_steps",
            "subagents",
            "parallelism",
            "over_budget",
            "delegated",
        )
        for key in keys:
            name = "score" if key == "perf" else key
            self.log(VAL_PARL.format(key=name), s[key], on_step=False, on_epoch=True)


__all__ = ["PARLModule", "episode_stats"]
