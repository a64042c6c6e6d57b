"""Public model API: presets, official checkpoints of any shape, safetensors IO,
input validation, autocast (from_pretrained: test_from_pretrained.py)."""
import re

import numpy as np
import pytest
import torch

import vpengine
from vpengine.model import CheckpointError, EncoderConfig, TextConfig, VideoTextConfig
from vpengine.model.api import model_from_config
from vpengine.model.export import save_official, to_official

# Shapes unlike the parity set: width 48 with 3 heads of 16, patch 6, a 3x3
# trained grid, 5 trained frames, odd MLP width.
ENC = EncoderConfig(width=48, num_spatial_layers=2, num_temporal_layers=1, num_heads=3, mlp_dim=72,
                    patch_size=6, pos_emb_shape=(5, 3, 3))
LVT = VideoTextConfig(encoder=ENC, num_auxiliary_layers=1, pooler_num_heads=2, pooler_hidden=64,
                      text=TextConfig(vocab_size=50, num_layers=1, num_heads=3, width=48, mlp_dim=192))


def _random(config, seed=0):
    model = vpengine.build(config, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-zero LN scales and biases, so layout mistakes show
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _video(B=2, T=5, H=18, W=18, seed=0):
    return torch.rand(B, T, H, W, 3, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name,count", [
    ("videoprism_public_v1_base", 114_365_184), ("videoprism_public_v1_large", 353_965_056),
    ("videoprism_lvt_public_v1_base", 247_623_424), ("videoprism_lvt_public_v1_large", 579_877_120),
    ("videoprism_v1_giant", None),
])
def test_presets_match_official_parameter_counts(name, count):
    with torch.device("meta"):
        model = model_from_config(vpengine.PRESETS[name])
    n = sum(p.numel() for p in model.parameters())
    if count is not None:
        assert n == count
    else:
        assert model.config.head_dim == 88 and model.config.width == 1408


def test_unknown_preset():
    with pytest.raises(ValueError, match="known presets"):
        vpengine.build("videoprism_tiny")


@pytest.mark.parametrize("config", [ENC, LVT], ids=["encoder", "lvt"])
def test_official_roundtrip_infers_config(tmp_path, config):
    model = _random(config)
    path = tmp_path / "ckpt.npz"
    save_official(model, path)
    loaded = vpengine.load_official(path)
    assert loaded.config == config
    video = _video()
    with torch.no_grad():
        if isinstance(config, VideoTextConfig):
            ids = torch.randint(0, 50, (3, 7))
            pads = torch.zeros(3, 7)
            pads[1, 4:] = 1
            assert torch.equal(model.encode_video(video), loaded.encode_video(video))
            assert torch.equal(model.encode_text(ids, pads), loaded.encode_text(ids, pads))
        else:
            assert torch.equal(model(video), loaded(video))


