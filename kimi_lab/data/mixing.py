"""Choosing the next document's source: weights, and the K2.5 fusion schedule.

Without a vision ratio, each document's source is drawn by weight (vision
sources only once vision has started). With one, the choice is between text and
vision by deficit: whenever the share of tokens from vision sources (their
placeholder runs and the text that comes with them: code, captions, prose) among
the tokens emitted since vision started is below the target, the next document
comes from a vision source, else from a text source (each drawn by weight within
its kind). That holds the ratio constant from the first vision step on, as
K2.5's joint pre-training does.
Every draw uses its own seeded generator, so the state is two counters.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class MixerState:
    draws: int = 0
    text_tokens: int = 0  # since vision started (all tokens when there is no vision)
    vision_tokens: int = 0


class Mixer:
    def __init__(
        self,
        weights: dict[str, float],
        vision: set[str],
        seed: str,
        vision_start_step: int = 0,
        vision_ratio: float | None = None,
        state: MixerState | None = None,
    ) -> None:
        self.text = {n: w for n, w in weights.items() if n not in vision and w > 0}
        self.vision = {n: w for n, w in weights.items() if n in vision and w > 0}
        self.seed = seed
        self.vision_start_step = vision_start_step
        self.vision_ratio = vision_ratio
        self.state = state or MixerState()

    def vision_on(self, step: int) -> bool:
        return bool(self.vision) and step >= self.vision_start_step

    @staticmethod
    def _pick(weights: dict[str, float], rng: random.Random) -> str:
        names = sorted(weights)
        return rng.choices(names, weights=[weights[n] for n in names])[0]

    def choose(self, step: int) -> str:
        rng = random.Random(f"{self.seed}/mix/{self.state.draws}")
        self.state.draws += 1
        on = self.vision_on(step)
        if self.vision_ratio is None or not on:
            pool = {**self.text, **(self.vision if on else {})}
            return self._pick(pool or self.vision, rng)
        s = self.state
        total = s.text_tokens + s.vision_tokens
        share = s.vision_tokens / total if total else 0.0
        want_vision = share < self.vision_ratio
        group = self.vision if (want_vision or not self.text) else self.text
        return self._pick(group, rng)

    def account(self, step: int, text_tokens: int, vision_tokens: int) -> None:
        if self.vision_ratio is not None and not self.vision_on(step):
            return  # the ratio is measured from the moment vision starts
        self.state.text_tokens += text_tokens
        self.state.vision_tokens += vision_tokens

    def target_ratio(self, step: int) -> float:
        if not self.vision_on(step):
            return 0.0
        return self.vision_ratio if self.vision_ratio is not None else float("nan")
