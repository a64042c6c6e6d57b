"""TrainConfig: everything one training run needs, validated up front.

A run's config is stored in its checkpoint; resuming compares the stored one
with the given one field by field (``RESUMABLE`` fields may change: how long
to train and how often to log or save).
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

from ..data.clip import BACKENDS
from ..model.config import PRESETS

RESUMABLE = ("out_dir", "steps", "log_every", "checkpoint_every", "num_workers", "decoder", "compile",
             "activation_checkpointing")
_PATHS = ("model", "manifest", "tokenizer")  # compared as the files they name


def _int(name: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f">= {low}" + ("" if high is None else f" and <= {high}")
        raise ValueError(f"TrainConfig.{name} must be an int {bound}; got {value!r}")


def _real(name: str, value, low: float, high: float = math.inf, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high != math.inf else "")
        raise ValueError(f"TrainConfig.{name} must be a finite number {bound}; got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """One training run of stage 1 or stage 2.

    stage: 1 (video-text contrastive) or 2 (masked distillation).
    model: stage 1: the LvT model to train, a preset name (its official
        weights), an official ``.npz`` or a vpengine ``.safetensors``; with
        ``random_init`` a preset's architecture with random weights.
        Stage 2: the stage-1 teacher (same forms); the student starts from its
        encoder.
    manifest: JSONL/CSV of clips (stage 1 needs a caption on every row).
    out_dir: checkpoints, the exported model and ``log.jsonl`` go here.
    tokenizer: stage 1: the SentencePiece model of the text tower.
    steps: optimizer steps in all (a resumed run counts from its checkpoint).
    batch_size: clips per step on each rank.
    lr, weight_decay, warmup_steps, min_lr_ratio: AdamW with linear warm-up
        then a cosine decay to ``lr * min_lr_ratio`` at ``steps``.
    grad_clip: global gradient-norm clip (0 turns it off).
    dtype: ``"bfloat16"`` (autocast, fp32 master weights) or ``"float32"``.
    frames, size: clip shape (T frames of size x size pixels).
    mask_ratio, decoder_layers, token_loss_on: stage 2 (see MaskedDistillation).
    text_max_length: stage 1 caption length in tokens.
    seed: weights of new parts, data order and masks.
    decoder: video decoding backend (``auto``, ``pyav``, ``dali-cpu``, ``dali-gpu``).
    compile: run the task through ``torch.compile`` (the first steps pay the compile).
    activation_checkpointing: recompute the forward of each block of the
        video stacks in the backward instead of keeping its activations (see
        :func:`vpengine.model.activation_checkpointing`): larger batches or
        models per GPU for about one more forward pass per step.
    """

    stage: int
    model: str
    manifest: str
    out_dir: str
    tokenizer: str | None = None
    random_init: bool = False
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    dtype: str = "bfloat16"
    frames: int = 16
    size: int = 288
    mask_ratio: float = 0.8
    decoder_layers: int = 4
    token_loss_on: str = "all"
    text_max_length: int = 64
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    num_workers: int = 4
    decoder: str = "auto"
    compile: bool = False
    activation_checkpointing: bool = False

    def __post_init__(self):
        if self.stage not in (1, 2) or isinstance(self.stage, bool):
            raise ValueError(f"TrainConfig.stage must be 1 or 2; got {self.stage!r}")
        for name in ("model", "manifest", "out_dir", "tokenizer"):  # a pathlib.Path is a path too
            if isinstance(getattr(self, name), os.PathLike):
                object.__setattr__(self, name, os.fspath(getattr(self, name)))
        for name in ("model", "manifest", "out_dir"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"TrainConfig.{name} must be a non-empty str; got {getattr(self, name)!r}")
        if self.stage == 1 and not isinstance(self.tokenizer, str):
            raise ValueError("stage 1 needs tokenizer: the SentencePiece model file of the text tower")
        if self.stage == 2 and self.tokenizer is not None:
            raise ValueError("TrainConfig.tokenizer is for stage 1: stage 2 trains on video alone")
        for name in ("random_init", "compile", "activation_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TrainConfig.{name} must be True or False; got {getattr(self, name)!r}")
        if self.random_init and self.stage == 2:
            raise ValueError("TrainConfig.random_init is for stage 1: a stage-2 teacher must be a trained model")
        for name, low in (("steps", 1), ("batch_size", 1), ("warmup_steps", 0), ("frames", 1), ("size", 1),
                          ("decoder_layers", 1), ("text_max_length", 1), ("log_every", 1),
                          ("checkpoint_every", 1), ("num_workers", 1)):
            _int(name, getattr(self, name), low)
        _int("seed", self.seed, 0, 2 ** 63 - 1)  # torch's generators take an int64
        _real("lr", self.lr, 0.0, low_open=True)
        _real("weight_decay", self.weight_decay, 0.0)
        _real("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        _real("grad_clip", self.grad_clip, 0.0)
        _real("mask_ratio", self.mask_ratio, 0.0, 1.0)
        if self.stage == 2 and self.mask_ratio == 1.0:
            raise ValueError("TrainConfig.mask_ratio 1.0 leaves the student nothing to see")
        if self.stage == 2 and self.mask_ratio == 0.0 and self.token_loss_on == "masked":
            raise ValueError("TrainConfig: token_loss_on='masked' with mask_ratio 0 leaves no token to predict")
        if self.dtype not in ("bfloat16", "float32"):
            raise ValueError(f"TrainConfig.dtype must be 'bfloat16' or 'float32'; got {self.dtype!r}")
        if self.decoder not in BACKENDS:  # else the loader refuses it later, naming a "backend" no option has
            raise ValueError(f"TrainConfig.decoder must be one of {', '.join(map(repr, BACKENDS))}; "
                             f"got {self.decoder!r}")
        if self.token_loss_on not in ("all", "masked"):
            raise ValueError(f"TrainConfig.token_loss_on must be 'all' or 'masked'; got {self.token_loss_on!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {', '.join(unknown)}")
        return cls(**d)

    def differences(self, other: TrainConfig, ignore: tuple[str, ...] = ()) -> list[str]:
        """Fields that differ from ``other``, except the ones a resume may
        change and those in ``ignore`` (inputs compared by their contents)."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a
                if k not in RESUMABLE and k not in ignore
                and (_file(k, a[k]) != _file(k, b[k]) if k in _PATHS else a[k] != b[k])]

    def with_absolute_inputs(self) -> TrainConfig:
        """The input files as absolute paths (a preset name stays a name), so
        the stored config still names them when a resume runs elsewhere."""
        paths = {k: os.path.abspath(getattr(self, k)) for k in _PATHS
                 if _file(k, getattr(self, k)) != getattr(self, k)}
        return dataclasses.replace(self, **paths)


def _file(field: str, path: str | None) -> str | None:
    """A path as the file it names; a preset's name stays a name, even where
    a file or folder of that name is in the working directory."""
    if path is None or (field == "model" and path in PRESETS) or not os.path.exists(path):
        return path
    return os.path.realpath(path)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` at optimizer step ``step`` (0-based): linear
    warm-up over ``warmup_steps``, then cosine to ``min_lr_ratio`` at ``steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


__all__ = ["RESUMABLE", "TrainConfig", "lr_factor"]
