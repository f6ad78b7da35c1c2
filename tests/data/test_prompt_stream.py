"""The RL phases' prompt stream: seeded epochs, mixing by weight, and a resume that sees what an
uninterrupted run would have."""

from __future__ import annotations

import itertools
import random

import pytest

from kimi_lab.config.schema import PhaseName
from kimi_lab.data.prompt_stream import PromptDataModule, PromptSource, PromptStream
from kimi_lab.errors import DataError


def _sources() -> dict[str, PromptSource]:
    def shards(rng: random.Random) -> list[str]:
        order = ["s0", "s1", "s2"]
        rng.shuffle(order)  # a source of shards lists them in the epoch's order
        return [f"{s}/{i}" for s in order for i in range(3)]

    return {"a": PromptSource(shards, 3.0), "b": PromptSource(lambda _rng: ["b0", "b1"], 1.0)}


def _take(stream: PromptStream, n: int) -> list[str]:
    return list(itertools.islice(stream, n))


def test_a_resumed_stream_continues_where_the_consumed_prompts_end() -> None:
    whole = _take(PromptStream(_sources(), seed=7), 40)
    assert _take(PromptStream(_sources(), seed=7, skip=13), 27) == whole[13:]
    assert whole == _take(PromptStream(_sources(), seed=7), 40)  # seeded
    assert whole != _take(PromptStream(_sources(), seed=8), 40)
    # every epoch of a source holds each prompt once, in a fresh order
    a = [p for p in whole if not p.startswith("b")]
    assert sorted(a[:9]) == sorted(a[9:18]) and a[:9] != a[9:18]
    assert 0.6 < len(a) / len(whole) < 0.9  # weights 3:1


def test_a_source_without_prompts_is_a_data_error() -> None:
    stream = PromptStream({"x": PromptSource(lambda _rng: [], 1.0, "phase.rl.tasks.x: no usable task")}, 0)
    with pytest.raises(DataError, match=r"phase\.rl\.tasks\.x: no usable task"):
        next(iter(stream))


def test_the_position_travels_with_the_checkpoint() -> None:
    dm = PromptDataModule(prompts_per_step=2)
    dm.load_state_dict({"prompts_consumed": 6})
    assert dm.state_dict() == {"prompts_consumed": 6}
    dm.load_state_dict({"tasks_consumed": 4})  # a PARL checkpoint written before the one stream
    assert dm.prompts_consumed == 4


def test_every_phase_names_its_module_and_its_data() -> None:
    from kimi_lab.data.datamodule import KimiDataModule
    from kimi_lab.data.task_prompts import TaskDataModule
    from kimi_lab.phases import PHASES, swarm_tasks, task_prompts, token_streams
    from kimi_lab.swarm.datamodule import SwarmTaskDataModule

    assert set(PHASES) == set(PhaseName)
    assert {n: PHASES[n].datamodule for n in PhaseName} == {
        PhaseName.pretrain: token_streams,
        PhaseName.sft: token_streams,
        PhaseName.rl: task_prompts,
        PhaseName.parl: swarm_tasks,
    }
    assert issubclass(TaskDataModule, PromptDataModule) and issubclass(SwarmTaskDataModule, PromptDataModule)
    assert not issubclass(KimiDataModule, PromptDataModule)
