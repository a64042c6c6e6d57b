"""Losses of both pretraining stages.

Legend: B clips on this rank, G clips on all ranks, D embedding width, N tokens.

Stage 1 is CLIP-style: a symmetric cross-entropy over the similarities of
every video with every caption, negatives gathered from all ranks. Each rank
scores its own B rows against all G columns (the "local" form: B x G logits
instead of G x G), and autograd carries the gradient of the gathered columns
back to the rank that owns them. Each rank's loss is the mean over its own
rows, so with equal batches (the trainer's) the ranks' mean is the full G x G
loss. Ranks may hold different batch sizes; their rows then weigh 1/B_r each.
Given caption keys, rows of one caption (on any rank) are not each other's
negatives: a caption repeated in a step is a false negative otherwise.

Stage 2 regresses the frozen stage-1 teacher: its tokens (token-wise) and its
pooled video embedding (global).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(x_BD: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Rows of every rank, concatenated in rank order, ``[G, D]``, and the index
    of this rank's first row in it. Differentiable: the gradient of each row
    returns to its rank. Without torch.distributed: ``(x_BD, 0)``."""
    rank, world = _rank_world()
    if world == 1:
        return x_BD, 0
    count = torch.tensor([x_BD.shape[0]], device=x_BD.device)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    most = max(counts)
    padded = F.pad(x_BD, (0, 0, 0, most - x_BD.shape[0]))  # all_gather needs equal shapes
    parts = _all_gather_autograd(padded).view(world, most, -1)
    rows = torch.cat([p[:c] for p, c in zip(parts, counts)])
    return rows, sum(counts[:rank])


def _all_gather_autograd(x: torch.Tensor) -> torch.Tensor:
    """``[world * len(x), ...]`` with a backward that returns each rank its rows'
    gradient: the functional collective of this torch (named
    ``all_gather_single_autograd`` since 2.12, ``all_gather_tensor_autograd``
    before)."""
    from torch.distributed import _functional_collectives as fc

    gather = getattr(fc, "all_gather_single_autograd", None) or fc.all_gather_tensor_autograd
    out = gather(x.contiguous(), 0, dist.group.WORLD)
    return out.wait() if isinstance(out, fc.AsyncCollectiveTensor) else out


def _check_embeddings(**named: torch.Tensor) -> None:
    shapes = {}
    for name, e in named.items():
        if not isinstance(e, torch.Tensor) or e.dim() != 2 or not e.dtype.is_floating_point:
            got = f"{tuple(e.shape)} {e.dtype}" if isinstance(e, torch.Tensor) else type(e).__name__
            raise ValueError(f"{name} must be a 2-D floating-point tensor [B, D]; got {got}")
        shapes[name] = tuple(e.shape)
    if len(set(shapes.values())) > 1:
        raise ValueError("embeddings must have the same shape [B, D]; got "
                         + ", ".join(f"{k} {v}" for k, v in shapes.items()))


