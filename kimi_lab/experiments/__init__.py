"""Experiments that chain several runs (pre-train -> SFT -> RL) and report on them."""
