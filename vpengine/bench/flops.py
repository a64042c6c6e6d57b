"""Every FLOP and byte count of the benchmarks, in one place.

FLOPs count multiply-adds of matrix products as 2 (the MFU convention); layer
norms, softmax, GELU and adds are left out (a few percent of the encoder).
Bytes are the minimum traffic an op must move between memory and the chip:
each input read once, each output written once; index tensors are int64.
A kernel's share of its roofline is then
``max(flops / peak_flops, bytes / copy_bandwidth) / measured_time``.
"""
from __future__ import annotations

# Backward of attention does five matrix products against the forward's two
# (recomputed QK^T, dV, dP, dQ, dK), so forward+backward = 3.5x forward
# (the FlashAttention accounting).
ATTN_FWD_BWD_FACTOR = 3.5
INDEX_BYTES = 8


def matmul_flops(m: int, n: int, k: int) -> float:
    return 2.0 * m * n * k


def encoder_flops(cfg, num_frames: int, height: int, width: int) -> float:
    """Forward FLOPs of one clip through a VideoPrism FactorizedEncoder.

    ``cfg`` has ``width`` (D), ``mlp_dim`` (M), ``num_spatial_layers``,
    ``num_temporal_layers`` and ``patch_size`` (P). Per token and layer: QKV
    (3 D^2), output projection (D^2) and MLP (2 D M) products; attention adds
    QK^T and PV (2 L D per token for sequences of length L: S tokens in the
    spatial stack, T frames in the temporal one). VideoPrism-B at 16x288x288
    gives about 0.97 TFLOP.
    """
    D, M, P = cfg.width, cfg.mlp_dim, cfg.patch_size
    if height % P or width % P:
        raise ValueError(f"frame size {height}x{width} is not a multiple of patch_size {P}")
    S = (height // P) * (width // P)
    N = num_frames * S
    per_token_layer = matmul_flops(1, 4 * D, D) + matmul_flops(1, 2 * M, D)
    patch = matmul_flops(N, D, P * P * 3)
    spatial = cfg.num_spatial_layers * (N * per_token_layer + 2 * matmul_flops(N, S, D))
    temporal = cfg.num_temporal_layers * (N * per_token_layer + 2 * matmul_flops(N, num_frames, D))
    return patch + spatial + temporal


def attention_flops(num_seqs: int, seq_len: int, num_heads: int, head_dim: int, mode: str) -> float:
    """QK^T and PV products of ``num_seqs`` sequences of ``seq_len`` tokens."""
    fwd = 2 * matmul_flops(num_seqs * num_heads * seq_len, seq_len, head_dim)
    return fwd * (ATTN_FWD_BWD_FACTOR if mode == "fwd+bwd" else 1.0)


def attention_bytes(num_seqs: int, seq_len: int, num_heads: int, head_dim: int, elt: int, mode: str) -> float:
    """Forward: read packed qkv, write out and the fp32 row log-sum-exp.
    Backward adds: read qkv, out, grad_out and lse, write the packed grad of qkv."""
    tok = num_seqs * seq_len * num_heads
    fwd = tok * head_dim * elt * 4 + tok * 4
    if mode != "fwd+bwd":
        return float(fwd)
    bwd = tok * head_dim * elt * (3 + 1 + 1 + 3) + tok * 4
    return float(fwd + bwd)


def token_gather_bytes(B: int, N: int, K: int, D: int, elt: int) -> float:
    """Read the K kept rows of each sample, write them packed; read keep_idx."""
    return float(2 * B * K * D * elt + B * K * INDEX_BYTES)


def token_scatter_bytes(B: int, N: int, K: int, D: int, elt: int) -> float:
    """Read the K kept rows and the fill row, write all N rows; read keep_idx."""
    return float(B * K * D * elt + B * N * D * elt + D * elt + B * K * INDEX_BYTES)


def token_shuffle_bytes(B: int, N: int, D: int, elt: int, with_pos: bool = True) -> float:
    """Read and write every row, read the position table once and perm."""
    return float(2 * B * N * D * elt + (N * D * elt if with_pos else 0) + B * N * INDEX_BYTES)


def decoder_input_bytes(B: int, N: int, K: int, D: int, elt: int) -> float:
    """Scatter + shuffle + position add in one pass: read the kept rows, the
    mask token, the position table, keep_idx and perm; write all N rows."""
    return float(B * K * D * elt + B * N * D * elt + N * D * elt + D * elt + B * (K + N) * INDEX_BYTES)


def patchify_bytes(B: int, T: int, H: int, W: int, elt: int) -> float:
    """Read uint8 pixels once, write the patch vectors in the model dtype."""
    return float(B * T * H * W * 3 * (1 + elt))
