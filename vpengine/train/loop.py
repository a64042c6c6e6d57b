"""The training loop of both stages: ``vpengine train`` and :func:`train`.

One process per GPU (``torchrun --nproc-per-node G -m vpengine train ...``):
with ``WORLD_SIZE`` > 1 the process group is set up (prepare.py: NCCL on CUDA, Gloo
on CPU), the task is wrapped in DistributedDataParallel, each rank reads its
shard of the manifest, and stage 1 gathers its negatives from every rank.

Per step: a batch of uint8 clips on the device, the task's loss under bf16
autocast (fp32 master weights), backward, global-norm clipping, AdamW, the LR
schedule. Every ``log_every`` steps one JSON line goes to
``<out_dir>/log.jsonl``; every ``checkpoint_every`` steps and at the end the
checkpoint and the exported model are replaced (see checkpoint.py). A resumed
run continues the same data order, masks and schedule: on one CPU process it
reproduces an uninterrupted run bit for bit.
"""
from __future__ import annotations

import json
import math
import os
import time

import torch
import torch.distributed as dist

from .._files import write_atomically
from ..data import ClipLoader, ClipSpec
from ..data.loader import _mix
from ..model.config import config_from_dict, config_to_dict
from .checkpoint import input_digests, load_checkpoint, save_checkpoint
from .config import TrainConfig, lr_factor
from .prepare import build_task, check_manifest, check_out_dir, distributed, optimizer


def mask_seed(seed: int, rank: int) -> int:
    """The mask generator's seed for a rank. A stream of its own: it was
    ``_mix(seed, rank)``, the loader's shuffle seed for epoch ``rank``, so on
    a CPU rank 0's masks drew the very numbers of epoch 0's data order."""
    return _mix("masks", seed, rank)


