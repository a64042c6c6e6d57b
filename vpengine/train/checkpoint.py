"""Training checkpoints: one file per run, written atomically, resumed exactly.

``<out_dir>/checkpoint.pt`` holds the config, the step, the data position of
every rank (epoch and rows consumed), the task's weights (the teacher's too:
a checkpoint resumes without its inputs), the optimizer and LR schedule, and
the random generators. ``<out_dir>/model.safetensors`` is the trained model
alone (:func:`vpengine.load` reads it). Both are replaced whole or not at all.
"""
from __future__ import annotations

import os

import torch

from .._files import write_atomically
from ..model.api import save as save_model
from .config import RESUMABLE, TrainConfig

CHECKPOINT = "checkpoint.pt"
MODEL = "model.safetensors"
FORMAT = "vpengine-train-1"


def checkpoint_path(out_dir: str) -> str:
    return os.path.join(out_dir, CHECKPOINT)


def save_checkpoint(out_dir: str, state: dict, model: torch.nn.Module) -> None:
    """Write the exported model, then the training state: a failure in between
    leaves the old checkpoint, which a resume redoes from."""
    save_model(model, os.path.join(out_dir, MODEL))
    state = {"format": FORMAT, **state}
    write_atomically(checkpoint_path(out_dir), lambda tmp: torch.save(state, tmp))


def load_checkpoint(out_dir: str, cfg: TrainConfig, world_size: int) -> dict:
    """The state saved in ``out_dir``; ValueError when it does not belong to ``cfg``."""
    path = checkpoint_path(out_dir)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which and why
        raise ValueError(f"{path} is not a readable vpengine training checkpoint: {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a vpengine training checkpoint (format {FORMAT})")
    stored = TrainConfig.from_dict(state["config"])
    changed = stored.differences(cfg)
    if changed:
        raise ValueError(f"{path} belongs to a run with another config; a resume may change only "
                         f"{', '.join(RESUMABLE)}; changed: " + "; ".join(changed))
    if state["world_size"] != world_size:
        raise ValueError(f"{path} was written by {state['world_size']} ranks; resume it with as many "
                         f"(this run has {world_size}), so every rank continues its own data shard")
    return state


__all__ = ["CHECKPOINT", "MODEL", "checkpoint_path", "load_checkpoint", "save_checkpoint"]
