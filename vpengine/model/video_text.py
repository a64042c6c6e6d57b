"""VideoPrism video-text model (official FactorizedVideoCLIP, "LvT";
reference doc sections 8 and 9).

Legend: B videos, T frames, S tokens per frame, D width, Hp/Ep pooler heads
and head dim (Ep = 4*D/Hp).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import ops
from .config import VideoTextConfig
from .encoder import VideoEncoder
from .layers import LayerNorm, SpaceTimeStack, l2_normalize, softplus_scale
from .text import TextEncoder


class AttentionPooler(nn.Module):
    """One learned query cross-attending to the tokens; per-dim softplus query
    scale, no logit cap, no mask; LayerNorm on the pooled vector."""

    def __init__(self, dim: int, num_heads: int, hidden: int):
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"pooler hidden {hidden} is not divisible by its {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = hidden // num_heads
        self.query = nn.Parameter(torch.zeros(1, dim))
        self.q = nn.Linear(dim, hidden)
        self.k = nn.Linear(dim, hidden)
        self.v = nn.Linear(dim, hidden)
        self.per_dim_scale = nn.Parameter(torch.zeros(self.head_dim))
        self.out = nn.Linear(hidden, dim)
        self.norm = LayerNorm(dim)

    def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
        B, L, _ = x_BLD.shape
        H, E = self.num_heads, self.head_dim
        q = self.q(self.query).view(1, H, 1, E)
        q = q * softplus_scale(self.per_dim_scale).to(q.dtype)
        k = self.k(x_BLD).view(B, L, H, E).transpose(1, 2)
        v = self.v(x_BLD).view(B, L, H, E).transpose(1, 2)
        ctx = ops.masked_attention(q.expand(B, H, 1, E), k, v)  # [B, H, 1, E]
        pooled = self.out(ctx.transpose(1, 2).reshape(B, 1, H * E))
        return self.norm(pooled)[:, 0]


class VideoTextModel(nn.Module):
    def __init__(self, config: VideoTextConfig):
        super().__init__()
        self.config = config
        enc = config.encoder
        self.encoder = VideoEncoder(enc)
        self.auxiliary = SpaceTimeStack(
            config.num_auxiliary_layers, enc.width, enc.num_heads, enc.mlp_dim, enc.atten_logit_cap
        )
        self.pooler = AttentionPooler(enc.width, config.pooler_num_heads, config.pooler_hidden)
        self.text = TextEncoder(config.text)

    def forward(self, video, text_ids=None, text_paddings=None, frame_paddings=None, normalize: bool = True):
        """Both towers: ``(video_embeddings [B, D], text_embeddings [Bt, D])``;
        pass ``video=None`` or ``text_ids=None`` to skip that side (its
        result is None), as the official model allows."""
        if video is None and text_ids is None:
            raise ValueError("pass a video, text ids, or both")
        v = None if video is None else self.encode_video(video, frame_paddings, normalize=normalize)
        t = None if text_ids is None else self.encode_text(text_ids, text_paddings, normalize=normalize)
        return v, t

    def encode_video(
        self,
        video: torch.Tensor,
        frame_paddings: torch.Tensor | None = None,
        *,
        normalize: bool = True,
        return_intermediate: bool = False,
    ):
        """Video ``[B, T, H, W, 3]`` -> embedding ``[B, D]`` (L2-normalized,
        float32, unless ``normalize=False``). With ``return_intermediate`` returns
        ``(embedding, dict)`` holding ``spatiotemporal_features``,
        ``spatial_features``, ``auxiliary`` and ``frame_embeddings [B, T, D]``.
        The auxiliary stack and the pooler ignore frame paddings (official)."""
        tokens, spatial, aux, emb = self.video_features(video, frame_paddings)
        B, TS, D = tokens.shape
        if normalize:
            emb = l2_normalize(emb)
        if not return_intermediate:
            return emb
        T = video.shape[1]
        frames = self.pooler(aux.reshape(B * T, TS // T, D)).view(B, T, D)
        extras = {
            "spatiotemporal_features": tokens,
            "spatial_features": spatial,
            "auxiliary": aux,
            "frame_embeddings": l2_normalize(frames) if normalize else frames,
        }
        return emb, extras

    def video_features(self, video: torch.Tensor, frame_paddings: torch.Tensor | None = None):
        """``(tokens, spatial_features, auxiliary, pooled)``: the encoder's
        ``[B, T*S, D]`` tokens and ``spatial_ln`` output, the auxiliary stack's
        output and the pooled, unnormalized video embedding ``[B, D]``."""
        tokens, spatial = self.encoder(video, frame_paddings, return_spatial_features=True)
        B, TS, D = tokens.shape
        aux = self.auxiliary(tokens.view(B, 1, TS, D), "space").view(B, TS, D)
        return tokens, spatial, aux, self.pooler(aux)

    def encode_text(self, ids: torch.Tensor, paddings: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """Token ids ``[Bt, L]`` and paddings ``[Bt, L]`` (1 = pad) -> ``[Bt, D]``."""
        if paddings is None:
            raise ValueError("encode_text needs text paddings [num_texts, length] (1 = padding)")
        emb = self.text(ids, paddings)[:, -1]
        return l2_normalize(emb) if normalize else emb

    @staticmethod
    def similarity(video_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Dot products ``[B, Bt]`` (float32) of ``[B, D]`` and ``[Bt, D]``
        embeddings: the cosine similarity for the L2-normalized ones that
        ``encode_video`` and ``encode_text`` return by default (as officially)."""
        for name, e in (("video_embeddings", video_embeddings), ("text_embeddings", text_embeddings)):
            if not isinstance(e, torch.Tensor) or e.dim() != 2 or not e.dtype.is_floating_point:
                got = f"{tuple(e.shape)} {e.dtype}" if isinstance(e, torch.Tensor) else type(e).__name__
                raise ValueError(f"{name} must be a 2-D floating-point tensor [N, D]; got {got}")
        if video_embeddings.shape[1] != text_embeddings.shape[1]:
            raise ValueError(f"embedding widths differ: {video_embeddings.shape[1]} (video) vs "
                             f"{text_embeddings.shape[1]} (text)")
        return video_embeddings.float() @ text_embeddings.float().T
