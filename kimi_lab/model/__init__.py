"""The K2 backbone and its parts."""

from kimi_lab.model.backbone import K2Model, LMOutput
from kimi_lab.model.params import ParamCount, count_params

__all__ = ["K2Model", "LMOutput", "ParamCount", "count_params"]
