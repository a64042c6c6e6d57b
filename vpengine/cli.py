"""The ``vpengine`` command: info, convert, demo, bench."""
from __future__ import annotations

import argparse
import os
import sys


def _check_output(path: str, overwrite: bool, suffixes: tuple[str, ...], *inputs: str) -> None:
    """Refuse, before any work, an output that would destroy what the user has."""
    if not path.endswith(suffixes):
        raise ValueError(f"output must end in {' or '.join(suffixes)}; got {path}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"output folder {parent} does not exist")
    if os.path.exists(path):
        if any(os.path.exists(i) and os.path.samefile(path, i) for i in inputs):
            raise ValueError(f"output {path} is an input of this command; choose another name")
        if not overwrite:
            raise ValueError(f"output {path} exists; pass --overwrite to replace it")


def _convert(args) -> int:
    from .model.api import load, load_official, save
    from .model.export import save_official

    src, dst = args.input, args.output
    _check_output(dst, args.overwrite, (".npz", ".safetensors"), src)
    model = load(src) if src.endswith(".safetensors") else load_official(src)
    if dst.endswith(".npz"):
        save_official(model, dst)
    else:
        save(model, dst)
    kind = type(model).__name__
    print(f"{src} -> {dst}: {kind}, {sum(p.numel() for p in model.parameters()):,} parameters, {model.config}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vpengine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices and every backend with why it is (not) usable")
    p = sub.add_parser("convert", help="official .npz -> vpengine .safetensors (or back to .npz)")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p = sub.add_parser("demo", help="encode a generated clip with VideoPrism and time each backend")
    p.add_argument("--preset", default="videoprism_public_v1_base")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=288)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--device", default=None)
    p = sub.add_parser("embed", help="embed every clip of a manifest (JSONL/CSV) into one .npz")
    p.add_argument("manifest")
    p.add_argument("--model", required=True, help="preset name (official weights), .npz or .safetensors")
    p.add_argument("--out", required=True, help="output .npz (embeddings, rows, paths, bad files)")
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
    bench = sub.add_parser("bench", help="benchmark suite (see benchmarks/)")
    try:
        from .bench.cli import add_arguments

        add_arguments(bench)
        have_bench = True
    except ImportError as e:
        have_bench = str(e)
    args = parser.parse_args(argv)
    if args.command == "info":
        from .info import main as info_main

        return info_main()
    if args.command == "convert":
        from .model.convert import CheckpointError

        try:
            return _convert(args)
        except (CheckpointError, ValueError, OSError) as e:  # SafetensorError is an OSError
            print(f"vpengine convert: {e}", file=sys.stderr)
            return 2
    if args.command == "demo":
        from .demo import run
        from .model.config import PRESETS

        if args.preset not in PRESETS:
            print(f"vpengine demo: --preset must be one of {', '.join(PRESETS)}; got {args.preset!r}",
                  file=sys.stderr)
            return 2
        return run(args.preset, args.frames, args.size, args.batch, args.runs,
                   tuple(d.strip() for d in args.dtypes.split(",") if d.strip()), args.device)
    if args.command == "embed":
        import torch

        from .data import BadVideoError, ClipSpec
        from .embed import embed_manifest, load_any
        from .model.convert import CheckpointError

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            if torch.device(device).type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"--device {device}: this machine has no usable CUDA device")
            _check_output(args.out, args.overwrite, (".npz",), args.model, args.manifest)
            model = load_any(args.model)
            summary = embed_manifest(model, args.manifest, args.out,
                           spec=ClipSpec(args.frames, size=(args.size, args.size)), batch_size=args.batch,
                           device=device, dtype=getattr(torch, args.dtype), pool=args.pool,
                           backend=args.decoder, strict=args.strict, compile=args.compile)
        except (ValueError, CheckpointError, OSError, BadVideoError) as e:
            print(f"vpengine embed: {e}", file=sys.stderr)
            return 2
        if summary["clips"] == 0 and summary["skipped"] > 0:
            print(f"vpengine embed: no clip could be embedded ({summary['skipped']} bad files, "
                  f"listed in {args.out})", file=sys.stderr)
            return 1
        return 0
    if args.command == "bench":
        if have_bench is not True:
            print(f"vpengine bench is unavailable: {have_bench}", file=sys.stderr)
            return 2
        from .bench.cli import run as bench_run

        try:
            return bench_run(args)
        except ValueError as e:
            print(f"vpengine bench: {e}", file=sys.stderr)
            return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
