"""Token masking for stage-2 masked distillation: which tokens the student
encoder sees, and the order in which the decoder sees all of them.

Legend: B batch, T frames, S tokens per frame, N = T*S tokens (frame-major:
token n = t*S + s, the encoder's [B, T*S, D] order), K kept (visible) tokens.

Both maskers return a :class:`TokenMask` ``(keep_idx, perm)``:

* ``keep_idx [B, K]`` int64: the visible tokens of each sample, distinct and
  sorted ascending, with ``K = round(N * (1 - mask_ratio))`` (tube masking:
  ``round(S * (1 - mask_ratio))`` per frame). The student runs on
  ``ops.token_gather(tokens_BND, keep_idx)``.
* ``perm [B, N]`` int64: a uniformly random permutation per sample,
  independent of the mask. ``perm[b, i]`` is the token (index in [0, N)) that
  the decoder sees at position ``i``:

  - ``ops.token_shuffle(x_BND, perm, pos_emb)[b, i] = x[b, perm[b, i]] + pos_emb[i]``:
    the positional embedding belongs to the shuffled position ``i``, not to the
    token, so the decoder cannot tell visible tokens apart by position;
  - ``ops.decoder_input(enc_kept_BKD, keep_idx, mask_token, perm, pos_emb)``
    is the same shuffle applied to the full sequence with ``mask_token`` on
    every masked token (``token_scatter`` + ``token_shuffle`` in one pass);
  - ``ops.token_unshuffle(y_BND, perm)[b, n]`` is the row at the position
    where token ``n`` went: the inverse of the shuffle. The stage-2 trainer
    does not need it: the decoder's position ``i`` carries the embedding of
    location ``i`` and predicts the teacher's token ``i``
    (:mod:`vpengine.train.stage2`).

Randomness is drawn on ``device`` from ``generator`` (or the default generator
of that device): the same seed gives the same masks on the same device type.
Everything stays on the device; nothing syncs with the host.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class TokenMask(NamedTuple):
    keep_idx: torch.Tensor  # [B, K] int64, sorted ascending, distinct
    perm: torch.Tensor  # [B, N] int64, a permutation per sample (decoder order)


def num_kept(num_tokens: int, mask_ratio: float) -> int:
    """``round(num_tokens * (1 - mask_ratio))``: tokens kept out of ``num_tokens``."""
    try:  # numbers, NumPy scalars, 0-d arrays and tensors; not "0.5" or True
        ratio = None if isinstance(mask_ratio, (str, bytes, bool)) else float(mask_ratio)
    except (TypeError, ValueError):
        ratio = None
    if ratio is None or not 0.0 <= ratio <= 1.0:  # NaN fails the comparison
        raise ValueError(f"mask_ratio must be a number in [0, 1]; got {mask_ratio!r}")
    return int(round(num_tokens * (1.0 - ratio)))


def _device(generator: torch.Generator | None, device) -> torch.device:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None; got {generator!r}")
    if device is None:
        return generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but device is {device}")
    return device


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int; got {value!r}")


def _random_subset(batch_size: int, n: int, k: int, generator, device) -> torch.Tensor:
    """``[B, k]`` sorted distinct indices in [0, n), uniform over subsets."""
    noise_Bn = torch.rand((batch_size, n), generator=generator, device=device)
    return noise_Bn.argsort(dim=1, stable=True)[:, :k].sort(dim=1).values


def _random_perm(batch_size: int, n: int, generator, device) -> torch.Tensor:
    noise_Bn = torch.rand((batch_size, n), generator=generator, device=device)
    return noise_Bn.argsort(dim=1, stable=True)


def random_mask(
    batch_size: int,
    num_tokens: int,
    mask_ratio: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> TokenMask:
    """Mask ``mask_ratio`` of the ``num_tokens`` tokens of each sample uniformly at random.

    Returns ``TokenMask(keep_idx [B, K], perm [B, N])`` with ``K = round(N * (1 - mask_ratio))``.
    """
    _check_sizes(batch_size=batch_size, num_tokens=num_tokens)
    k = num_kept(num_tokens, mask_ratio)
    device = _device(generator, device)
    keep_idx_BK = _random_subset(batch_size, num_tokens, k, generator, device)
    return TokenMask(keep_idx_BK, _random_perm(batch_size, num_tokens, generator, device))


def tube_mask(
    batch_size: int,
    num_frames: int,
    tokens_per_frame: int,
    mask_ratio: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> TokenMask:
    """Tube masking: one random spatial mask per sample, the same on every frame.

    Keeps ``Ks = round(S * (1 - mask_ratio))`` spatial positions, so
    ``keep_idx [B, T*Ks]`` holds ``t*S + s`` for every frame t and kept s
    (sorted, frame-major), and ``perm [B, T*S]`` is a permutation of all tokens.
    """
    _check_sizes(batch_size=batch_size, num_frames=num_frames, tokens_per_frame=tokens_per_frame)
    ks = num_kept(tokens_per_frame, mask_ratio)
    device = _device(generator, device)
    spatial_BK = _random_subset(batch_size, tokens_per_frame, ks, generator, device)
    frame_T = torch.arange(num_frames, device=device) * tokens_per_frame
    keep_idx_BTK = frame_T[None, :, None] + spatial_BK[:, None, :]
    keep_idx_BK = keep_idx_BTK.reshape(batch_size, num_frames * ks)
    return TokenMask(keep_idx_BK, _random_perm(batch_size, num_frames * tokens_per_frame, generator, device))


__all__ = ["TokenMask", "num_kept", "random_mask", "tube_mask"]
