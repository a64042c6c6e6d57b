"""Texts a user would pass, end to end: the tokenizer against the official
rules written out independently here (reference doc section 9), its refusals
of misread arguments, and the text tower on the tokenized rows (padding must
not leak: a text embeds the same alone or in any batch)."""
import string
import sys

import numpy as np
import pytest
import torch

from vpengine.data.tokenizer import canonicalize_text
from vpengine.model.config import TextConfig
from vpengine.model.text import TextEncoder

from test_tokenizer import CORPUS, _train  # the same tiny SentencePiece model

HELD_OUT = [
    "", " ", "   \t\n\r\x0b\x0c ", "!!!???...", "...---...", "Hello, World!", "MiXeD CaSe TeXt",
    "line one\nline two\tthree", "Café déjà vu, naïve résumé", "e\u0301cole", "日本語のテキスト",
    "一只猫在跳舞", "😀 a dog 👍🏽 runs 🏃‍♀️", "שלום עולם", "مرحبا بالعالم", "a\u200bcat\u200dzero\ufeffwidth",
    "non\u00a0breaking\u2009thin\u3000ideographic", "Ｆｕｌｌｗｉｄｔｈ，ｃｏｍｍａ", "İstanbul ΣΟΦΙΑ straße",
    "tab\u2028line\u2029para\x1cfs\x85nel", "a" * 500, " ".join(CORPUS[:40]), "x",
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("spm"), bos_id=1)


def _official_canonical(text):
    """The documented rule, character by character: ASCII punctuation
    (string.punctuation) -> space, lowercase, whitespace runs -> one space,
    strip, append '.'."""
    spaced = "".join(" " if c in string.punctuation else c for c in text).lower()
    return " ".join(spaced.split()) + "."


def _official_row(sp, text, max_length):
    ids = ([sp.bos_id()] if sp.bos_id() >= 0 else []) + list(sp.EncodeAsIds(_official_canonical(text)))
    ids = ids[:max_length]
    n = len(ids)
    return ids + [0] * (max_length - n), [0.0] * n + [1.0] * (max_length - n)


def test_canonicalization_on_every_code_point():
    chars = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    for chunk in range(0, len(chars), 4096):
        text = "".join(f"Ab{c}cD{c}{c} e" for c in chars[chunk:chunk + 4096])
        assert canonicalize_text(text) == _official_canonical(text)
    for text in HELD_OUT:
        assert canonicalize_text(text) == _official_canonical(text), repr(text)


@pytest.mark.parametrize("max_length", [64, 7, 1])
def test_held_out_texts_tokenize_as_officially(tok, max_length):
    ids, pads = tok(HELD_OUT, max_length=max_length)
    assert ids.dtype == torch.int32 and pads.dtype == torch.float32
    assert ids.shape == pads.shape == (len(HELD_OUT), max_length)
    for i, text in enumerate(HELD_OUT):
        want_ids, want_pads = _official_row(tok.sp, text, max_length)
        assert ids[i].tolist() == want_ids, repr(text)
        assert pads[i].tolist() == want_pads, repr(text)
    long_row = HELD_OUT.index(" ".join(CORPUS[:40]))
    assert pads[long_row].sum() == 0 and ids[long_row, 0] == tok.bos_id  # truncated: first ids kept, no EOS


def test_one_text_list_tuple_and_array_agree(tok):
    ids, pads = tok(HELD_OUT)
    for texts in (tuple(HELD_OUT), np.array(HELD_OUT), np.array(HELD_OUT, dtype=object)):
        got = tok(texts)
        assert torch.equal(got[0], ids) and torch.equal(got[1], pads)
    for i in (0, 5, 12):
        for one in (HELD_OUT[i], [HELD_OUT[i]], (HELD_OUT[i],), np.array([HELD_OUT[i]])):
            got = tok(one)
            assert torch.equal(got[0], ids[i:i + 1]) and torch.equal(got[1], pads[i:i + 1])
    empty = tok([])
    assert empty[0].shape == empty[1].shape == (0, 64)


