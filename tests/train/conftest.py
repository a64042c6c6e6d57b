"""Tiny models and data for the trainer tests (made by the tests, never shipped)."""
from __future__ import annotations

import json

import pytest

from vpengine.model.config import EncoderConfig, TextConfig, VideoTextConfig

CAPTIONS = ["a dog runs", "a cat sleeps", "red car drives fast", "people dance", "the sea waves", "a bird sings"]


@pytest.fixture(scope="session")
def lvt_config() -> VideoTextConfig:
    """A tiny LvT: width 32, patch 8, one layer per stack."""
    enc = EncoderConfig(width=32, num_spatial_layers=1, num_temporal_layers=1, num_heads=2, mlp_dim=64,
                        patch_size=8, pos_emb_shape=(4, 4, 4))
    return VideoTextConfig(encoder=enc, num_auxiliary_layers=1, pooler_num_heads=2, pooler_hidden=128,
                           text=TextConfig(vocab_size=64, num_layers=1, num_heads=2, width=32, mlp_dim=64))


@pytest.fixture(scope="session")
def train_data(tmp_path_factory, lvt_config):
    """A folder with a tiny LvT checkpoint, a SentencePiece model, six VP9 clips,
    a broken file, and a manifest listing all seven with captions."""
    pytest.importorskip("av")
    spm = pytest.importorskip("sentencepiece")
    from vpengine.data.synthetic import encode_video, pattern_frames
    from vpengine.model.api import build, save

    d = tmp_path_factory.mktemp("train")
    save(build(lvt_config), d / "lvt.safetensors")
    (d / "corpus.txt").write_text("\n".join(CAPTIONS * 20))
    spm.SentencePieceTrainer.train(input=str(d / "corpus.txt"), model_prefix=str(d / "spm"), vocab_size=30,
                                   model_type="unigram", bos_id=-1, eos_id=1, pad_id=0, unk_id=2, minloglevel=2)
    rows = []
    for i, caption in enumerate(CAPTIONS):
        encode_video(d / f"v{i}.webm", pattern_frames(12, 48, 64, noise=10, seed=i), "libvpx-vp9", fps=10)
        rows.append({"path": f"v{i}.webm", "caption": caption})
    (d / "broken.mp4").write_text("not a video")
    rows.append({"path": "broken.mp4", "caption": "nothing"})
    (d / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d