def test_safetensors_save_load(tmp_path):
    model = _random(LVT)
    path = tmp_path / "m.safetensors"
    vpengine.save(model, path)
    loaded = vpengine.load(path)
    assert loaded.config == LVT
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("edit, match", [
    (lambda c: c["config"]["encoder"].update(atten_logit_cap="x"), "atten_logit_cap must be a number"),
    (lambda c: c["config"]["encoder"].update(num_heads=0), "num_heads must be an int >= 1"),
    (lambda c: c["config"]["text"].update(num_heads=True), "num_heads must be an int >= 1"),
    (lambda c: c["config"]["encoder"].update(pos_emb_shape=[4, 4]), "pos_emb_shape"),
    (lambda c: c["config"].update(pooler_num_heads=5), "pooler_hidden .* not divisible by pooler_num_heads 5"),
    (lambda c: c["config"]["text"].update(mystery=1), r"config.text does not match TextConfig \(unknown: mystery\)"),
    (lambda c: c["config"].pop("text"), "config.text must be an object"),
    (lambda c: c.update(config=[1]), "config must be an object"),
])
def test_hand_edited_stored_config_is_a_checkpoint_error(tmp_path, edit, match):
    """The config in a vpengine.save file is JSON a person can edit: a bad
    edit names the field, it never builds a wrong model or a raw TypeError."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    vpengine.save(_random(LVT), path)
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta["config"])
    edit(config)
    save_file(tensors, str(path), metadata={**meta, "config": json.dumps(config)})
    with pytest.raises(CheckpointError, match=match):
        vpengine.load(path)


def test_configs_validate_their_fields():
    assert EncoderConfig(width=np.int64(64), num_heads=np.int32(2), pos_emb_shape=np.array([4, 2, 2])).width == 64
    assert EncoderConfig(atten_logit_cap=0).atten_logit_cap == 0  # the official "no cap"
    for bad in (dict(width=64.0), dict(mlp_dim=-1), dict(atten_logit_cap=float("inf")), dict(atten_logit_cap=1e9),
                dict(pos_emb_shape=(4, 0, 2))):
        with pytest.raises(ValueError):
            EncoderConfig(**bad)
    with pytest.raises(ValueError, match="text width 512 differs from the video encoder's width 768"):
        VideoTextConfig(text=TextConfig(width=512, num_heads=8))


def _official(tmp_path):
    arrays = to_official(_random(ENC))
    return arrays, tmp_path / "bad.npz"


def test_checkpoint_missing_extra_misshaped(tmp_path):
    arrays, path = _official(tmp_path)
    key = "params/spatial_ln/bias"
    broken = {k: v for k, v in arrays.items() if k != key}
    broken["params/unused/thing"] = np.zeros(3, np.float32)
    broken["params/temporal_ln/scale"] = np.zeros(7, np.float32)
    np.savez(path, **broken)
    with pytest.raises(CheckpointError) as e:
        vpengine.load_official(path)
    msg = str(e.value)
    assert key in msg and "params/unused/thing" in msg and "temporal_ln/scale: expected [48], found [7]" in msg


@pytest.mark.parametrize("stack", ["spatial_encoder", "temporal_encoder"])
def test_one_attention_array_with_swapped_axes_is_the_one_named(tmp_path, stack):
    # The heads are inferred from the attention weights: one odd array must
    # not redefine them and get the three consistent ones blamed instead.
    arrays, path = _official(tmp_path)
    key = f"params/{stack}/transformers_stack/x_layers/self_attention/query/w"
    arrays[key] = np.ascontiguousarray(np.swapaxes(arrays[key], 2, 3))  # 16 heads of 3, not 3 of 16
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError) as e:
        vpengine.load_official(path)
    L = ENC.num_spatial_layers if stack == "spatial_encoder" else ENC.num_temporal_layers
    lines = [ln.strip() for ln in str(e.value).splitlines() if "expected" in ln]
    assert lines == [f"{key}: expected [{L}, 48, 3, 16], found [{L}, 48, 16, 3]"]


@pytest.mark.parametrize("damage", ["deflate", "deflate64", "encrypted"])
def test_zip_archives_numpy_cannot_read(tmp_path, damage):
    """A damaged deflate stream (zlib.error), a compression method zipfile
    lacks (Deflate64, NotImplementedError), a password (RuntimeError): a
    CheckpointError naming the file, not a traceback."""
    import struct
    import zipfile

    arrays, path = _official(tmp_path)
    (np.savez_compressed if damage == "deflate" else np.savez)(path, **arrays)
    data = bytearray(path.read_bytes())
    if damage == "deflate":
        info = zipfile.ZipFile(path).infolist()[0]
        data[info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 21] ^= 0x5A
    else:  # every local and central header: method 9, or the encrypted flag
        for sig, at in ((b"PK\x03\x04", 4), (b"PK\x01\x02", 6)):
            i = data.find(sig)
            while i >= 0:
                if damage == "deflate64":
                    data[i + at + 4:i + at + 6] = struct.pack("<H", 9)
                else:
                    data[i + at + 2] |= 1
                i = data.find(sig, i + 4)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=path.name):
        vpengine.load_official(path)


def test_checkpoint_truncated_and_not_npz(tmp_path):
    arrays, path = _official(tmp_path)
    np.savez(path, **arrays)
    data = path.read_bytes()
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.npz"):
        vpengine.load_official(trunc)
    text = tmp_path / "notes.npz"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.npz"):
        vpengine.load_official(text)
    with pytest.raises(CheckpointError, match="not found"):
        vpengine.load_official(tmp_path / "absent.npz")

    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="not an official VideoPrism checkpoint"):
        vpengine.load_official(other)
    st = tmp_path / "x.safetensors"
    st.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="x.safetensors"):
        vpengine.load(st)


def test_bad_inputs_name_the_layout():
    model = _random(ENC)
    with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
        model(torch.rand(2, 5, 3, 18, 18))
    with pytest.raises(ValueError, match="dtype"):
        model(torch.zeros(1, 2, 18, 18, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model(_video() * 255)
    with pytest.raises(ValueError, match="multiples of 6"):
        model(torch.rand(1, 2, 20, 18, 3))
    with pytest.raises(ValueError, match="frame_paddings"):
        model(_video(), torch.zeros(2, 4))


def test_non_square_frames_and_other_lengths():
    model = _random(ENC)
    with torch.no_grad():
        out = model(_video(B=1, T=3, H=12, W=30))
    assert out.shape == (1, 3 * 2 * 5, 48) and torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_autocast(dtype):
    model = _random(ENC)
    video = _video()
    with torch.no_grad():
        ref = model(video)
        with torch.autocast("cpu", dtype=dtype):
            low = model(video)
        cast = model.to(dtype)(video.to(dtype))
    assert low.shape == ref.shape and torch.isfinite(low).all()
    tol = 0.1 if dtype == torch.bfloat16 else 0.02
    assert (low.float() - ref).abs().max() < tol * ref.abs().max()
    assert cast.dtype == dtype and (cast.float() - ref).abs().max() < 2 * tol * ref.abs().max()


def test_uint8_clips_equal_the_float_path():
    model = _random(ENC)
    u8 = torch.randint(0, 256, (2, 5, 18, 12, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = model(u8)
        b = model(u8.float() / 255)
    assert torch.allclose(a, b, atol=1e-6, rtol=0)


def test_checkpoint_dtypes_duplicates_and_dims(tmp_path):
    """Non-float arrays, an array stored twice, a lone .npy and a wrong number
    of dims are CheckpointErrors naming the array; bfloat16 (stored by NumPy
    as 2-byte void) loads as the float32 it widens to."""
    import zipfile

    import numpy as np

    from vpengine.model.convert import CheckpointError

    cfg = EncoderConfig(width=32, num_spatial_layers=1, num_temporal_layers=1, num_heads=2, mlp_dim=48,
                        patch_size=8, pos_emb_shape=(4, 2, 2))
    src = tmp_path / "a.npz"
    save_official(vpengine.build(cfg, seed=0), src)
    arrays = dict(np.load(src))
    key = "params/spatial_pos_emb/emb_var"

    def write(name, **changes):
        path = tmp_path / name
        np.savez(path, **{**arrays, **changes})
        return path

    for bad in (arrays[key].astype(np.int32), arrays[key] > 0, arrays[key].astype(np.complex64)):
        with pytest.raises(CheckpointError, match=f"{key}.*dtype"):
            vpengine.load_official(write("bad.npz", **{key: bad}))
    q = "params/spatial_encoder/transformers_stack/x_layers/self_attention/query/w"
    with pytest.raises(CheckpointError, match="query/w.*expected 4"):
        vpengine.load_official(write("ndim.npz", **{q: arrays[q][0]}))
    bf16 = {k: (v.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view("V2") for k, v in arrays.items()}
    widened = {k: (v.view(np.uint16).astype(np.uint32) << 16).view(np.float32) for k, v in bf16.items()}
    got = vpengine.load_official(write("bf16.npz", **bf16)).state_dict()
    want = vpengine.load_official(write("widened.npz", **widened)).state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert not torch.equal(got[next(iter(got))], vpengine.load_official(src).state_dict()[next(iter(got))])
    dup = tmp_path / "dup.npz"
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(dup, "w") as z:
        for name in ("x.npy", "x.npy"):
            with z.open(name, "w", force_zip64=False) as f:
                np.lib.format.write_array(f, np.zeros(2, np.float32))
    with pytest.raises(CheckpointError, match="stored twice"):
        vpengine.load_official(dup)
    np.save(tmp_path / "lone.npy", np.zeros(3, np.float32))
    with pytest.raises(CheckpointError, match="not a readable .npz"):
        vpengine.load_official(tmp_path / "lone.npy")
    with pytest.raises(CheckpointError, match=f"{key} is an array of Python objects"):
        vpengine.load_official(write("pickled.npz", **{key: np.array([{"a": 1}], dtype=object)}))


def test_text_paddings_and_similarity_are_checked():
    model = _random(LVT)
    ids = torch.randint(0, 50, (2, 6))
    pads = torch.zeros(2, 6)
    with torch.no_grad():
        for bad in (pads + float("nan"), pads + 2, pads - 1):
            with pytest.raises(ValueError, match=r"text paddings must lie in \[0, 1\]"):
                model.encode_text(ids, bad)
        one_nan = pads.clone()
        one_nan[0, 1] = float("nan")
        with pytest.raises(ValueError, match=r"got 1 NaN, and values in \[0.0, 0.0\]"):
            model.encode_text(ids, one_nan)
        with pytest.raises(ValueError, match="must be torch tensors"):
            model.encode_text(ids.numpy(), pads)
        v = model.encode_video(_video())
        t = model.encode_text(ids, pads)
    assert model.similarity(v, t).shape == (2, 2)
    for a, b, match in ((v[0], t, "video_embeddings must be a 2-D"), (v, t.long(), "text_embeddings must be"),
                        (v, t[:, :5], "embedding widths differ")):
        with pytest.raises(ValueError, match=match):
            model.similarity(a, b)


def test_nan_or_inf_weights_are_a_damaged_checkpoint(tmp_path):
    arrays, path = _official(tmp_path)
    key = next(k for k in sorted(arrays) if k.endswith("/w") or k.endswith("kernel") or arrays[k].ndim > 1)
    arrays[key] = arrays[key].copy()
    arrays[key].flat[3] = np.nan
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="NaN or infinite values in 1 tensors"):
        vpengine.load_official(path)
    model = model_from_config(ENC)
    with torch.no_grad():
        next(model.parameters())[0].fill_(float("inf"))
    vpengine.save(model, tmp_path / "inf.safetensors")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        vpengine.load(tmp_path / "inf.safetensors")


def test_a_config_far_larger_than_its_weights_is_refused_before_it_is_built(tmp_path):
    """A hand-edited config of thousands of layers: the check runs on the meta
    device, and the message names a few of the missing tensors, not all."""
    import json

    from safetensors.torch import load_file, save_file

    model = model_from_config(ENC)
    vpengine.save(model, tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        meta = dict(f.metadata())
    config = json.loads(meta["config"])
    config["config"]["num_spatial_layers"] = 2_000
    meta["config"] = json.dumps(config)
    save_file(load_file(tmp_path / "m.safetensors"), tmp_path / "big.safetensors", metadata=meta)
    with pytest.raises(CheckpointError, match=r"missing: .*\(\d+ more\)") as e:
        vpengine.load(tmp_path / "big.safetensors")
    assert len(str(e.value)) < 5000


def test_frame_paddings_are_checked_like_text_paddings():
    model = _random(ENC)
    video = _video()
    with torch.no_grad():
        for bad, got in ((torch.full((2, 5), float("nan")), "10 NaN"), (torch.full((2, 5), 2.0), "[2.0, 2.0]")):
            with pytest.raises(ValueError, match=r"frame_paddings must lie in \[0, 1\].*" + re.escape(got)):
                model(video, bad)
        ok = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
        assert torch.equal(model(video, ok), model(video, ok.float()))


def test_video_text_forward_skips_either_side():
    model = _random(LVT)
    ids, pads = torch.randint(0, 50, (3, 6)), torch.zeros(3, 6)
    with torch.no_grad():
        v, t = model(None, ids, pads)
        assert v is None and torch.equal(t, model.encode_text(ids, pads))
        v, t = model(_video())
        assert t is None and torch.equal(v, model.encode_video(_video()))
        with pytest.raises(ValueError, match="a video, text ids, or both"):
            model(None)
