"""Training checkpoints: one file per run, written atomically, resumed exactly.

``<out_dir>/checkpoint.pt`` holds the config, the step, the data position of
every rank (epoch and rows consumed), the task's weights (the teacher's too)
and the input model's architecture, so a resume needs no model file; the
optimizer and LR schedule, the random generators, and digests of the
manifest's rows and the tokenizer, which a resume must find unchanged
whatever their paths. ``<out_dir>/model.safetensors`` is the trained model
alone (:func:`vpengine.load` reads it). Both are replaced whole or not at all.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch

from .._files import write_atomically
from ..model.api import save as save_model
from ..model.config import PRESETS
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


def input_digests(cfg: TrainConfig, entries: list) -> dict[str, str]:
    """What a resume must find unchanged, by content: the manifest's rows as
    the loader read them (the data order follows from them; paths as the
    rows wrote them, so a dataset moved with its manifest of relative paths,
    or a manifest of absolute paths moved alone, is the same), the
    tokenizer file and the model file (a preset is compared by name)."""
    h = hashlib.sha256()
    root = os.path.dirname(os.path.abspath(cfg.manifest))
    for e in entries:
        given = e.given or os.path.relpath(e.path, root)
        path = given if os.path.isabs(given) else os.path.normpath(given)
        h.update(json.dumps([path, e.caption, e.start_time, e.end_time]).encode() + b"\n")
    out = {"manifest": f"{len(entries)} rows, sha256 {h.hexdigest()[:16]}"}
    if cfg.tokenizer is not None and os.path.isfile(cfg.tokenizer):
        out["tokenizer"] = _file_digest(cfg.tokenizer)
    if cfg.model not in PRESETS and os.path.isfile(cfg.model):
        out["model"] = _file_digest(cfg.model)
    return out


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):  # a model file is gigabytes: never all in memory
            h.update(chunk)
    return f"sha256 {h.hexdigest()[:16]}"


def load_checkpoint(out_dir: str, cfg: TrainConfig, world_size: int, inputs: dict[str, str] | None = None) -> dict:
    """The state saved in ``out_dir``; ValueError when it does not belong to
    ``cfg`` and ``inputs`` (:func:`input_digests` of this run)."""
    path = checkpoint_path(out_dir)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which and why
        why = str(e) or type(e).__name__
        raise ValueError(f"{path} is not a readable vpengine training checkpoint: {why}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a vpengine training checkpoint (format {FORMAT})")
    stored = TrainConfig.from_dict(state["config"])
    digests = state.get("inputs") or {}
    ignore = tuple(digests)  # compared by content below, wherever the files now are
    if "model_config" in state and stored.model not in PRESETS and not os.path.exists(stored.model):
        # The checkpoint holds the model: a resume does not need its file. A
        # preset's name is no file and is compared (another preset is another model).
        ignore += ("model",)
    changed = stored.differences(cfg, ignore)
    for name, digest in digests.items():
        now = (inputs or {}).get(name)
        if name == "model" and now is None and cfg.model not in PRESETS:
            continue  # no model file where --model points: the checkpoint holds the model
        if now != digest:
            changed.append(f"{name} contents: {digest} -> {now or 'none'}")
    if changed:
        raise ValueError(f"{path} belongs to a run with another config; a resume may change only "
                         f"{', '.join(RESUMABLE)}; changed: " + "; ".join(changed))
    if state["world_size"] != world_size:
        raise ValueError(f"{path} was written by {state['world_size']} ranks; resume it with as many "
                         f"(this run has {world_size}), so every rank continues its own data shard")
    return state


__all__ = ["CHECKPOINT", "MODEL", "checkpoint_path", "input_digests", "load_checkpoint", "save_checkpoint"]
