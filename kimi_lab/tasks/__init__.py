"""Verifiable tasks for zero-vision SFT and joint RL: generators, reference programs, rewards.

``visual`` makes image tasks, ``zero_vision`` their text twins and the SFT
trajectories, ``rewards`` scores what a policy answers; ``programs`` holds the
reference programs whose solving part is shared by both modalities.
"""

from kimi_lab.tasks.base import ANSWER_TYPES, SYSTEM_PROMPT, Task
from kimi_lab.tasks.rewards import score
from kimi_lab.tasks.text_twins import text_task
from kimi_lab.tasks.visual import image_task

__all__ = ["ANSWER_TYPES", "SYSTEM_PROMPT", "Task", "image_task", "score", "text_task"]
