"""Optimizers and learning-rate schedules."""

from kimi_lab.optim.groups import ParamGroup, build_param_groups
from kimi_lab.optim.schedule import WSD, wsd_multiplier

__all__ = ["WSD", "ParamGroup", "build_param_groups", "wsd_multiplier"]