def test_misread_arguments_are_refused(tok):
    # canonicalize=None used to be read as False: raw text, other ids, other embeddings.
    for bad in (None, 0, "yes", np.bool_(True)):
        with pytest.raises(ValueError, match="canonicalize must be True or False"):
            tok(["Hello, World!"], canonicalize=bad)
        with pytest.raises(ValueError, match="canonicalize must be True or False"):
            tok.encode("Hello, World!", canonicalize=bad)
    # encode() checked add_bos only through __call__: "no" added a BOS, 0 dropped it.
    for bad in ("no", 0, 1):
        with pytest.raises(ValueError, match="add_bos must be True, False or None"):
            tok.encode("a cat", add_bos=bad)
    # Without canonicalization SentencePiece took bytes and lists: a nested list of ids.
    for bad in (b"a cat", ["a", "cat"], None, 3):
        with pytest.raises(ValueError, match="text must be a str; got"):
            tok.encode(bad, canonicalize=False)
        with pytest.raises(ValueError, match="text must be a str; got"):
            tok.encode(bad)


def test_bad_containers_are_named(tok):
    # Bytes-like containers iterate as ints; the error blamed texts[0] for being one.
    for bad in (b"a cat", bytearray(b"a cat"), memoryview(b"a cat"), None, 3):
        with pytest.raises(ValueError, match="ordered sequence of str"):
            tok(bad)
    # A 0-d array has no len() (a bare TypeError); a 2-D array's rows are not texts.
    for bad in (np.array("a cat"), np.array([["a cat", "dog"]])):
        with pytest.raises(ValueError, match=r"texts as an array must be 1-D.*shape"):
            tok(bad)
    for texts, i, kind in ((["a", None], 1, "NoneType"), (np.array([b"a"]), 0, "bytes_"), (["a", "b", 2.5], 2, "float")):
        with pytest.raises(ValueError, match=rf"texts\[{i}\] must be a str; got {kind}"):
            tok(texts)


def _tower(vocab_size, seed=0):
    torch.manual_seed(seed)
    enc = TextEncoder(TextConfig(vocab_size=vocab_size, num_layers=2, num_heads=4, width=32, mlp_dim=128)).eval()
    with torch.no_grad():  # non-zero LN scales, biases and class token: a leak has something to carry
        for p in enc.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return enc


def test_a_text_embeds_the_same_alone_or_batched(tok):
    enc = _tower(tok.vocab_size)
    ids, pads = tok(HELD_OUT)
    with torch.no_grad():
        batch = enc(ids, pads)[:, -1]
        for i in range(len(HELD_OUT)):
            alone = enc(ids[i:i + 1], pads[i:i + 1])[:, -1]
            assert torch.equal(alone, batch[i:i + 1]), repr(HELD_OUT[i])
        # Whatever sits in the padded slots, and however far the padding runs, is never seen.
        junk = ids.masked_fill(pads > 0.5, tok.vocab_size - 1)
        assert torch.equal(enc(junk, pads)[:, -1], batch)
        longer = torch.cat([ids, torch.zeros(len(HELD_OUT), 9, dtype=ids.dtype)], 1)
        longer_pads = torch.cat([pads, torch.ones(len(HELD_OUT), 9)], 1)
        torch.testing.assert_close(enc(longer, longer_pads)[:, -1], batch, rtol=0, atol=1e-6)


def test_no_token_and_full_length_rows(tmp_path):
    plain = _train(tmp_path, bos_id=-1)
    enc = _tower(plain.vocab_size)
    ids, pads = plain(["", " ".join(CORPUS[:40])], max_length=16, canonicalize=False)
    assert pads[0].eq(1).all() and ids[0].eq(0).all()  # no BOS, nothing to encode: every slot padded
    assert pads[1].eq(0).all()  # exactly max_length ids
    with torch.no_grad():
        feats = enc(ids, pads)
        cls_only = enc(ids[:1, :0], pads[:1, :0])  # the class token alone
    assert feats.isfinite().all()
    torch.testing.assert_close(feats[:1, -1], cls_only[:, -1], rtol=0, atol=1e-6)


def test_tokenizer_of_a_larger_vocabulary_is_a_clear_error(tok):
    enc = _tower(50)
    ids, pads = tok([" ".join(CORPUS[:40])])
    assert int(ids.max()) >= 50  # the test needs an id past the tower's table
    want = r"text ids must lie in \[0, 50\), the model.s text vocabulary.*tokenizer of another vocabulary"
    with torch.no_grad(), pytest.raises(ValueError, match=want):
        enc(ids, pads)
