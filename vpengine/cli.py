"""The ``vpengine`` command: info, convert, demo, embed, train, bench."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from ._files import check_writable


def _path(arg: str) -> str:
    """A path argument with ``~`` expanded: the shell leaves it alone after
    ``=`` (``--out=~/x``) and in quotes, and a folder named ``~`` is never meant."""
    return os.path.expanduser(arg)


def _demo_args(args) -> str | None:
    """What is wrong with ``vpengine demo``'s arguments (None: nothing)."""
    from .model.config import PRESETS, get_config

    if args.preset not in PRESETS:
        return f"--preset must be one of {', '.join(PRESETS)}; got {args.preset!r}"
    for name in ("frames", "size", "batch", "runs"):
        if getattr(args, name) < 1:
            return f"--{name} must be at least 1; got {getattr(args, name)}"
    config = get_config(args.preset)
    patch = getattr(config, "encoder", config).patch_size
    if args.size % patch:
        return f"--size must be a multiple of the patch size {patch}; got {args.size}"
    if args.dtypes is None:
        return None
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in ("float32", "bfloat16", "float16")]
    if not dtypes or bad:
        return f"--dtypes must list float32, bfloat16 or float16 (comma-separated); got {args.dtypes!r}"
    return None


def _check_output(path: str, overwrite: bool, suffixes: tuple[str, ...], *inputs: str) -> None:
    """Refuse, before any work, an output that would destroy what the user has."""
    if not path.endswith(suffixes):
        raise ValueError(f"output must end in {' or '.join(suffixes)}; got {path}")
    check_writable(path)
    if os.path.exists(path):
        if any(os.path.exists(i) and os.path.samefile(path, i) for i in inputs if i):
            raise ValueError(f"output {path} is an input of this command; choose another name")
        if not overwrite:
            raise ValueError(f"output {path} exists; pass --overwrite to replace it")


def _convert(args) -> int:
    from .model.api import load, load_official, save
    from .model.export import save_official

    src, dst = args.input, args.output
    if not src.endswith((".npz", ".safetensors")):
        hint = " (a training checkpoint? its model is model.safetensors beside it)" if src.endswith(".pt") else ""
        raise ValueError(f"input must be an official .npz or a vpengine .safetensors; got {src}{hint}")
    _check_output(dst, args.overwrite, (".npz", ".safetensors"), src)
    model = load(src) if src.endswith(".safetensors") else load_official(src)
    if dst.endswith(".npz"):
        save_official(model, dst, overwrite=args.overwrite)
    else:
        save(model, dst, overwrite=args.overwrite)
    kind = type(model).__name__
    print(f"{src} -> {dst}: {kind}, {sum(p.numel() for p in model.parameters()):,} parameters, {model.config}")
    return 0


def _job_device(arg: str | None):
    """``_device``, and for a job on the CPU, freed memory kept for reuse
    (:mod:`vpengine.memory`: fewer page faults)."""
    device = _device(arg)
    if device.type == "cpu":
        from .memory import reuse_unless_disabled

        reuse_unless_disabled()
    return device


def _device(arg: str | None):
    """The --device argument as a usable torch.device (ValueError otherwise)."""
    import torch

    if arg is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(arg)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"--device {arg!r} is not a device name ({e})") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda[:N]; got {arg!r}")
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"--device {arg}: this machine has no usable CUDA device")
        if device.index is not None and device.index >= n:
            raise ValueError(f"--device {arg}: this machine has {n} CUDA device(s)")
    return device


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds, so temporary output files are removed


