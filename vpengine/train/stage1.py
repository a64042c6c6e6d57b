"""Stage 1: video-text contrastive pretraining of the LvT model.

The official model has no temperature parameter (its demo divides by a fixed
0.01); training needs one, so this task holds a learnable inverse temperature
``logit_scale`` (stored as its log, CLIP's parameterization) beside the model.
It is not part of the exported model.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..model.video_text import VideoTextModel
from .losses import contrastive_loss


class ContrastiveTask(nn.Module):
    """``VideoTextModel`` + learnable temperature -> the symmetric contrastive loss.

    init_temperature: starting temperature (CLIP's 0.07 by default).
    max_logit_scale: the inverse temperature is clamped to at most this (CLIP's
        100), which keeps the logits of a collapsing run finite; the parameter
        itself is clamped at every forward, so it can still move down from the cap.
    """

    def __init__(self, model: VideoTextModel, *, init_temperature: float = 0.07, max_logit_scale: float = 100.0):
        super().__init__()
        if not isinstance(model, VideoTextModel):
            raise ValueError(f"stage 1 trains a video-text (LvT) model; got {type(model).__name__}")
        if not 0 < init_temperature <= 1 or not max_logit_scale >= 1 / init_temperature:
            raise ValueError(f"need 0 < init_temperature <= 1 and max_logit_scale >= 1/init_temperature; "
                             f"got {init_temperature}, {max_logit_scale}")
        self.model = model
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_log_logit_scale = math.log(max_logit_scale)

    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.clamp(max=self.max_log_logit_scale).exp()

    def forward(self, video: torch.Tensor, text_ids: torch.Tensor, text_paddings: torch.Tensor,
                frame_paddings: torch.Tensor | None = None) -> dict:
        """``video [B, T, H, W, 3]`` (uint8 or float in [0, 1]) and its B captions
        ``text_ids/text_paddings [B, L]`` -> ``{"loss", "video_to_text_acc",
        "text_to_video_acc", "temperature"}``."""
        if text_ids.shape[0] != video.shape[0]:
            raise ValueError(f"{video.shape[0]} videos but {text_ids.shape[0]} captions: stage 1 needs one "
                             "caption per clip")
        video_emb = self.model.encode_video(video, frame_paddings)
        text_emb = self.model.encode_text(text_ids, text_paddings)
        # The cap holds the parameter itself, as CLIP clamps it after each step:
        # a clamp in the forward alone gives no gradient above the cap, and
        # AdamW's momentum carries the parameter past it, where it then stayed
        # frozen for the rest of the run, however the loss wanted it to move.
        with torch.no_grad():
            self.log_logit_scale.clamp_(max=self.max_log_logit_scale)
        scale = self.logit_scale()  # exactly at the cap the clamp still passes the gradient
        # Equal token rows are one caption (common in web and ASR captions): not negatives of each other.
        keys = torch.where(text_paddings > 0.5, 0, text_ids.long() + 1)  # +1: id 0 may be a real piece
        out = contrastive_loss(video_emb, text_emb, scale, caption_keys=keys)
        out["temperature"] = 1.0 / scale.detach()
        return out

    def exported(self) -> VideoTextModel:
        """The trained model (what :func:`vpengine.save` writes)."""
        return self.model


__all__ = ["ContrastiveTask"]
