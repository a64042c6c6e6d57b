"""Public model API: build, load_official, save, load, from_pretrained."""
from __future__ import annotations

import dataclasses
import json
import os

import torch
from torch import nn

from .._files import write_atomically
from .config import (HUB_FILES, PRESETS, EncoderConfig, ModelConfig, VideoTextConfig, config_from_dict, config_to_dict,
                     get_config, vpengine_model)
from .convert import CheckpointError, convert_official, read_npz
from .encoder import VideoEncoder
from .video_text import VideoTextModel

FORMAT = "vpengine-safetensors-1"


def _init_weights(model: nn.Module, seed: int | None, generator: torch.Generator | None = None) -> None:
    """Random initialisation (truncated-normal-like std 0.02 for projections),
    from ``generator`` when given (models built in parts share one: a fresh
    generator per part would repeat the same draws in each)."""
    g = generator if generator is not None else torch.Generator().manual_seed(seed) if seed is not None else None
    for name, p in model.named_parameters():
        with torch.no_grad():
            if name.endswith("bias") or name.endswith("scale") or name.endswith("per_dim_scale"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def model_from_config(config: ModelConfig) -> nn.Module:
    return VideoTextModel(config) if isinstance(config, VideoTextConfig) else VideoEncoder(config)


def build(name_or_config: str | ModelConfig, *, seed: int | None = 0) -> nn.Module:
    """The model of a preset (``vpengine.PRESETS``) or config, randomly initialised."""
    config = get_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    if not isinstance(config, (EncoderConfig, VideoTextConfig)):
        raise TypeError(f"build() takes a preset name ({', '.join(PRESETS)}) or an EncoderConfig or "
                        f"VideoTextConfig; got {type(name_or_config).__name__}")
    model = model_from_config(config)
    _init_weights(model, seed)
    return model.eval()


def _load_state(config: ModelConfig, state: dict, source: str) -> nn.Module:
    """The model of ``config`` holding ``state``; CheckpointError when they do
    not match or a value is not finite. The shapes are checked on a model on
    the meta device first: a hand-edited config of 20,000 layers would
    otherwise allocate gigabytes before being refused."""
    with torch.device("meta"):
        expected = {k: v.shape for k, v in model_from_config(config).state_dict().items()}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    bad = [f"{k}: expected {list(expected[k])}, found {list(state[k].shape)}"
           for k in expected if k in state and state[k].shape != expected[k]]
    # load_state_dict would cast an int or bool tensor into the float parameter
    # without a word (as read_npz refuses for .npz files).
    typed = [f"{k}: {v.dtype}" for k, v in sorted(state.items()) if k in expected and not v.is_floating_point()]
    if missing or extra or bad or typed:
        parts = []
        if missing:
            parts.append("missing: " + _some(missing))
        if extra:
            parts.append("unexpected: " + _some(extra))
        if bad:
            parts.append("mis-shaped: " + _some(bad, "; "))
        if typed:
            parts.append("not floating point: " + _some(typed, "; "))
        raise CheckpointError(f"{source} does not match its model config ({' | '.join(parts)})")
    # NaN or inf weights are a damaged file (or a diverged run): every output
    # would be NaN, written out as embeddings without a word.
    nonfinite = [k for k, v in sorted(state.items()) if not bool(torch.isfinite(v).all())]
    if nonfinite:
        raise CheckpointError(f"{source} holds NaN or infinite values in {len(nonfinite)} tensors: "
                              + _some(nonfinite))
    model = model_from_config(config)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _some(items: list[str], sep: str = ", ", n: int = 12) -> str:
    return sep.join(items[:n]) + (f"{sep}... ({len(items) - n} more)" if len(items) > n else "")


def load_official(path: str | os.PathLike) -> nn.Module:
    """Read an official VideoPrism ``.npz``; the config is inferred from the
    array shapes; returns a VideoEncoder or a VideoTextModel in eval mode."""
    arrays = read_npz(path)
    config, state = convert_official(arrays, source=str(path))
    return _load_state(config, state, str(path))


def save(model: nn.Module, path: str | os.PathLike, *, overwrite: bool = True) -> None:
    """Write weights and config to one safetensors file (written to a temporary
    name and renamed, so an interrupted save never leaves a partial file);
    ``overwrite=False`` raises FileExistsError rather than replace a file."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    model = vpengine_model(model, "save")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(config_to_dict(model.config))}

    def write(tmp: str) -> None:
        try:
            save_file(state, tmp, metadata=meta)
        except SafetensorError as e:  # a full disk, say: an OSError to every caller, as np.savez's
            raise OSError(f"cannot write {path}: {e}") from None

    write_atomically(path, write, overwrite=overwrite)


def load(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """Read a file written by :func:`save`."""
    from safetensors import SafetensorError, safe_open

    path = str(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: this machine has no usable CUDA device")
    try:
        with safe_open(path, framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    if meta.get("format") != FORMAT or "config" not in meta:
        raise CheckpointError(f"{path} is a safetensors file but not one written by vpengine.save (no config)")
    try:
        config = config_from_dict(json.loads(meta["config"]))
    except ValueError as e:  # json.JSONDecodeError is a ValueError too
        raise CheckpointError(f"{path}: its stored config is not valid: {e}") from None
    return _load_state(config, state, path).to(device)


def from_pretrained(
    name: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
) -> nn.Module:
    """Official weights of a released preset, fetched through huggingface_hub
    (online) or read from the local Hugging Face cache (offline, or with
    ``HF_HUB_OFFLINE=1`` / ``local_files_only=True``)."""
    if name not in HUB_FILES:
        released = ", ".join(HUB_FILES)
        extra = " (no weights were released for it)" if name in PRESETS else ""
        raise ValueError(f"no official checkpoint for {name!r}{extra}; released: {released}")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo, filename = HUB_FILES[name]
    if local_files_only is None:
        # huggingface_hub's own rule for the variable (1/ON/YES/TRUE, any case).
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    elif not isinstance(local_files_only, bool):
        raise ValueError(f"local_files_only must be a bool or None; got {local_files_only!r}")
    try:
        # Online, huggingface_hub falls back to the cache by itself when the Hub is unreachable.
        path = hf_hub_download(repo, filename, cache_dir=cache_dir, local_files_only=local_files_only)
    except LocalEntryNotFoundError:
        why = ("downloads are off (HF_HUB_OFFLINE or local_files_only)" if local_files_only
               else "the Hub could not be reached (or HF_HUB_OFFLINE is set)")
        raise FileNotFoundError(
            f"{repo}/{filename} is not in the local Hugging Face cache and {why}; run once online "
            "or pass the .npz to vpengine.load_official"
        ) from None
    try:
        model = load_official(path)
    except CheckpointError as e:
        raise CheckpointError(f"{e}\nThis is the Hugging Face cache's copy of {repo}/{filename}: delete it "
                              "and run again online to fetch it anew") from None
    check_preset_model(name, model, f"{path}, the cached {repo}/{filename},")
    return model


def _config_diff(got, want, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(want):
        a, b = getattr(got, f.name), getattr(want, f.name)
        if dataclasses.is_dataclass(b) and type(a) is type(b):
            out += _config_diff(a, b, f"{prefix}{f.name}.")
        elif a != b:
            out.append(f"{prefix}{f.name} {a!r} (expected {b!r})")
    return out


def check_preset_model(name: str, model: nn.Module, where: str) -> None:
    """CheckpointError unless ``model`` has exactly the config of preset
    ``name``. The class alone is not enough: base and large (or a fine-tuned
    variant of another shape) are both VideoEncoders, and a user asking for
    one must not silently get the other's weights and embedding width."""
    want = PRESETS[name]
    if type(model.config) is not type(want):  # e.g. an encoder file under an LvT name
        raise CheckpointError(f"{where} holds a {type(model).__name__}, not the model of {name}; "
                              "delete it (from_pretrained fetches it anew online)")
    diff = _config_diff(model.config, want)
    if diff:
        raise CheckpointError(f"{where} holds a {type(model).__name__} of another shape than {name}: "
                              + _some(diff, "; ") + "; delete it (from_pretrained fetches it anew online)")


def cached_official_path(name: str) -> str | None:
    """Path of the official file of ``name`` in the local HF cache, or None."""
    if name not in HUB_FILES:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo, filename = HUB_FILES[name]
    p = try_to_load_from_cache(repo, filename)
    return p if isinstance(p, str) else None


def load_any(model: str) -> torch.nn.Module:
    """A preset name (official weights), an official ``.npz`` or a vpengine ``.safetensors``."""
    if model in PRESETS:
        return from_pretrained(model)
    if model.endswith(".npz"):
        return load_official(model)
    if model.endswith(".safetensors"):
        return load(model)
    raise ValueError(f"model must be a preset ({', '.join(PRESETS)}), an .npz or a .safetensors file; got {model!r}")