def main(argv=None) -> int:
    """The command line; SIGTERM and Ctrl-C stop it cleanly (exit 143 / 130)."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("vpengine: interrupted", file=sys.stderr)
        return 130
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vpengine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices and every backend with why it is (not) usable")
    p = sub.add_parser("convert", help="official .npz -> vpengine .safetensors (or back to .npz)")
    p.add_argument("input", type=_path)
    p.add_argument("output", type=_path)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p = sub.add_parser("demo", help="encode a generated clip with VideoPrism and time each backend")
    p.add_argument("--preset", default="videoprism_public_v1_base")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=288)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--dtypes", default=None,
                   help="comma-separated (default: float32, and bfloat16 where the device is fast at it)")
    p.add_argument("--device", default=None)
    p = sub.add_parser("embed", help="embed every clip of a manifest (JSONL/CSV) into one .npz")
    p.add_argument("manifest", type=_path)
    p.add_argument("--model", required=True, type=_path, help="preset name (official weights), .npz or .safetensors")
    p.add_argument("--out", required=True, type=_path, help="output .npz (embeddings, rows, paths, bad files)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=288)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--pool", choices=("mean", "tokens"), default="mean")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--decoder", default="auto", help="auto, pyav, dali-cpu or dali-gpu")
    p.add_argument("--device", default=None)
    p.add_argument("--strict", action="store_true", help="stop at the first bad file instead of skipping it")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model: fastest on a GPU; the first batch pays the compile")
    p = sub.add_parser("train", help="pretrain: stage 1 (video-text contrastive) or stage 2 (masked distillation)")
    from .train.cli import add_arguments as add_train_arguments

    add_train_arguments(p, _path)
    bench = sub.add_parser("bench", help="benchmark suite (see benchmarks/)")
    try:
        from .bench.cli import add_arguments

        add_arguments(bench, _path)
        have_bench = True
    except ImportError as e:
        have_bench = str(e)
    args = parser.parse_args(argv)
    if args.command == "info":
        from .info import main as info_main

        try:
            return info_main()
        except ValueError as e:  # VPENGINE_BACKEND set to no backend, say
            print(f"vpengine info: {e}", file=sys.stderr)
            return 2
    if args.command == "convert":
        from .model.convert import CheckpointError

        try:
            return _convert(args)
        except (CheckpointError, ValueError, OSError) as e:  # save() raises a SafetensorError as an OSError
            print(f"vpengine convert: {e}", file=sys.stderr)
            return 2
    if args.command == "demo":
        from .demo import run

        wrong = _demo_args(args)
        if wrong:
            print(f"vpengine demo: {wrong}", file=sys.stderr)
            return 2
        try:
            device = _job_device(args.device)
        except ValueError as e:
            print(f"vpengine demo: {e}", file=sys.stderr)
            return 2
        return run(args.preset, args.frames, args.size, args.batch, args.runs,
                   None if args.dtypes is None else tuple(d.strip() for d in args.dtypes.split(",") if d.strip()),
                   device)
    if args.command == "embed":
        import torch

        from .backends import BackendUnavailable
        from .data import BadVideoError, ClipSpec
        from .data.errors import BackendUnsupported
        from .embed import embed_manifest
        from .model.api import load_any
        from .model.convert import CheckpointError

        try:
            device = _job_device(args.device)
            _check_output(args.out, args.overwrite, (".npz",), args.model, args.manifest)
            model = load_any(args.model)
            patch = getattr(model.config, "encoder", model.config).patch_size
            if args.size < 1 or args.size % patch:
                raise ValueError(f"--size must be a positive multiple of the model's patch size {patch}; "
                                 f"got {args.size}")
            summary = embed_manifest(model, args.manifest, args.out,
                           spec=ClipSpec(args.frames, size=(args.size, args.size)), batch_size=args.batch,
                           device=device, dtype=getattr(torch, args.dtype), pool=args.pool,
                           backend=args.decoder, strict=args.strict, compile=args.compile,
                           overwrite=args.overwrite)
        # BackendUnavailable: VPENGINE_BACKEND names a backend that cannot run here (a setting, not a crash)
        except (ValueError, CheckpointError, OSError, BadVideoError, BackendUnsupported, BackendUnavailable) as e:
            print(f"vpengine embed: {e}", file=sys.stderr)
            return 2
        # stdout holds this one JSON document, whatever happened: progress went to stderr
        print(json.dumps(summary), flush=True)
        if summary["clips"] == 0:
            if summary["output"] is None:
                bad = (f"{summary['skipped']} bad files, listed in the summary on stdout" if summary["skipped"]
                       else "the manifest lists no clips")
                why = f"{bad}; {args.out} existed and is left as it was"
            elif summary["skipped"]:
                why = f"{summary['skipped']} bad files, listed in {args.out}"
            else:
                why = f"the manifest lists no clips; {args.out} is empty"
            print(f"vpengine embed: no clip could be embedded ({why})", file=sys.stderr)
            return 1
        return 0
    if args.command == "train":
        from .train.cli import run as train_run

        try:
            device = _job_device(args.device)
        except ValueError as e:
            print(f"vpengine train: {e}", file=sys.stderr)
            return 2
        return train_run(args, device)
    if args.command == "bench":
        if have_bench is not True:
            print(f"vpengine bench is unavailable: {have_bench}", file=sys.stderr)
            return 2
        from .bench.cli import run as bench_run

        try:
            return bench_run(args)
        except (ValueError, OSError) as e:
            print(f"vpengine bench: {e}", file=sys.stderr)
            return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
