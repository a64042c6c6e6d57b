"""Setting a run up: the process group, the task and its optimizer, and the
checks that refuse a run before any work (and before its folder exists).
"""
from __future__ import annotations

import os
import string

import torch
import torch.distributed as dist

from .._files import check_writable
from ..data.tokenizer import canonicalize_text
from ..model.api import build, load_any
from ..model.config import ModelConfig, VideoTextConfig, get_config
from ..model.layers import activation_checkpointing
from .checkpoint import CHECKPOINT, MODEL, checkpoint_path
from .config import TrainConfig
from .masking import num_kept
from .stage1 import ContrastiveTask
from .stage2 import MaskedDistillation


def distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, this rank's device), starting the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device
    return 0, 1, device


def build_task(cfg: TrainConfig, model_config: ModelConfig | None = None) -> torch.nn.Module:
    """The stage's task module (model + loss) from the config, on the CPU;
    ValueError when the model does not fit the config. ``model_config``
    (a resume: the checkpoint holds every weight) builds the model's
    architecture instead of reading ``cfg.model``, which may be gone."""
    if cfg.random_init or model_config is not None:
        config = model_config if model_config is not None else get_config(cfg.model)
        _check_model(cfg, config)  # before building a model of hundreds of MB
        model = build(config, seed=cfg.seed)
    else:
        model = load_any(cfg.model)
        _check_model(cfg, model.config)
    if cfg.stage == 1:
        task = ContrastiveTask(model)
    else:
        task = MaskedDistillation(model, decoder_layers=cfg.decoder_layers, mask_ratio=cfg.mask_ratio,
                                  token_loss_on=cfg.token_loss_on, seed=cfg.seed)
    activation_checkpointing(task, cfg.activation_checkpointing)  # the frozen teacher runs without grad: unaffected
    return task


def optimizer(task: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; no weight decay on vectors (biases, norms, mask token, temperature,
    learned class tokens and queries, whatever their leading size-1 dims) or
    position tables."""
    decay, no_decay = [], []
    for name, p in task.named_parameters():
        if p.requires_grad:
            vector_like = sum(n > 1 for n in p.shape) <= 1 or "_pos" in name or name.endswith(".query")
            (no_decay if vector_like else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=device.type == "cuda")


_BLANK = string.whitespace + string.punctuation


def _no_text(caption: str | None) -> bool:
    """A caption of only spaces or punctuation is none: canonicalized it is
    ".", the text of every such clip, and each would be trained toward it.
    (``strip`` first: canonicalizing tens of millions of rows takes a minute.)"""
    if not caption:
        return True
    rest = caption.strip(_BLANK)
    return not rest or (rest[0].isspace() and canonicalize_text(rest) == ".")  # Unicode spaces


def check_manifest(cfg: TrainConfig, entries: list) -> None:
    """``entries``: the manifest as the loader read it (read once: pretraining
    manifests hold tens of millions of rows)."""
    if not entries:
        raise ValueError(f"manifest {cfg.manifest} lists no clips")
    if cfg.stage == 1:
        missing = [i for i, e in enumerate(entries) if _no_text(e.caption)]
        if missing:
            raise ValueError(f"stage 1 needs a caption on every row; {len(missing)} of {len(entries)} rows of "
                             f"{cfg.manifest} have none, or one of only spaces or punctuation (first: row "
                             f"{missing[0]}, {entries[missing[0]].path}: {entries[missing[0]].caption!r})")


def check_out_dir(cfg: TrainConfig, resume: bool) -> None:
    """Before any work; the folder itself is made once the run is set up, so a
    run refused for its inputs leaves nothing behind."""
    path = checkpoint_path(cfg.out_dir)
    if os.path.exists(cfg.out_dir) and not os.path.isdir(cfg.out_dir):
        raise ValueError(f"out_dir {cfg.out_dir} is a file, not a folder")
    if resume and not os.path.exists(path):
        raise ValueError(f"nothing to resume: {path} does not exist")
    if not resume and os.path.exists(path):
        raise ValueError(f"{cfg.out_dir} already holds a run ({path}); resume it (--resume) or choose "
                         "another out_dir: its checkpoint is never overwritten by a new run")
    log_path = os.path.join(cfg.out_dir, "log.jsonl")
    if not resume and os.path.exists(log_path):
        raise ValueError(f"{cfg.out_dir} holds the log of an earlier run that stopped before its first "
                         f"checkpoint ({log_path}); remove it or choose another out_dir")
    outputs = {os.path.realpath(os.path.join(cfg.out_dir, name)) for name in (CHECKPOINT, MODEL, "log.jsonl")}
    for name in ("model", "manifest", "tokenizer"):
        given = getattr(cfg, name)
        if given is not None and os.path.exists(given) and os.path.realpath(given) in outputs:
            raise ValueError(f"{name} {given} is one of the run's own outputs in {cfg.out_dir}, which training "
                             "replaces: copy it elsewhere or choose another out_dir")
    model_path = os.path.join(cfg.out_dir, MODEL)
    if not resume and os.path.exists(model_path):  # a finished run whose checkpoint was removed to save space
        raise ValueError(f"{cfg.out_dir} holds a trained model ({model_path}) that a new run would replace; "
                         "move it or choose another out_dir")
    check_writable(os.path.join(cfg.out_dir, "log.jsonl"), "out_dir", make_folders=True)


def _check_model(cfg: TrainConfig, config) -> None:
    if not isinstance(config, VideoTextConfig):
        what = "train" if cfg.stage == 1 else "distill from"
        raise ValueError(f"stage {cfg.stage} needs a video-text (LvT) model to {what}; {cfg.model} is a "
                         "video encoder")
    P = config.encoder.patch_size
    if cfg.size % P:
        raise ValueError(f"size {cfg.size} is not a multiple of the model's patch size {P}")
    S = (cfg.size // P) ** 2
    if cfg.stage == 2 and num_kept(S, cfg.mask_ratio) == 0:
        raise ValueError(f"mask_ratio {cfg.mask_ratio} keeps none of the {S} patches of a frame "
                         f"({cfg.size}x{cfg.size} pixels, patch {P}): the student would see nothing")
    if cfg.stage == 2 and cfg.token_loss_on == "masked" and num_kept(S, cfg.mask_ratio) == S:
        raise ValueError(f"mask_ratio {cfg.mask_ratio} masks none of the {S} patches of a frame "
                         f"({cfg.size}x{cfg.size} pixels, patch {P}): token_loss_on='masked' would have no "
                         "token to predict")


__all__ = ["build_task", "check_manifest", "check_out_dir", "distributed", "optimizer"]
