"""``vpengine train``: the command line of :func:`vpengine.train.train`.

Every TrainConfig field is an option of the same name (``--batch-size`` for
``batch_size``), with the same default; ``--stage``, ``--model``,
``--manifest`` and ``--out`` are required. Under torchrun each process
trains one rank.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from .config import TrainConfig

_REQUIRED = {"stage": "1 (video-text contrastive) or 2 (masked distillation from a stage-1 model)",
             "model": "stage 1: the LvT model to train; stage 2: the stage-1 teacher "
                      "(preset name, .npz or .safetensors)",
             "manifest": "JSONL/CSV of clips (stage 1: with captions)",
             "out_dir": "folder for checkpoint.pt, model.safetensors and log.jsonl"}
_HELP = {"tokenizer": "stage 1: SentencePiece model of the text tower",
         "random_init": "stage 1: the preset's architecture with random weights",
         "dtype": "bfloat16 (autocast) or float32",
         "decoder": "video decoding: auto, pyav, dali-cpu or dali-gpu",
         "compile": "torch.compile the task (fastest on a GPU; the first steps pay the compile)",
         "activation_checkpointing": "recompute each video block's forward in the backward: far less activation "
                                     "memory (larger batches or models) for about one more forward pass"}


_PATH_FIELDS = ("model", "manifest", "out_dir", "tokenizer")


def add_arguments(p: argparse.ArgumentParser, path=str) -> None:
    """``path``: the type of path options (the main command's expands ``~``)."""
    for f in dataclasses.fields(TrainConfig):
        flag = "--out" if f.name == "out_dir" else "--" + f.name.replace("_", "-")
        if f.name in _REQUIRED:
            kind = int if f.name == "stage" else path if f.name in _PATH_FIELDS else str
            p.add_argument(flag, dest=f.name, type=kind, required=True, help=_REQUIRED[f.name])
        elif f.type in ("bool", bool):
            p.add_argument(flag, dest=f.name, action="store_true", help=_HELP.get(f.name))
        else:
            kind = {"int": int, "float": float}.get(str(f.type), path if f.name in _PATH_FIELDS else str)
            p.add_argument(flag, dest=f.name, type=kind, default=f.default,
                           help=(_HELP.get(f.name, "") + f" (default {f.default})").strip())
    p.add_argument("--resume", action="store_true", help="continue the run whose checkpoint is in --out")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")


def run(args, device) -> int:
    from ..backends import BackendUnavailable
    from ..data import BadVideoError
    from ..data.errors import BackendUnsupported
    from ..model.convert import CheckpointError
    from .loop import train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
        summary = train(cfg, resume=args.resume, device=device)
    # BackendUnavailable: VPENGINE_BACKEND names a backend that cannot run here (a setting, not a crash)
    except (ValueError, CheckpointError, BadVideoError, BackendUnsupported, BackendUnavailable, OSError,
            FloatingPointError) as e:
        print(f"vpengine train: {e}", file=sys.stderr)
        return 2
    if summary["rank"] != 0:  # one summary per run, from rank 0 (it holds every rank's bad files)
        return 0
    bad = summary["bad_files"]
    said = f"vpengine train: {summary['steps']} steps; model in {args.out_dir}"
    if bad:
        said += f"; {len(bad)} bad file{'s' if len(bad) > 1 else ''} skipped (first: {bad[0][0]}: {bad[0][1]})"
    print(said)
    return 0


__all__ = ["add_arguments", "run"]
