"""Model configurations and the official presets (reference doc section 1).

Configs are frozen dataclasses so they can be hashed, compared and stored as
JSON beside the weights (see :mod:`vpengine.model.io`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EncoderConfig:
    """FactorizedEncoder: spatial stack over each frame, temporal stack over
    each patch position."""

    width: int = 768
    num_spatial_layers: int = 12
    num_temporal_layers: int = 4
    num_heads: int = 12
    mlp_dim: int = 3072
    patch_size: int = 18
    pos_emb_shape: tuple[int, int, int] = (16, 16, 16)  # (T0, H0, W0) of the trained tables
    atten_logit_cap: float = 50.0

    def __post_init__(self):
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        object.__setattr__(self, "pos_emb_shape", tuple(int(v) for v in self.pos_emb_shape))

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * 3


@dataclass(frozen=True)
class TextConfig:
    """CoCa-style unimodal text tower: causal, ReLU MLP of width 4*D, class
    token appended last."""

    vocab_size: int = 32000
    num_layers: int = 12
    num_heads: int = 12
    width: int = 768
    mlp_dim: int = 3072  # official code hard-wires 4 * width
    atten_logit_cap: float = 50.0


@dataclass(frozen=True)
class VideoTextConfig:
    """FactorizedVideoCLIP ("LvT"): encoder, joint auxiliary stack, attention
    pooler (hidden 4*D, learned per-dim query scale) and a text tower."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    num_auxiliary_layers: int = 2
    pooler_num_heads: int = 12
    pooler_hidden: int = 3072  # official code hard-wires 4 * width
    text: TextConfig = field(default_factory=TextConfig)


ModelConfig = EncoderConfig | VideoTextConfig


def _lvt(enc: EncoderConfig, num_text_layers: int = 12) -> VideoTextConfig:
    D = enc.width
    return VideoTextConfig(
        encoder=enc,
        num_auxiliary_layers=2,
        pooler_num_heads=enc.num_heads,
        pooler_hidden=4 * D,
        text=TextConfig(
            vocab_size=32000, num_layers=num_text_layers, num_heads=enc.num_heads, width=D, mlp_dim=4 * D
        ),
    )


_BASE = EncoderConfig()
_LARGE = EncoderConfig(
    width=1024, num_spatial_layers=24, num_temporal_layers=4, num_heads=16, mlp_dim=4096, pos_emb_shape=(8, 16, 16)
)
_GIANT = EncoderConfig(
    width=1408, num_spatial_layers=40, num_temporal_layers=4, num_heads=16, mlp_dim=6144, pos_emb_shape=(8, 16, 16)
)

PRESETS: dict[str, ModelConfig] = {
    "videoprism_public_v1_base": _BASE,
    "videoprism_public_v1_large": _LARGE,
    "videoprism_v1_giant": _GIANT,
    "videoprism_lvt_public_v1_base": _lvt(_BASE),
    "videoprism_lvt_public_v1_large": _lvt(_LARGE),
}

# Official checkpoints on the Hugging Face Hub (reference doc section 1).
HUB_FILES: dict[str, tuple[str, str]] = {
    "videoprism_public_v1_base": ("google/videoprism-base-f16r288", "flax_base_f16r288_repeated.npz"),
    "videoprism_public_v1_large": ("google/videoprism-large-f8r288", "flax_large_f8r288_repeated.npz"),
    "videoprism_lvt_public_v1_base": ("google/videoprism-lvt-base-f16r288", "flax_lvt_base_f16r288_repeated.npz"),
    "videoprism_lvt_public_v1_large": ("google/videoprism-lvt-large-f8r288", "flax_lvt_large_f8r288_repeated.npz"),
}


def get_config(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None


def config_to_dict(cfg: ModelConfig) -> dict:
    kind = "video_text" if isinstance(cfg, VideoTextConfig) else "video_encoder"
    return {"kind": kind, "config": dataclasses.asdict(cfg)}


def config_from_dict(d: dict) -> ModelConfig:
    kind, c = d.get("kind"), d.get("config")
    if kind == "video_encoder":
        return EncoderConfig(**c)
    if kind == "video_text":
        return VideoTextConfig(
            encoder=EncoderConfig(**c["encoder"]),
            num_auxiliary_layers=c["num_auxiliary_layers"],
            pooler_num_heads=c["pooler_num_heads"],
            pooler_hidden=c["pooler_hidden"],
            text=TextConfig(**c["text"]),
        )
    raise ValueError(f"unknown model kind {kind!r} in stored config (expected video_encoder or video_text)")
