"""The ``vpengine`` command: info, convert, demo, bench."""
from __future__ import annotations

import argparse
import sys


def _convert(args) -> int:
    from .model.api import load, load_official, save
    from .model.export import save_official

    src, dst = args.input, args.output
    model = load(src) if src.endswith(".safetensors") else load_official(src)
    if dst.endswith(".npz"):
        save_official(model, dst)
    elif dst.endswith(".safetensors"):
        save(model, dst)
    else:
        raise SystemExit(f"vpengine convert: output must end in .safetensors or .npz; got {dst}")
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
        except (CheckpointError, FileNotFoundError) as e:
            print(f"vpengine convert: {e}", file=sys.stderr)
            return 2
    if args.command == "demo":
        from .demo import run

        return run(args.preset, args.frames, args.size, args.batch, args.runs,
                   tuple(d.strip() for d in args.dtypes.split(",") if d.strip()), args.device)
    if args.command == "embed":
        import torch

        from .data import BadVideoError, ClipSpec
        from .embed import embed_manifest, load_any
        from .model.convert import CheckpointError

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            model = load_any(args.model)
            embed_manifest(model, args.manifest, args.out,
                           spec=ClipSpec(args.frames, size=(args.size, args.size)), batch_size=args.batch,
                           device=device, dtype=getattr(torch, args.dtype), pool=args.pool,
                           backend=args.decoder, strict=args.strict, compile=args.compile)
        except (ValueError, CheckpointError, FileNotFoundError, BadVideoError) as e:
            print(f"vpengine embed: {e}", file=sys.stderr)
            return 2
        return 0
    if args.command == "bench":
        if have_bench is not True:
            print(f"vpengine bench is unavailable: {have_bench}", file=sys.stderr)
            return 2
        from .bench.cli import run as bench_run

        return bench_run(args)
    return 1


if __name__ == "__main__":
    sys.exit(main())
