"""VideoPrism models: configs and presets, the video encoder, the video-text
model, official checkpoint conversion and safetensors IO."""
from .api import build, from_pretrained, load, load_official, save
from .config import PRESETS, EncoderConfig, TextConfig, VideoTextConfig, get_config
from .convert import CheckpointError
from .encoder import VideoEncoder
from .layers import activation_checkpointing
from .video_text import VideoTextModel

__all__ = [
    "PRESETS", "CheckpointError", "EncoderConfig", "TextConfig", "VideoEncoder", "VideoTextConfig",
    "VideoTextModel", "activation_checkpointing", "build", "from_pretrained", "get_config", "load", "load_official", "save",
]
