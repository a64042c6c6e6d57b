"""Tokenizer: official canonicalization, BOS only where the model has one,
truncation and right padding. SentencePiece models are trained in tmp."""
import json

import pytest
import torch

from vpengine.data.tokenizer import Tokenizer, canonicalize_text

CORPUS = [
    "a video of playing drums", "someone slicing an apple slowly", "hello world",
    "a person rides a red bicycle along a wet road", "two dogs run behind a bus",
    "the camera pans to show tall buildings and boats", "a bright orange sunset over the hills",
] * 20


def _train(tmp_path, bos_id):
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS))
    prefix = tmp_path / f"spm_bos{bos_id}"
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=60, model_type="unigram",
        bos_id=bos_id, eos_id=2, pad_id=0, unk_id=3, minloglevel=2,
    )
    return Tokenizer(f"{prefix}.model")


def test_canonicalize_examples():
    assert canonicalize_text("Hello, World!") == "hello world."
    assert canonicalize_text("") == "."
    assert canonicalize_text("  Someone   SLICING an apple; slowly...") == "someone slicing an apple slowly."
    assert canonicalize_text("tab\there\nnewline") == "tab here newline."


def test_canonicalize_matches_official(parity_dir):
    texts = json.loads((parity_dir / "lvt" / "texts.json").read_text())
    assert [canonicalize_text(t) for t in texts["texts"]] == texts["canonicalized"]


def test_bos_only_where_the_model_defines_one(tmp_path):
    with_bos = _train(tmp_path, bos_id=1)
    without = _train(tmp_path, bos_id=-1)
    ids, pads = with_bos(["Hello, World!", ""], max_length=24)
    assert ids.dtype == torch.int32 and pads.dtype == torch.float32 and ids.shape == (2, 24)
    assert ids[0, 0] == 1 and ids[1, 0] == 1
    expected = [1] + with_bos.sp.EncodeAsIds("hello world.")
    n = len(expected)
    assert ids[0, :n].tolist() == expected and pads[0, :n].sum() == 0 and pads[0, n:].eq(1).all()
    assert ids[0, n:].eq(0).all()
    assert without.bos_id == -1
    ids2, _ = without(["Hello, World!"], max_length=24)
    plain = without.sp.EncodeAsIds("hello world.")
    assert ids2[0, : len(plain)].tolist() == plain and ids2[0, len(plain):].eq(0).all()
    with pytest.raises(ValueError, match="defines no BOS"):
        without.encode("x", add_bos=True)
    no_bos, _ = with_bos(["hello world"], max_length=24, add_bos=False)
    assert no_bos[0, 0] != 1


def test_truncation_and_errors(tmp_path):
    tok = _train(tmp_path, bos_id=1)
    long_text = " ".join(CORPUS[:30])
    ids, pads = tok([long_text], max_length=64)
    assert ids.shape == (1, 64) and pads.sum() == 0  # truncated to exactly 64, no EOS
    assert ids[0].tolist() == tok.encode(long_text)[:64]
    with pytest.raises(FileNotFoundError):
        Tokenizer(tmp_path / "absent.model")
    bad = tmp_path / "bad.model"
    bad.write_text("nope")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        Tokenizer(bad)


def test_inputs_must_be_ordered_strings(tmp_path):
    tok = _train(tmp_path, bos_id=1)
    for bad in (b"a cat", {"a cat", "dog"}, {"a cat": 0}, (t for t in ["a cat"])):
        with pytest.raises(ValueError, match="ordered sequence of str"):
            tok(bad)
    with pytest.raises(ValueError, match="add_bos must be True, False or None"):
        tok("a cat", add_bos="no")
    ids, _ = tok(("a cat", "dog"), max_length=8)
    assert ids.shape == (2, 8)
    for bad in ("64", True, 2.5, 0):
        with pytest.raises(ValueError, match="max_length must be a positive int"):
            tok("a cat", max_length=bad)
    with pytest.raises(ValueError, match=r"texts\[1\] is not valid Unicode text"):
        tok(["a cat", "a\ud800b"])  # a lone surrogate, as a bad decode of UTF-16 leaves


def test_bad_model_paths_and_texts_say_which(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory; give the .model file in it"):
        Tokenizer(tmp_path)
    tok = _train(tmp_path, bos_id=1)
    with pytest.raises(ValueError, match=r"texts\[2\] must be a str; got int"):
        tok(["a", "b", 3])
