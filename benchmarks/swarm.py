"""``kimi-lab bench swarm``: the swarm runtime's own cost with many simulated concurrent sub-agents.

One episode: a simulated orchestrator creates N sub-agents in one turn, assigns them
all in the next (one stage, N concurrent sub-agents), then answers. Every policy
call of every agent sleeps a fixed latency (a stand-in for the model) and each
sub-agent calls a no-op tool on all but its last step. With a free runtime the
episode's wall time would be critical_steps x latency; the ratio shows how far off it
is, and the runtime's overhead is reported per sub-agent step, in microseconds. A
second run at zero latency measures the same overhead with nothing to hide behind.

The peer is bare asyncio: the same number of tasks each sleeping the same latency
the same number of times, nothing else. Its own wall / ideal shows what the event
loop alone costs at this width; the runtime's overhead beyond it is what the swarm
adds. ``break_even_latency_ms`` is the per-call latency above which the episode's
wall time would stay within the 10% target, at the measured overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kimi_lab.config.swarm import SwarmConfig
from kimi_lab.swarm.runtime import run_episode_sync
from kimi_lab.swarm.scripted import SimulatedPolicy
from kimi_lab.swarm.types import SwarmTask, ToolSpec


class NoopEnvironment:
    def __init__(self) -> None:
        self.tools = [ToolSpec("noop", "does nothing", "any text")]

    def call(self, name: str, tool_input: str) -> str:
        return "ok"


def episode(agents: int, steps: int, latency_s: float, trace: Path | None) -> dict[str, Any]:
    task = SwarmTask("bench-swarm", "wide", f"{agents} simulated parts", [], agents)
    cfg = SwarmConfig(
        max_orchestrator_steps=8,
        max_subagent_steps=steps,
        max_critical_steps=steps + 8,
        max_subagents=agents,
        max_concurrency=agents,
    )  # default timeouts: long enough never to fire here, and their timers are part of the cost
    orchestrator = SimulatedPolicy(latency_s, agents=agents)
    subagent = SimulatedPolicy(latency_s, steps=steps)
    gc.collect()  # each measurement starts from the same heap
    t0 = time.perf_counter()
    res = run_episode_sync(task, NoopEnvironment(), orchestrator, subagent, cfg, trace)
    wall = time.perf_counter() - t0
    if res.completed_assignments != agents or res.subagent_steps != agents * steps:
        raise RuntimeError(f"the simulated episode went wrong: {res!r}")
    ideal = res.critical_steps * latency_s
    return {
        "wall_s": wall,
        "critical_steps": res.critical_steps,
        "ideal_s": ideal,
        "subagent_steps": res.subagent_steps,
        "overhead_us_per_step": 1e6 * (wall - ideal) / res.subagent_steps,
        "wall_over_ideal": wall / ideal if ideal > 0 else None,
    }


def bare_asyncio(agents: int, steps: int, latency_s: float) -> float:
    """Wall seconds of ``agents`` tasks each sleeping ``latency_s`` ``steps`` times, concurrently."""

    async def agent() -> None:
        for _ in range(steps):
            await asyncio.sleep(latency_s)

    async def all_agents() -> None:
        await asyncio.gather(*(agent() for _ in range(agents)))

    gc.collect()
    t0 = time.perf_counter()
    asyncio.run(all_agents())
    return time.perf_counter() - t0


def run(
    agents: int = 10_000, steps: int = 3, latency_ms: float = 20.0, trace: bool = False
) -> dict[str, Any]:
    latency_s = latency_ms / 1e3
    bare = bare_asyncio(agents, steps, latency_s)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.jsonl" if trace else None
        timed = episode(agents, steps, latency_s, path)
        trace_events = sum(1 for _ in path.open()) if path else 0
    free = episode(agents, steps, 0.0, None)
    orchestrator_s = (timed["critical_steps"] - steps) * latency_s  # its own turns, in series
    beyond = timed["wall_s"] - orchestrator_s - bare
    return {
        "agents": agents,
        "steps_per_agent": steps,
        "latency_ms": latency_ms,
        "trace": trace,
        "trace_events": trace_events,
        **timed,
        "zero_latency_wall_s": free["wall_s"],
        "zero_latency_us_per_step": free["overhead_us_per_step"],
        "bare_asyncio_wall_s": bare,
        "bare_asyncio_wall_over_ideal": bare / (steps * latency_s),
        "overhead_beyond_asyncio_us_per_step": 1e6 * beyond / timed["subagent_steps"],
        "break_even_latency_ms": 1e3
        * (timed["wall_s"] - timed["ideal_s"])
        / (0.10 * timed["critical_steps"]),
        "target_wall_over_ideal": 1.10,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="kimi-lab bench swarm", description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", default="swarm", choices=["swarm"])
    p.add_argument("--json", action="store_true")
    p.add_argument("--agents", type=int, default=10_000)
    p.add_argument("--steps", type=int, default=3, help="steps per sub-agent (the last one answers)")
    p.add_argument("--latency-ms", type=float, default=20.0, help="every policy call's latency")
    p.add_argument("--trace", action="store_true", help="also write the episode's JSONL trace")
    args = p.parse_args(argv)
    if args.agents < 1 or args.steps < 1 or args.latency_ms <= 0:
        p.error("--agents and --steps must be >= 1, --latency-ms > 0")
    res = run(args.agents, args.steps, args.latency_ms, args.trace)
    if args.json:
        print(json.dumps(res))
        return res
    print(
        f"swarm runtime: {res['agents']:,} concurrent simulated sub-agents x {res['steps_per_agent']} steps, "
        f"{res['latency_ms']:g} ms per policy call{', traced' if res['trace'] else ''}"
    )
    rows = [
        ("critical steps", f"{res['critical_steps']}"),
        ("ideal wall (critical steps x latency)", f"{res['ideal_s']:.3f} s"),
        ("measured wall", f"{res['wall_s']:.3f} s"),
        ("wall / ideal", f"{res['wall_over_ideal']:.3f} (target <= {res['target_wall_over_ideal']:.2f})"),
        ("runtime overhead per sub-agent step", f"{res['overhead_us_per_step']:.1f} us"),
        ("same at zero latency", f"{res['zero_latency_us_per_step']:.1f} us"),
        ("bare asyncio (sleeps only) wall / ideal", f"{res['bare_asyncio_wall_over_ideal']:.3f}"),
        ("overhead beyond bare asyncio per step", f"{res['overhead_beyond_asyncio_us_per_step']:.1f} us"),
        ("latency where wall / ideal = 1.10", f"{res['break_even_latency_ms']:.0f} ms"),
    ]
    if res["trace"]:
        rows.append(("trace events", f"{res['trace_events']:,}"))
    for name, value in rows:
        print(f"  {name:<40} {value}")
    return res


if __name__ == "__main__":
    main()
