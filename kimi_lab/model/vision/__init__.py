"""The vision side of K2.5: MoonViT-3D and the projector."""

from kimi_lab.model.vision.moonvit import MoonViT3D, Projector

__all__ = ["MoonViT3D", "Projector"]
