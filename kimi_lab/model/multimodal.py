"""KimiK25: the K2 language model with MoonViT-3D and the projector (vision optional).

Vision embeddings replace the image / video placeholder tokens of the LM input,
in order. Inputs follow transformers' ``kimi_k25``: ``input_ids``,
``attention_mask``, ``pixel_values`` + ``image_grid_thw`` for images and
``pixel_values_videos`` + ``video_grid_thw`` for video chunks, so one batch
feeds both implementations. Inconsistent inputs raise ``VisionInputError``
before any forward work, naming the image or chunk at fault.
"""

from __future__ import annotations

import torch
from torch import nn

from kimi_lab.config.schema import ModelConfig
from kimi_lab.errors import DataError
from kimi_lab.model.backbone import K2Model, LMOutput
from kimi_lab.model.kv_cache import LatentCache
from kimi_lab.model.vision import MoonViT3D, Projector


class VisionInputError(DataError):
    """Pixels, grids and placeholder tokens that do not fit together."""


class KimiK25(nn.Module):
    def __init__(self, cfg: ModelConfig, device_type: str = "cpu") -> None:
        super().__init__()
        self.cfg = cfg
        self.language_model = K2Model(cfg, device_type=device_type)
        self.vision_tower: MoonViT3D | None = None
        self.projector: Projector | None = None
        if cfg.vision is not None:
            self.vision_tower = MoonViT3D(cfg.vision)
            self.projector = Projector(cfg.vision, cfg.hidden_size)

    @property
    def has_vision(self) -> bool:
        return self.vision_tower is not None

    def check_vision_inputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None,
        pixel_values_videos: torch.Tensor | None,
        video_grid_thw: torch.Tensor | None,
    ) -> None:
        v = self.cfg.vision
        for kind, pixels, grid, token in (
            ("image", pixel_values, image_grid_thw, None if v is None else v.image_token_id),
            ("video chunk", pixel_values_videos, video_grid_thw, None if v is None else v.video_token_id),
        ):
            n_given = 0 if grid is None else len(grid)
            if n_given and v is None:
                raise VisionInputError(
                    f"the batch holds {n_given} {kind}(s) but the model has no vision tower"
                )
            if v is None:
                continue
            placeholders = int((input_ids == token).sum())
            if grid is None or pixels is None or n_given == 0:
                if placeholders:
                    raise VisionInputError(f"{placeholders} {kind} placeholder tokens but no {kind} pixels")
                continue
            p, m = v.patch_size, v.merge_size
            if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, p, p):
                raise VisionInputError(
                    f"{kind} pixels must be (patches, 3, {p}, {p}), got {tuple(pixels.shape)}"
                )
            expected_tokens = 0
            for i, (t, h, w) in enumerate(grid.tolist()):
                if t < 1 or h < 1 or w < 1:
                    raise VisionInputError(
                        f"{kind} {i}: grid (t={t}, h={h}, w={w}) is empty (an image smaller than one patch, or a video with no frames)"
                    )
                if h % m or w % m:
                    raise VisionInputError(
                        f"{kind} {i}: grid {h}x{w} patches is not a multiple of the {m}x{m} merge"
                    )
                if t > v.pos_emb_time:
                    raise VisionInputError(
                        f"{kind} {i}: {t} frames in one chunk, more than model.vision.pos_emb_time={v.pos_emb_time}"
                    )
                expected_tokens += h * w // (m * m)
            n_patches = int((grid[:, 0] * grid[:, 1] * grid[:, 2]).sum())
            if n_patches != pixels.shape[0]:
                raise VisionInputError(
                    f"{kind} grids describe {n_patches} patches but the pixels hold {pixels.shape[0]}"
                )
            if placeholders != expected_tokens:
                raise VisionInputError(
                    f"{placeholders} {kind} placeholder tokens but the {n_given} {kind}(s) give {expected_tokens} embeddings"
                )

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """LM input embeddings with every placeholder replaced by its vision embedding."""
        self.check_vision_inputs(input_ids, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw)
        if self.vision_tower is None:
            return self.language_model.embed(input_ids)
        # Placeholder ids may lie outside the vocabulary (K2.5's video placeholder does): embed
        # them as token 0; their rows are replaced below anyway.
        v = self.cfg.vision
        placeholder = (input_ids == v.image_token_id) | (input_ids == v.video_token_id)
        embeds = self.language_model.embed(input_ids.masked_fill(placeholder, 0))
        parts = [
            (pixel_values, image_grid_thw, self.cfg.vision.image_token_id),
            (pixel_values_videos, video_grid_thw, self.cfg.vision.video_token_id),
        ]
        parts = [(px, g, tok) for px, g, tok in parts if g is not None and len(g)]
        if not parts:
            return embeds
        # One packed pass over every image and chunk (block-diagonal attention keeps them apart).
        grouped = self.vision_tower(
            torch.cat([px for px, _, _ in parts]), torch.cat([g for _, g, _ in parts])
        )
        vision = self.projector(grouped).to(embeds.dtype)
        m2 = self.cfg.vision.merge_size**2
        start = 0
        for _, grid, token in parts:
            n = int((grid[:, 1] * grid[:, 2]).sum()) // m2
            mask = input_ids == token
            embeds = embeds.masked_scatter(mask[..., None].expand_as(embeds), vision[start : start + n])
            start += n
        return embeds

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        compute_logits: bool = True,
        positions: torch.Tensor | None = None,
        cache: LatentCache | None = None,
        logits_to_keep: int = 0,
        token_mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> LMOutput:
        embeds = self.embed(input_ids, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw)
        return self.language_model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            compute_logits=compute_logits,
            positions=positions,
            cache=cache,
            logits_to_keep=logits_to_keep,
            token_mask=token_mask,
            segment_ids=segment_ids,
        )
