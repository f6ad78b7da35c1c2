"""Experiments that chain several runs (pre-train -> SFT -> RL) and report on them.

``EXPERIMENTS`` is the table ``kimi-lab experiment NAME`` reads: each name is a
module of this package with ``run(out, scale_name, data_dir, seed)``. Adding an
experiment is a module plus one entry here.
"""

EXPERIMENTS: dict[str, str] = {
    "zero_vision": "pre-train -> zero-vision SFT -> eval -> RL -> report",
    "parl_ablation": "swarm SFT -> four PARL reward arms -> eval -> report",
    "vision_coding": "pre-train with image/recording-code pairs vs captions -> SFT -> code-from-pixels eval -> report",
}
