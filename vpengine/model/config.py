"""Model configurations and the official presets (reference doc section 1).

Configs are frozen dataclasses so they can be hashed, compared and stored as
JSON beside the weights (see :mod:`vpengine.model.io`).
"""
from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field


def _count(cls: str, name: str, value, low: int = 1) -> int:
    """``value`` as a plain int (NumPy ints from checkpoint shapes included)."""
    try:
        n = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        n = None
    if n is None or n < low:
        raise ValueError(f"{cls}.{name} must be an int >= {low}; got {value!r}")
    return n


def _counts(obj, names: tuple[str, ...]) -> None:
    for name in names:  # frozen dataclass: normalize in place
        object.__setattr__(obj, name, _count(type(obj).__name__, name, getattr(obj, name)))


def _cap(cls: str, value) -> None:
    # Official rule: a cap of 0 or less means no cap; a cap must be one the
    # attention op takes (checked here, not at the first forward).
    from ..ops.spacetime_attention import SOFTCAP_RULE, check_softcap

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{cls}.atten_logit_cap must be a number ({SOFTCAP_RULE}); got {value!r}")
    check_softcap(value, f"{cls}.atten_logit_cap")


def _heads(cls: str, width_name: str, width: int, heads_name: str, heads: int) -> None:
    if width % heads:
        raise ValueError(f"{cls}: {width_name} {width} is not divisible by {heads_name} {heads}")


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
        _counts(self, ("width", "num_spatial_layers", "num_temporal_layers", "num_heads", "mlp_dim", "patch_size"))
        _heads("EncoderConfig", "width", self.width, "num_heads", self.num_heads)
        _cap("EncoderConfig", self.atten_logit_cap)
        try:
            shape = tuple(self.pos_emb_shape)
        except TypeError:
            shape = None
        if shape is None or len(shape) != 3:
            raise ValueError(f"EncoderConfig.pos_emb_shape must be (frames, rows, cols); got {self.pos_emb_shape!r}")
        object.__setattr__(self, "pos_emb_shape", tuple(_count("EncoderConfig", "pos_emb_shape", v) for v in shape))

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

    def __post_init__(self):
        _counts(self, ("vocab_size", "num_layers", "num_heads", "width", "mlp_dim"))
        _heads("TextConfig", "width", self.width, "num_heads", self.num_heads)
        _cap("TextConfig", self.atten_logit_cap)


@dataclass(frozen=True)
class VideoTextConfig:
    """FactorizedVideoCLIP ("LvT"): encoder, joint auxiliary stack, attention
    pooler (hidden 4*D, learned per-dim query scale) and a text tower."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    num_auxiliary_layers: int = 2
    pooler_num_heads: int = 12
    pooler_hidden: int = 3072  # official code hard-wires 4 * width
    text: TextConfig = field(default_factory=TextConfig)

    def __post_init__(self):
        for name, kind in (("encoder", EncoderConfig), ("text", TextConfig)):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"VideoTextConfig.{name} must be a {kind.__name__}; got {getattr(self, name)!r}")
        _counts(self, ("pooler_num_heads", "pooler_hidden"))
        # The official FactorizedVideoCLIP adds its auxiliary stack only when asked for layers.
        object.__setattr__(self, "num_auxiliary_layers",
                           _count("VideoTextConfig", "num_auxiliary_layers", self.num_auxiliary_layers, low=0))
        _heads("VideoTextConfig", "pooler_hidden", self.pooler_hidden, "pooler_num_heads", self.pooler_num_heads)
        if self.text.width != self.encoder.width:  # the embeddings meet in one dot product
            raise ValueError(f"VideoTextConfig: text width {self.text.width} differs from the video "
                             f"encoder's width {self.encoder.width}")


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


def vpengine_model(model, what: str):
    """``model`` itself, or the model inside ``torch.compile``'s wrapper (whose
    state_dict keys all start with ``_orig_mod.``); ValueError for anything
    that is not a vpengine model."""
    inner = getattr(model, "_orig_mod", None)
    if inner is not None and hasattr(inner, "config"):
        model = inner
    if not isinstance(getattr(model, "config", None), (EncoderConfig, VideoTextConfig)):
        raise ValueError(f"{what}() expects a vpengine model (VideoEncoder or VideoTextModel, or one compiled "
                         f"with torch.compile); got {type(model).__name__}")
    return model


def get_config(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None


def config_to_dict(cfg: ModelConfig) -> dict:
    kind = "video_text" if isinstance(cfg, VideoTextConfig) else "video_encoder"
    return {"kind": kind, "config": dataclasses.asdict(cfg)}


def _build(kind, c, where: str):
    if not isinstance(c, dict):
        raise ValueError(f"{where} must be an object; got {c!r}")
    names = {f.name for f in dataclasses.fields(kind)}
    unknown, missing = sorted(set(c) - names), sorted(names - set(c))
    if unknown or missing:
        raise ValueError(f"{where} does not match {kind.__name__}"
                         + (f" (unknown: {', '.join(unknown)})" if unknown else "")
                         + (f" (missing: {', '.join(missing)})" if missing else ""))
    return kind(**c)


def config_from_dict(d: dict) -> ModelConfig:
    """Inverse of :func:`config_to_dict`; ValueError naming what does not fit."""
    if not isinstance(d, dict):
        raise ValueError(f"stored config must be an object with 'kind' and 'config'; got {d!r}")
    kind, c = d.get("kind"), d.get("config")
    if kind == "video_encoder":
        return _build(EncoderConfig, c, "config")
    if kind == "video_text":
        c = dict(c) if isinstance(c, dict) else c
        if isinstance(c, dict):
            c["encoder"] = _build(EncoderConfig, c.get("encoder"), "config.encoder")
            c["text"] = _build(TextConfig, c.get("text"), "config.text")
        return _build(VideoTextConfig, c, "config")
    raise ValueError(f"unknown model kind {kind!r} in stored config (expected video_encoder or video_text)")