class _Run:
    """The state of one training process: task, optimizer, data position."""

    def __init__(self, cfg: TrainConfig, resume: bool, device: torch.device, log):
        self.cfg, self.log = cfg, log
        self.rank, self.world, self.device = distributed(device)
        spec = ClipSpec(cfg.frames, sampling="random", size=(cfg.size, cfg.size))
        self.loader = ClipLoader(cfg.manifest, spec, cfg.batch_size, device=self.device, backend=cfg.decoder,
                                 seed=cfg.seed, drop_last=True, num_workers=cfg.num_workers)
        check_manifest(cfg, self.loader.entries)
        check_out_dir(cfg, resume)  # on every rank: a refusal must not leave the others waiting
        self.inputs = input_digests(cfg, self.loader.entries)
        state = load_checkpoint(cfg.out_dir, cfg, self.world, self.inputs) if resume else None
        if cfg.stage == 1 and cfg.batch_size * self.world < 2:
            raise ValueError(f"stage 1 needs at least 2 clips per step across ranks (batch_size {cfg.batch_size} "
                             f"on {self.world} rank{'s' if self.world > 1 else ''}): the contrastive loss "
                             "takes its negatives from the other clips, and one clip alone has none")
        if cfg.stage == 1 and self.world > 1 and len(self.loader.entries) < cfg.batch_size * self.world:
            # The shards are padded to equal length by repeating rows (with the
            # same sampling seed): a step of more clips than the manifest has
            # holds some clip twice, a negative identical to its positive (one
            # row on 2 ranks: loss log 2 and a zero gradient at every step).
            # One process refuses such a manifest later: a shard shorter than a batch.
            raise ValueError(f"stage 1 on {self.world} ranks with batch_size {cfg.batch_size} takes "
                             f"{cfg.batch_size * self.world} clips per step, but {cfg.manifest} has "
                             f"{len(self.loader.entries)} rows: a step would hold the same clip twice, its "
                             "own negative")
        self.tokenizer = None
        if cfg.stage == 1:
            from ..data.tokenizer import Tokenizer

            self.tokenizer = Tokenizer(cfg.tokenizer)
        stored = config_from_dict(state["model_config"]) if state is not None and "model_config" in state else None
        task = build_task(cfg, stored)
        self.model_config = (task.model if cfg.stage == 1 else task.teacher).config  # the input model's
        if self.tokenizer is not None and self.tokenizer.vocab_size > task.model.config.text.vocab_size:
            raise ValueError(f"tokenizer {cfg.tokenizer} has {self.tokenizer.vocab_size} pieces but the text "
                             f"tower embeds {task.model.config.text.vocab_size}: not the model's tokenizer")
        self.task = task.to(self.device).train()
        self.params = [p for p in self.task.parameters() if p.requires_grad]
        self.opt = optimizer(self.task, cfg, self.device)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, cfg))
        self.masks = torch.Generator(device=self.device).manual_seed(mask_seed(cfg.seed, self.rank))
        self.step, self.epoch, self.cursor = 0, 0, 0
        if state is not None:
            self.task.load_state_dict(state["task"])
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            try:
                self.masks.set_state(state["mask_rng"][self.rank])
            except RuntimeError:  # another device type's generator: another algorithm, no exact resume
                raise ValueError(f"{cfg.out_dir}: its mask generator ran on another kind of device than "
                                 f"{self.device.type}; resume it on the kind it was trained on (a CUDA and a "
                                 "CPU generator draw different numbers)") from None
            self.step, self.epoch, self.cursor = state["step"], state["epoch"][self.rank], state["cursor"][self.rank]
            if cfg.steps < self.step:
                raise ValueError(f"{cfg.out_dir} is at step {self.step}; steps {cfg.steps} is behind it (a resume "
                                 "can only train on; its model.safetensors is the model at that step)")
            # The restored rates follow the stored schedule; a resume may change
            # `steps`, which moves the cosine: the next step takes this run's
            # rate (the same value, bit for bit, when `steps` is unchanged).
            for group, base in zip(self.opt.param_groups, self.sched.base_lrs):
                group["lr"] = base * lr_factor(self.step, cfg)
        self.log_path = os.path.join(cfg.out_dir, "log.jsonl")
        if state is not None and self.rank == 0:
            _drop_log_after(self.log_path, self.step)  # those steps are about to run again
        self.model = self.task
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.task, device_ids=ids)
        if cfg.compile:
            self.model = torch.compile(self.model)
        if self.rank == 0:
            os.makedirs(cfg.out_dir, exist_ok=True)
        self.lr = cfg.lr

    def loss(self, batch) -> dict:
        cfg = self.cfg
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16"):
            if cfg.stage == 1:
                ids, pads = self.tokenizer(batch.captions, cfg.text_max_length)
                return self.model(batch.frames, ids.to(self.device), pads.to(self.device), batch.frame_paddings)
            return self.model(batch.frames, batch.frame_paddings, generator=self.masks)

    def optimize(self, out: dict) -> torch.Tensor:
        """Backward, clip, AdamW, schedule; returns the gradient norm before clipping."""
        loss = out["loss"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        if not torch.isfinite(loss) or not torch.isfinite(grad_norm):
            raise FloatingPointError(f"step {self.step + 1}: loss {float(loss):.4g}, gradient norm "
                                     f"{float(grad_norm):.4g}; the last checkpoint in {self.cfg.out_dir} is intact")
        self.lr = self.opt.param_groups[0]["lr"]  # the rate this step uses
        self.opt.step()
        self.sched.step()
        self.step += 1
        return grad_norm

    def record(self, out: dict, grad_norm, clips_per_s: float) -> dict:
        """One log line; losses and accuracies are the mean over ranks."""
        values = torch.stack([v.detach().float().reshape(()) for v in out.values()])
        if self.world > 1:
            dist.all_reduce(values)
            values /= self.world
        line = {"step": self.step, "epoch": self.epoch, **dict(zip(out, values.tolist())),
                "grad_norm": float(grad_norm), "lr": self.lr, "clips_per_s": clips_per_s}
        if self.rank == 0:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(line) + "\n")
            self.log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in line.items()))
        return line

    def checkpoint(self) -> None:
        world = self.world
        cursors, epochs = _all_ranks(self.cursor, world), _all_ranks(self.epoch, world)
        rngs = _all_ranks(self.masks.get_state(), world)
        if self.rank == 0:
            save_checkpoint(self.cfg.out_dir, {
                "config": self.cfg.to_dict(), "step": self.step, "world_size": world, "epoch": epochs,
                "cursor": cursors, "task": self.task.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "mask_rng": rngs, "inputs": self.inputs,
                "model_config": config_to_dict(self.model_config)}, self.task.exported())

    def epoch_steps(self) -> tuple[int, dict]:
        """Steps through the rest of the current epoch (or until ``cfg.steps``).
        A checkpoint taken at an epoch's last batch resumes with nothing left
        of that epoch: 0 steps, and the caller moves on."""
        cfg, loader = self.cfg, self.loader
        loader.set_epoch(self.epoch, start=self.cursor)
        shard = loader.shard_rows()
        batches = iter(loader)
        done, last, clips, t0 = 0, {}, 0, time.perf_counter()
        try:
            while self.step < cfg.steps:
                batch = next(batches, None)
                if not _all_have(batch is not None, self.world, self.device):
                    break
                self.cursor = shard.index(batch.rows[-1], self.cursor) + 1
                out = self.loss(batch)
                grad_norm = self.optimize(out)
                done, clips = done + 1, clips + batch.frames.shape[0]
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    last = self.record(out, grad_norm, clips * self.world / (time.perf_counter() - t0))
                    clips, t0 = 0, time.perf_counter()
                if self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                    self.checkpoint()
        finally:
            batches.close()  # stops the loader's producer threads
        return done, last


