"""Training: stage 1 (video-text contrastive) and stage 2 (masked distillation)
step functions, masking, the training loop and checkpoints."""
from .masking import TokenMask, random_mask, tube_mask

__all__ = ["TokenMask", "random_mask", "tube_mask"]
