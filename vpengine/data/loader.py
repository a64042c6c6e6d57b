"""ClipLoader: batches of uint8 clips from a manifest, sharded, seeded, prefetched.

Legend: B clips per batch, T frames, h/w output height/width.

Order: each epoch permutes the manifest rows with ``torch.Generator`` seeded
by ``(seed, epoch)`` (the same on every rank), pads the permutation by
wrapping around to a multiple of the world size (as DistributedSampler) and
gives rank r the rows ``r, r + world, ...``. Each row's sampling seed is a
function of (seed, epoch, row), so a clip does not depend on rank, worker
count or timing: two loaders with the same arguments yield the same batches.

Work: a thread pool probes and (PyAV) decodes clips ahead of time; a
producer thread assembles batches in manifest order, moves them to ``device``
and queues them. Ahead of the batch the consumer holds, up to ``prefetch``
finished batches wait in the queue, one more may wait to enter it, and
``prefetch`` batches' worth of clips are being decoded or done: about
``2 * prefetch + 1`` batches of memory at most. FFmpeg and PIL release the
GIL, so threads decode in parallel. With DALI on the GPU the pool only probes
(choosing the frames on the host) and the producer decodes whole batches with
one DALI call on the GPU.

Bad files (missing, empty, not a video, truncated, corrupt, no frame in the
window) are skipped: the batch is filled from the next rows, the file is
counted and recorded in ``bad_files`` with its path and reason and logged as a
warning. ``strict=True`` raises the BadVideoError instead. A clip is only
ever added to a batch whole. (With DALI, a file that probes fine but fails to
decode is found when its batch decodes, and that batch comes out one short.) Skips can leave ranks with different batch
counts; a DDP trainer should agree on the step count (e.g. all-reduce a flag).
"""
from __future__ import annotations

import hashlib
import logging
import operator
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from . import dali_backend
from .clip import BACKENDS, ClipInfo, _info, decode_plan, plan_clip
from .errors import BackendUnsupported, BadFile, BadVideoError
from .manifest import ManifestEntry, read_manifest
from .pyav_io import _av
from .sampling import ClipSpec

log = logging.getLogger("vpengine.data")
_END = object()
# Set in a pass's producer and pool threads. A cycle collection may run in
# any thread, and it may finalize an abandoned pass there: its finally must
# not wait for a producer that is waiting on this very thread.
_loader_thread = threading.local()


def _mark_loader_thread() -> None:
    _loader_thread.active = True


def _put(out: queue.Queue, item, stop: threading.Event) -> None:
    """Queue ``item``, unless the pass stops first (no one would take it)."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.05)
            return
        except queue.Full:
            pass


@dataclass
class ClipBatch:
    """frames: uint8 ``[B, T, h, w, 3]`` on the loader's device; frame_paddings
    float32 ``[B, T]`` (1 = padded frame) on the same device; captions, infos and
    manifest rows per clip."""

    frames: torch.Tensor
    frame_paddings: torch.Tensor
    captions: list[str | None]
    infos: list[ClipInfo]
    rows: list[int]


def _dist_rank_world(rank, world_size) -> tuple[int, int]:
    """Either argument left out comes from torch.distributed when it is
    initialized; outside it, rank defaults to 0 only for a world of 1 (a
    missing rank would otherwise make every process rank 0 and read the same
    shard)."""
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    if world_size is None:
        world_size = torch.distributed.get_world_size() if dist else 1
    if rank is None:
        if dist:
            rank = torch.distributed.get_rank()
        elif world_size == 1:
            rank = 0
        else:
            raise ValueError(f"world_size={world_size!r} needs rank (or an initialized torch.distributed)")
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (rank, world_size))
    if not (ints and world_size >= 1 and 0 <= rank < world_size):
        raise ValueError(f"need 0 <= rank < world_size; got rank={rank!r}, world_size={world_size!r}")
    return rank, world_size


def default_workers() -> int:
    """One decode thread per CPU this process may run on: the affinity mask,
    not the machine's count, so ranks pinned to their share of a node's cores
    under torchrun do not oversubscribe them."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _integer(name: str, value) -> int:
    if not isinstance(value, bool):
        try:
            return operator.index(value)  # ints and NumPy ints; 1.5 is an error, not epoch 1
        except TypeError:
            pass
    raise ValueError(f"{name} must be an integer; got {value!r}")