# An epoch can give no batch by chance: under several ranks one shard draws
# the bad files, and training samples frames at random, so a file damaged in
# some frames fails in some epochs only. The next epoch reshuffles and draws
# again; only when no row at all could be read (one process), or a shard is
# shorter than a batch, is it final.
_EMPTY_EPOCHS = 10


def train(cfg: TrainConfig, *, resume: bool = False, device: str | torch.device | None = None,
          log=print) -> dict:
    """Run (or resume) ``cfg``; returns ``{"steps", "last" (the last logged
    line), "bad_files" [(path, reason)] of every rank, "rank"}``."""
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"cfg must be a TrainConfig; got {type(cfg).__name__}")
    try:
        device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a device name ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: this machine has no usable CUDA device")
    made = _missing_folders(cfg.out_dir)
    try:
        return _train(_Run(cfg.with_absolute_inputs(), resume, device, log))
    except BaseException:
        # A run that fails before writing anything (every file bad, say)
        # leaves none of the folders it made behind.
        for folder in made:
            try:
                os.rmdir(folder)  # only if empty; another rank may have removed it
            except FileNotFoundError:
                continue
            except OSError:
                break
        raise


def _missing_folders(path: str) -> list[str]:
    """``path`` and its missing parents, innermost first."""
    out, path = [], os.path.abspath(path)
    while not os.path.exists(path):
        out.append(path)
        path = os.path.dirname(path)
    return out


def _train(run: _Run) -> dict:
    cfg = run.cfg
    last, bad, empty = {}, {}, 0
    while run.step < cfg.steps:
        done, logged = run.epoch_steps()
        last = logged or last
        bad.update((b.path, b.reason) for b in run.loader.bad_files)  # a bad file fails again every epoch
        if run.step < cfg.steps:
            # `done` is the same on every rank (they stop an epoch together); so is
            # resumed: every rank of a resumed epoch has consumed at least one batch.
            resumed = run.cursor > 0
            empty = 0 if done or resumed else empty + 1
            # Final at once: a shard shorter than a batch, or nothing readable in one process.
            never = len(run.loader.shard_rows()) < cfg.batch_size
            none_read = run.world == 1 and run.loader.num_bad >= len(run.loader.entries)
            if empty >= _EMPTY_EPOCHS or (empty and (never or none_read)):
                # Rows, not skips: a padded shard repeats rows, so two ranks can skip the same one.
                unreadable = len(set().union(*_all_ranks({b.index for b in run.loader.bad_files}, run.world)))
                rows = f"the manifest has {len(run.loader.entries)} rows and {unreadable} could not be read"
                if run.step:  # the steps trained so far can be resumed once the data is mended
                    run.checkpoint()
                if run.world == 1:
                    raise ValueError(f"{empty} epoch{'s' if empty > 1 else ''} in a row gave no batch of "
                                     f"{cfg.batch_size} clips: {rows} in the last one"
                                     + (f"; step {run.step} is saved in {cfg.out_dir}" if run.step else ""))
                raise ValueError(f"{empty} epochs in a row gave no step (a batch of {cfg.batch_size} clips on "
                                 f"each of {run.world} ranks): {rows} in the last one")
            run.epoch, run.cursor = run.epoch + 1, 0
    run.checkpoint()
    everyone = {}
    for part in _all_ranks(bad, run.world):
        everyone.update(part)
    return {"steps": run.step, "last": last, "bad_files": sorted(everyone.items()), "rank": run.rank}


def _drop_log_after(path: str, step: int) -> None:
    """Drops the lines of steps after ``step`` and any line a crash cut off.
    A step is logged before its checkpoint is written, so a line cut off
    mid-write belongs to a step after the last checkpoint: the resumed run
    logs that step again, whole, and every line left is valid JSON."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = [ln for ln in lines if (s := _logged_step(ln)) is not None and s <= step]
    if kept and not kept[-1].endswith("\n"):  # a whole record whose newline was not written
        kept[-1] += "\n"
    if kept != lines:
        def write(tmp: str) -> None:
            with open(tmp, "w") as f:
                f.writelines(kept)

        write_atomically(path, write)


def _logged_step(line: str) -> int | None:
    """The step of a log line; None for a line cut off by a crash."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _all_ranks(value, world: int) -> list:
    if world == 1:
        return [value]
    out = [None] * world
    dist.all_gather_object(out, value)
    return out


def _all_have(flag: bool, world: int, device: torch.device) -> bool:
    """Whether every rank has ``flag``: ranks stop an epoch together when one
    runs out of batches (skipped bad files can leave ranks uneven)."""
    if world == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


__all__ = ["train"]
