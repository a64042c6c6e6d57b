"""Training: stage 1 (video-text contrastive) and stage 2 (masked distillation)
as task modules, their losses, masking, the training loop and checkpoints."""
from .config import TrainConfig
from .losses import contrastive_loss, gather_rows, global_distillation_loss, token_distillation_loss
from .loop import train
from .masking import TokenMask, random_mask, tube_mask
from .prepare import build_task
from .stage1 import ContrastiveTask
from .stage2 import MaskedDistillation

__all__ = [
    "ContrastiveTask", "MaskedDistillation", "TokenMask", "TrainConfig", "build_task", "contrastive_loss",
    "gather_rows", "global_distillation_loss", "random_mask", "token_distillation_loss", "train", "tube_mask",
]