def _mix(*parts: int | str) -> int:
    """A 63-bit seed from integers. Arithmetic such as ``seed * P + epoch``
    collides once a row or epoch count passes P (pretraining manifests hold
    tens of millions of rows); a hash of the decimal parts does not. A
    string part names a stream: no integer parts hash to the same text."""
    text = ":".join(p if isinstance(p, str) else str(int(p)) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


class ClipLoader:
    """Iterate ``ClipBatch`` es over a manifest (see the module doc for order and bad files).

    manifest: a .jsonl/.csv path or a list of paths/rows (:func:`read_manifest`).
    spec: the ClipSpec of every clip; a row's start/end override its window
        (seconds from the file's start, as ClipSpec's).
    backend: ``"auto"`` (DALI on the GPU when ``device`` is CUDA and DALI is
        present, else PyAV), ``"pyav"``, ``"dali-cpu"`` or ``"dali-gpu"``.
    rank, world_size: shard explicitly; default from torch.distributed.
    num_workers: decode threads, by default one per CPU this process may run
        on (with DALI on the GPU they are DALI's threads, each driving one
        clip's NVDEC decoder); prefetch: batches prepared ahead;
    decode_threads: FFmpeg threads per PyAV decode (0: FFmpeg's choice).
    """

    def __init__(self, manifest, spec: ClipSpec, batch_size: int, *, device="cpu", backend: str = "auto",
                 seed: int = 0, shuffle: bool = True, drop_last: bool = False, rank: int | None = None,
                 world_size: int | None = None, num_workers: int | None = None, prefetch: int = 2, strict: bool = False,
                 root: str | None = None, decode_threads: int = 1):
        if not isinstance(spec, ClipSpec):
            raise ValueError(f"spec must be a ClipSpec; got {type(spec).__name__}")
        if spec.size is None:
            raise ValueError("spec.size must be set for a loader: clips of different sources are stacked into one batch")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
        seed = _integer("seed", seed)
        if num_workers is None:
            num_workers = default_workers()
        batch_size, num_workers, prefetch, decode_threads = (  # True is not a batch size, 1.5 no thread count
            _integer(n, v) for n, v in (("batch_size", batch_size), ("num_workers", num_workers),
                                        ("prefetch", prefetch), ("decode_threads", decode_threads)))
        if min(batch_size, num_workers, prefetch) < 1 or decode_threads < 0:
            raise ValueError(f"batch_size, num_workers and prefetch must be >= 1 and decode_threads >= 0 "
                             f"(0: FFmpeg's choice); got {batch_size}, {num_workers}, {prefetch}, {decode_threads}")
        self.entries: list[ManifestEntry] = read_manifest(manifest, root)
        self.spec, self.batch_size, self.device = spec, batch_size, torch.device(device)
        self.seed, self.shuffle, self.drop_last, self.strict = seed, shuffle, drop_last, strict
        self.rank, self.world_size = _dist_rank_world(rank, world_size)
        self.num_workers, self.prefetch, self.decode_threads = num_workers, prefetch, decode_threads
        self.backend = backend
        self.dali_device = None  # "gpu"/"cpu": the producer decodes whole batches with DALI
        if backend == "dali-gpu" or (backend == "auto" and self.device.type == "cuda"
                                     and not dali_backend.dali_reasons("gpu")):
            self.dali_device = "gpu"
        elif backend == "dali-cpu":
            self.dali_device = "cpu"
        if backend in ("dali-cpu", "dali-gpu"):  # forced: fail now, not at the first batch
            why = dali_backend.dali_reasons(self.dali_device)
            if why:
                raise BackendUnsupported(f"backend {backend!r} cannot run here: " + "; ".join(why))
        # Every clip is probed with PyAV, whatever decodes it: without PyAV each
        # good file would be skipped as bad, for a reason that is the machine's.
        _av()
        if self.device.type == "cuda" and not (torch.cuda.is_available()
                                               and (self.device.index or 0) < torch.cuda.device_count()):
            # Found now, not after the first batch's decode, as torch's "no accelerator" error.
            raise ValueError(f"device {self.device}: this machine has no such CUDA device "
                             f"({torch.cuda.device_count()} visible)")
        if self.dali_device is not None and spec.resize == "area":
            raise ValueError("spec.resize='area' has no DALI equivalent; use lanczos, bicubic, bilinear or nearest")
        self.epoch = self.start = 0
        self.bad_files: list[BadFile] = []
        self._lock = threading.Lock()

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and sampling seeds (call before iterating).
        ``start`` skips the first ``start`` rows of this rank's shard
        (:meth:`shard_rows`): a resumed run starts where its checkpoint stopped
        without decoding the rows before."""
        epoch, start = _integer("epoch", epoch), _integer("start", start)
        if start < 0:
            raise ValueError(f"start must be >= 0; got {start}")
        self.epoch, self.start = epoch, start

    @property
    def num_bad(self) -> int:
        return len(self.bad_files)

    def shard_rows(self) -> list[int]:
        """Manifest rows this rank reads this epoch, in order."""
        n = len(self.entries)
        if self.shuffle:
            g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        pad = -n % self.world_size
        if n and pad:  # wrap around as often as needed: every rank gets the same count
            order = torch.cat([order, order[torch.arange(pad) % n]])
        # Sliced before the list is made: only this rank's rows become Python
        # ints (36 bytes each), not the whole manifest's on every rank.
        return order[self.rank :: self.world_size].tolist()

    def __len__(self) -> int:
        # shard_rows() pads every rank to ceil(n / world_size) rows; counted
        # here without drawing the epoch's permutation.
        n = len(self.entries)
        rows = max(-(-n // self.world_size) - self.start, 0)
        return rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)

    def _row_seed(self, row: int, epoch: int | None = None) -> int:
        return _mix(self.seed, self.epoch if epoch is None else epoch, row)

    def _bad(self, err: BadVideoError, row: int, bad: list[BadFile]) -> None:
        if self.strict:
            raise err
        bad.append(BadFile(err.path, err.reason, row))
        log.warning("skipping bad video (row %d) %s: %s", row, err.path, err.reason)

    def _work(self, row: int, epoch: int):
        """In a pool thread: the plan (and the pixels unless DALI decodes the batch)."""
        e = self.entries[row]
        spec = self.spec
        try:
            if e.start_time is not None or e.end_time is not None:
                try:
                    spec = self.spec.with_window(
                        e.start_time if e.start_time is not None else self.spec.start_time,
                        e.end_time if e.end_time is not None else self.spec.end_time)
                except ValueError as err:  # the row's end before the spec's start, or the reverse
                    raise BadVideoError(e.path, f"the row's time window and the spec's leave no frames: {err}") from None
            plan = plan_clip(e.path, spec, self._row_seed(row, epoch))
            why = (dali_backend.file_reasons(plan.probe, self.dali_device, self.device.index)
                   if self.dali_device else None)
            if self.dali_device is not None and not why:
                plan.probe.orientation  # DALI ignores the display matrix; read it here, in the pool
                return row, plan, spec, None, None
            if self.dali_device is not None and self.backend != "auto":
                raise BackendUnsupported(f"{self.backend}: " + "; ".join(why))
            frames = decode_plan(plan, spec, "pyav", self.decode_threads)
            return row, plan, spec, frames, "pyav"
        except (BadVideoError, BackendUnsupported) as err:
            return row, None, spec, err, None

    def _dali_batch(self, items) -> list:
        """Decode DALI-planned items of a batch; returns items with frames filled, bad ones dropped."""
        todo = [i for i, it in enumerate(items) if it[3] is None]
        if not todo:
            return items
        dev = self.dali_device
        kw = dict(device=dev, size=self.spec.size, resize=self.spec.resize, batch_size=self.batch_size,
                  num_threads=self.num_workers, device_id=self.device.index if dev == "gpu" else None)
        plans = [items[i][1] for i in todo]
        try:
            clips = dali_backend.decode_batch([p.probe.path for p in plans], [p.indices for p in plans],
                                              [p.probe.codec for p in plans],
                                              orientations=[p.probe.orientation for p in plans],
                                              file_keys=[p.file_key for p in plans], **kw)
            for k, i in enumerate(todo):
                items[i] = (*items[i][:3], clips[k], "dali-" + dev)
        except (dali_backend.DaliBatchFailed, BadVideoError) as err:
            if len(todo) == 1 and isinstance(err, BadVideoError):  # DALI already tried it alone
                items[todo[0]] = self._pyav_fallback(items[todo[0]], err)
                return items
            for i in todo:  # find the culprit: one clip at a time
                p = items[i][1]
                try:
                    clip = dali_backend.decode_batch([p.probe.path], [p.indices], [p.probe.codec],
                                                     orientations=[p.probe.orientation],
                                                     file_keys=[p.file_key], **kw)[0]
                    items[i] = (*items[i][:3], clip, "dali-" + dev)
                except BadVideoError as alone:
                    items[i] = self._pyav_fallback(items[i], alone)
        return items

    def _pyav_fallback(self, item, dali_err: BadVideoError):
        """A clip DALI failed on alone: under ``auto`` PyAV decides whether the
        file is bad (NVDEC refuses streams PyAV reads: frames under its minimum
        size, profiles it lacks, AV1 on Hopper). A forced DALI backend reports
        DALI's reason."""
        row, plan, spec = item[:3]
        if self.backend != "auto":
            return row, None, spec, dali_err, None
        try:
            frames = decode_plan(plan, spec, "pyav", self.decode_threads)
        except BadVideoError as err:
            return row, None, spec, err, None
        log.info("DALI could not decode %s (%s); decoded with PyAV", dali_err.path, dali_err.reason)
        return row, plan, spec, frames, "pyav"

    def _emit(self, items, out: queue.Queue, stop: threading.Event, bad: list[BadFile]) -> None:
        if self.dali_device is not None:
            items = self._dali_batch(items)
        good = []
        for row, plan, spec, frames, backend in items:
            if plan is None or isinstance(frames, Exception):
                self._bad(frames if isinstance(frames, BadVideoError) else BadVideoError(
                    self.entries[row].path, str(frames)), row, bad)
            else:
                good.append((row, plan, frames, backend))
        if not good:
            return
        clips = [f for _, _, f, _ in good]
        if all(c.device.type == "cpu" for c in clips):
            frames = torch.stack(clips)  # one host-to-device copy per batch, from pinned memory
            if self.device.type == "cuda":
                frames = frames.pin_memory().to(self.device, non_blocking=True)
        else:
            frames = torch.stack([c.to(self.device) for c in clips])
        pads = torch.tensor([p.paddings for _, p, _, _ in good], dtype=torch.float32).to(self.device)
        _put(out, ClipBatch(frames, pads, [self.entries[r].caption for r, *_ in good],
                            [_info(p, b, f) for _, p, f, b in good], [r for r, *_ in good]), stop)

    def _produce(self, rows: list[int], epoch: int, out: queue.Queue, stop: threading.Event,
                 bad: list[BadFile]) -> None:
        _mark_loader_thread()
        try:
            pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="vpengine-decode",
                                      initializer=_mark_loader_thread)
            try:
                ahead = self.prefetch * self.batch_size
                futures = [pool.submit(self._work, r, epoch) for r in rows[:ahead]]
                nxt, pending = len(futures), []
                for i in range(len(rows)):
                    if stop.is_set():
                        return
                    item = futures[i].result()
                    futures[i] = None  # a done future holds its clip: all of the epoch's, kept, would run out of memory
                    if nxt < len(rows):
                        futures.append(pool.submit(self._work, rows[nxt], epoch))
                        nxt += 1
                    # A bad file leaves a gap that the next rows fill; DALI-planned
                    # items count as good here and are re-checked when decoded.
                    if item[1] is None:
                        self._emit([item], out, stop, bad)
                        continue
                    pending.append(item)
                    if len(pending) == self.batch_size:
                        self._emit(pending, out, stop, bad)
                        pending = []
                if pending and not self.drop_last:
                    self._emit(pending, out, stop, bad)
            finally:  # stopped, or raising: the rows not yet started are not decoded (a break would wait for them)
                pool.shutdown(cancel_futures=True)
            _put(out, _END, stop)
        except BaseException as e:  # strict mode's BadVideoError, or a bug: re-raised by the consumer
            _put(out, e, stop)

    def __iter__(self):
        # bad_files: the skips of this pass (the last one, once it ends). Each
        # pass fills its own list: an older pass still running (two iterators
        # of one loader) must not add its skips to the newer pass's count.
        bad: list[BadFile] = []
        with self._lock:
            self.bad_files = bad
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        # The pass keeps the epoch it started with, seeds as well as order: a
        # set_epoch for the next pass must not change the clips still to come.
        rows = self.shard_rows()[self.start:]
        producer = threading.Thread(target=self._produce, args=(rows, self.epoch, out, stop, bad), daemon=True)
        producer.start()
        try:
            while True:
                item = out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()  # the producer stops at its next row or queue put, after the decodes running
            if not getattr(_loader_thread, "active", False):  # see _loader_thread
                producer.join()
