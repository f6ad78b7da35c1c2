"""Per-arm results over seeds, and the one rule the reports use to claim a difference.

An arm's value is the mean over its seeds, shown with its range. A report says one arm
is lower than another only when every seed of it is lower than every seed of the other
(the ranges do not overlap) and each arm has at least two seeds; otherwise it says the
difference is within the seed spread, or that one seed cannot tell.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

Verdict = Literal["lower", "higher", "within spread", "one seed"]


@dataclass(frozen=True)
class Spread:
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values) if self.values else math.nan

    @property
    def lo(self) -> float:
        return min(self.values, default=math.nan)

    @property
    def hi(self) -> float:
        return max(self.values, default=math.nan)

    def fmt(self, digits: int = 3) -> str:
        if self.n < 2:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def group(rows: Iterable[dict[str, Any]], arm_key: str, value_key: str) -> dict[Hashable, Spread]:
    """Each arm's values of ``value_key`` over its seeds (NaNs dropped), arms in first-seen order."""
    out: dict[Hashable, list[float]] = {}
    for r in rows:
        v = r[value_key]
        vals = out.setdefault(r[arm_key], [])
        if v is not None and not math.isnan(v):
            vals.append(float(v))
    return {arm: Spread(tuple(v)) for arm, v in out.items()}


def compare(a: Spread, b: Spread) -> Verdict:
    """Is ``a`` lower or higher than ``b`` beyond the seed spread?"""
    if a.n < 2 or b.n < 2:
        return "one seed"
    if a.hi < b.lo:
        return "lower"
    if a.lo > b.hi:
        return "higher"
    return "within spread"


def describe(verdict: Verdict) -> str:
    """``compare``'s verdict as the words the reports put after "A is"."""
    return {
        "lower": "lower beyond the seed spread",
        "higher": "higher beyond the seed spread",
        "within spread": "within the seed spread (no claim)",
        "one seed": "from one seed (no claim)",
    }[verdict]


def seeds_note(rows: list[dict[str, Any]]) -> str:
    """The line every report ends its findings with: how many seeds, and the claim rule."""
    seeds = sorted({r["seed"] for r in rows}, key=lambda s: (s is None, s))
    if len(seeds) < 2:
        return (
            f"One seed per arm (seed {seeds[0] if seeds else '?'}): no difference can be told from seed noise; "
            "run with seed=0,1 (or add a later seed sweep with kimi-lab report DIR --also DIR2)."
        )
    return (
        f"Seeds {', '.join(map(str, seeds))}; values are the mean over seeds [min, max]. A difference is claimed "
        "only where the arms' ranges do not overlap."
    )
