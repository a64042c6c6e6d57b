"""Text tokenizer of the LvT models (reference doc section 9): a SentencePiece
model given by path, the official canonicalization, BOS only where the model
defines one (or where asked), never EOS, truncation and right padding."""
from __future__ import annotations

import os
import re
import string

import numpy as np
import torch

TEXT_MAX_LEN = 64
_PUNCT = str.maketrans({c: " " for c in string.punctuation})
_SPACES = re.compile(r"\s+")


def canonicalize_text(text: str) -> str:
    """Official canonicalization: ASCII punctuation -> space, lowercase, collapse
    whitespace, strip, append ``.`` ("Hello, World!" -> "hello world.")."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str; got {type(text).__name__}")
    text = _SPACES.sub(" ", text.translate(_PUNCT).lower()).strip()
    return text + "."


def _check_flags(add_bos, canonicalize) -> None:
    if add_bos is not None and not isinstance(add_bos, bool):
        raise ValueError(f"add_bos must be True, False or None; got {add_bos!r}")
    # Only an exact bool: canonicalize=None read as false would skip the official
    # canonicalization silently, and every id (so every embedding) would change.
    if not isinstance(canonicalize, bool):
        raise ValueError(f"canonicalize must be True or False; got {canonicalize!r}")


class Tokenizer:
    """``Tokenizer(path)(texts) -> (ids int32 [N, L], paddings float32 [N, L])``."""

    def __init__(self, model_path: str | os.PathLike):
        import sentencepiece as spm

        path = os.fspath(model_path)
        if os.path.isdir(path):
            raise IsADirectoryError(f"SentencePiece model {path} is a directory; give the .model file in it")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"SentencePiece model not found: {path}")
        self.sp = spm.SentencePieceProcessor()
        try:
            ok = self.sp.Load(path)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{path} is not a SentencePiece model: {e}") from None
        if not ok:
            raise ValueError(f"{path} is not a SentencePiece model")
        self.path = path

    @property
    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    def encode(self, text: str, *, add_bos: bool | None = None, canonicalize: bool = True) -> list[int]:
        _check_flags(add_bos, canonicalize)
        if not isinstance(text, str):  # SentencePiece takes bytes and lists too: ids of another text, or nested
            raise ValueError(f"text must be a str; got {type(text).__name__}")
        if canonicalize:
            text = canonicalize_text(text)
        ids = list(self.sp.EncodeAsIds(text))
        if add_bos is None:
            add_bos = self.bos_id >= 0
        if add_bos:
            if self.bos_id < 0:
                raise ValueError(f"add_bos=True but the SentencePiece model {self.path} defines no BOS id")
            ids = [self.bos_id] + ids
        return ids

    def __call__(
        self,
        texts: str | list[str],
        max_length: int = TEXT_MAX_LEN,
        *,
        add_bos: bool | None = None,
        canonicalize: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        elif isinstance(texts, (bytes, bytearray, memoryview, set, frozenset, dict)) or not hasattr(texts, "__len__"):
            # A set's order changes between runs: rows would no longer line up with labels.
            # Bytes-like objects iterate as ints: the error would blame texts[0] for being an int.
            raise ValueError(f"texts must be a str or an ordered sequence of str (list, tuple, array); "
                             f"got {type(texts).__name__}")
        elif isinstance(texts, np.ndarray) and texts.ndim != 1:  # 0-d: no len(); 2-D: its rows are not texts
            raise ValueError(f"texts as an array must be 1-D, one text per element; got shape {texts.shape}")
        _check_flags(add_bos, canonicalize)
        if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length <= 0:
            raise ValueError(f"max_length must be a positive int; got {max_length!r}")
        ids = np.zeros((len(texts), max_length), dtype=np.int32)
        pads = np.ones((len(texts), max_length), dtype=np.float32)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"texts[{i}] must be a str; got {type(text).__name__}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:  # SentencePiece's own error does not say which text
                raise ValueError(f"texts[{i}] is not valid Unicode text ({e.reason} at character "
                                 f"{e.start}): {text[max(0, e.start - 20):e.start + 20]!r}") from None
            row = self.encode(text, add_bos=add_bos, canonicalize=canonicalize)[:max_length]
            ids[i, : len(row)] = row
            pads[i, : len(row)] = 0.0
        return torch.from_numpy(ids), torch.from_numpy(pads)