def contrastive_loss(video_BD: torch.Tensor, text_BD: torch.Tensor, logit_scale: torch.Tensor | float,
                     caption_keys: torch.Tensor | None = None) -> dict:
    """Symmetric InfoNCE of paired, L2-normalized video and text embeddings.

    Row b of ``video_BD`` and of ``text_BD`` are a positive pair; every other
    caption (video) of the global batch is a negative. ``logit_scale`` is the
    inverse temperature (a scalar tensor or a number). Returns ``loss`` (the mean of the
    video-to-text and text-to-video cross-entropies, float32) and the two
    top-1 retrieval accuracies of this rank's rows (detached).

    ``caption_keys [B, K]`` (integers, e.g. the token ids with padding zeroed):
    rows with equal keys hold the same caption. Such pairs are not negatives of
    each other (their logits are left out of both cross-entropies), and
    retrieving either one counts as a hit. Without keys every other row is a
    negative, as in the paper; a caption repeated in a step then puts a floor
    of log 2 under its rows' loss and pushes apart the clips it describes.
    """
    _check_embeddings(video_BD=video_BD, text_BD=text_BD)
    v, t = video_BD.float(), text_BD.float()
    v_all, first = gather_rows(v)
    t_all, _ = gather_rows(t)
    labels = torch.arange(first, first + v.shape[0], device=v.device)
    same = _same_captions(caption_keys, v.shape[0], first) if caption_keys is not None else None
    with torch.autocast(v.device.type, enabled=False):  # bf16 autocast would undo the .float() above
        scale = logit_scale.float() if isinstance(logit_scale, torch.Tensor) else float(logit_scale)
        logits_vt = scale * v @ t_all.T  # [B, G]: this rank's videos against every caption
        logits_tv = scale * t @ v_all.T
    if same is not None:
        # A pair's own logit stays; the other rows of its caption leave the softmax.
        drop = same.clone()
        drop[torch.arange(len(labels), device=drop.device), labels] = False
        logits_vt = logits_vt.masked_fill(drop, float("-inf"))
        logits_tv = logits_tv.masked_fill(drop, float("-inf"))
    loss = 0.5 * (F.cross_entropy(logits_vt, labels) + F.cross_entropy(logits_tv, labels))
    with torch.no_grad():
        if same is None:
            acc_vt = (logits_vt.argmax(1) == labels).float().mean()
            acc_tv = (logits_tv.argmax(1) == labels).float().mean()
        else:  # any row of the right caption is a right answer (ties went to the first one)
            acc_vt = same.gather(1, logits_vt.argmax(1, keepdim=True)).float().mean()
            acc_tv = same.gather(1, logits_tv.argmax(1, keepdim=True)).float().mean()
    return {"loss": loss, "video_to_text_acc": acc_vt, "text_to_video_acc": acc_tv}


def _same_captions(keys_BK: torch.Tensor, rows: int, first: int) -> torch.Tensor:
    """``[B, G]`` bool: whether this rank's row b and global row g hold the same caption."""
    if not isinstance(keys_BK, torch.Tensor) or keys_BK.dim() != 2 or keys_BK.shape[0] != rows \
            or keys_BK.dtype.is_floating_point or keys_BK.dtype.is_complex:
        got = f"{tuple(keys_BK.shape)} {keys_BK.dtype}" if isinstance(keys_BK, torch.Tensor) else type(keys_BK).__name__
        raise ValueError(f"caption_keys must be an integer tensor [{rows}, K]; got {got}")
    with torch.no_grad():
        keys_all, _ = gather_rows(keys_BK.long())
        # One id per distinct caption: a [B, G] comparison of ids, not a
        # [B, G, K] one of tokens (67 MB a step at B=256, G=4096, K=64).
        _, ids = torch.unique(keys_all, dim=0, return_inverse=True)
        return ids[first : first + rows, None] == ids[None, :]


def token_distillation_loss(pred_BND: torch.Tensor, target_BND: torch.Tensor,
                            weight_BN: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per token (averaged over D), then the ``weight_BN``-weighted
    mean over tokens (all tokens equally without weights), float32."""
    if pred_BND.shape != target_BND.shape:
        raise ValueError(f"predicted tokens {tuple(pred_BND.shape)} and targets {tuple(target_BND.shape)} differ")
    err_BN = (pred_BND.float() - target_BND.float()).square().mean(-1)
    if weight_BN is None:
        return err_BN.mean()
    if weight_BN.shape != err_BN.shape:
        raise ValueError(f"weight_BN must be {tuple(err_BN.shape)}; got {tuple(weight_BN.shape)}")
    w = weight_BN.float()
    total = w.sum()
    # Only a zero total needs a guard (every term is then 0 too): a floor of 1
    # scaled down the mean of fractional weights that sum to less than 1.
    return (err_BN * w).sum() / torch.where(total > 0, total, torch.ones_like(total))


def global_distillation_loss(pred_BD: torch.Tensor, target_BD: torch.Tensor) -> torch.Tensor:
    """Cosine distance ``1 - cos(pred, target)`` averaged over clips, float32
    (the teacher's embedding is L2-normalized, so only the direction counts)."""
    _check_embeddings(pred_BD=pred_BD, target_BD=target_BD)
    return (1.0 - F.cosine_similarity(pred_BD.float(), target_BD.float(), dim=-1)).mean()


__all__ = ["contrastive_loss", "gather_rows", "global_distillation_loss", "token_distillation_loss"]
