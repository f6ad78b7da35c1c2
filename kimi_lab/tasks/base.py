"""A task: a question over images or text files, its checkable answer and a reference program.

Tasks are what RL samples prompts from and what zero-vision SFT turns into
trajectories. A task travels in shards as a chat record (``modality: "chat"``):
the prompt conversation, ``task`` (id, family, answer, ...) and ``files``, with
its images beside the record as ``image_0.png``, ``image_1.png``, ... -- the
names the user message carries and the files the sandbox puts in the tool's cwd.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kimi_lab.chat_format import Message
from kimi_lab.data.schema import make_record

ANSWER_TYPES = ("count", "boxes", "path_length", "shares", "text", "image_code")

SYSTEM_PROMPT = (
    "You are a careful problem solver with a `python` tool. A call runs Python code in a sandbox "
    "whose working directory holds the task's files and images (image_0.png, image_1.png, ...); "
    "numpy is `np`, PIL's `Image` is imported, `images` holds the images as uint8 RGB arrays and "
    "`image` the first one. You see what the code prints. Use the tool to measure rather than guess, "
    "then end with a final line `Answer: ...`."
)


def task_seed(stream: str, seed: int, index: int) -> int:
    """A generator seed per (stream, build seed, index): SFT and eval builds never share a task."""
    return int(hashlib.sha1(f"{stream}/{seed}/{index}".encode()).hexdigest()[:12], 16)


@dataclass
class Task:
    id: str
    family: str
    modality: str  # "text" | "image"
    question: str
    answer: Any  # JSON-able ground truth, in the form ``answer_type`` says
    answer_type: str
    solution_code: str  # prints the answer when run in the sandbox with these images and files
    images: list[np.ndarray] = field(default_factory=list)  # uint8 (H, W, 3)
    files: dict[str, str] = field(default_factory=dict)
    plan: str = ""  # the sentence an SFT trajectory says before calling the tool

    def __post_init__(self) -> None:
        if self.modality not in ("text", "image") or self.answer_type not in ANSWER_TYPES:
            raise ValueError(
                f"task {self.id}: bad modality {self.modality!r} or answer type {self.answer_type!r}"
            )

    @property
    def image_names(self) -> list[str]:
        return [f"image_{i}" for i in range(len(self.images))]

    def messages(self, system_prompt: str = SYSTEM_PROMPT) -> list[Message]:
        """The prompt: system, then the user's question carrying the images by name."""
        return [Message("system", system_prompt), Message("user", self.question, images=self.image_names)]

    def image_pngs(self) -> dict[str, bytes]:
        """``{"image_0.png": PNG bytes, ...}``: the sample entries beside the record."""
        from PIL import Image

        out = {}
        for name, rgb in zip(self.image_names, self.images):
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
            out[f"{name}.png"] = buf.getvalue()
        return out

    def to_record(
        self, source: str, messages: list[Message] | None = None, **provenance: Any
    ) -> dict[str, Any]:
        """A shard record: the prompt (or a whole trajectory, for SFT), the task and its files."""
        record = make_record("chat", source, **provenance)
        record["messages"] = [m.to_dict() for m in (messages or self.messages())]
        record["task"] = {
            "id": self.id,
            "family": self.family,
            "modality": self.modality,
            "answer": self.answer,
            "answer_type": self.answer_type,
            "solution_code": self.solution_code,
            "plan": self.plan,
        }
        record["files"] = dict(self.files)
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any], images: list[np.ndarray] | None = None) -> Task:
        """Back from a record; the question is the first user message's text."""
        t = record["task"]
        question = next(m["content"] for m in record["messages"] if m.get("role") == "user")
        return cls(
            id=t["id"],
            family=t["family"],
            modality=t["modality"],
            question=question,
            answer=t["answer"],
            answer_type=t["answer_type"],
            solution_code=t.get("solution_code", ""),
            images=list(images or []),
            files=dict(record.get("files", {})),
            plan=t.get("plan", ""),
        )

    @classmethod
    def from_sample(cls, sample: dict[str, Any]) -> Task:
        """Back from a WebDataset sample (``json`` record + ``image_N.png`` entries)."""
        from kimi_lab.data.decode import decode_image

        record = json.loads(sample["json"])
        images = []
        while f"image_{len(images)}.png" in sample:
            images.append(decode_image(sample[f"image_{len(images)}.png"]))
        return cls.from_record(record, images)
