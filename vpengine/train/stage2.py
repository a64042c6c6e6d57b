"""Stage 2: masked video modeling with global and token-wise distillation
from the frozen stage-1 model, with token shuffling.

Legend: B clips, T frames, S tokens per frame, N = T*S tokens, K visible
tokens, D width.

One step, as the paper describes it:

1. The frozen stage-1 LvT model (the teacher) encodes the whole clip: its
   encoder tokens ``[B, N, D]`` are the token-wise targets and its pooled,
   L2-normalized video embedding ``[B, D]`` the global target.
2. A tube mask hides ``mask_ratio`` of the spatial positions on every frame;
   the student encoder (initialized from the teacher's encoder) sees only the
   K visible patches (:meth:`VideoEncoder.forward_visible`).
3. The decoder input is the student's K tokens scattered back among N - K
   learned mask tokens and then shuffled by a random permutation; positional
   embeddings are added AFTER the shuffle (``ops.decoder_input``, one pass).
   Position i of the decoder therefore stands for location i of the clip,
   while the token sitting there is some other one: the decoder cannot copy a
   visible token's teacher target through its position, it has to find which
   token belongs where from their contents.
4. The decoder (joint attention over all N tokens) output at position i
   predicts the teacher's token i (a linear head); an attention pooler over
   the decoder output predicts the teacher's global embedding.

Loss = ``token_weight * MSE(tokens) + global_weight * (1 - cos(global))``;
``token_loss_on="masked"`` restricts the token term to the masked locations.
Tokens of padded frames never count. The paper gives no code: the loss forms,
decoder depth and mask ratio defaults here are this project's choices,
exposed as arguments.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import ops
from ..model.api import _init_weights
from ..model.encoder import VideoEncoder, resize_table
from ..model.layers import LayerNorm, SpaceTimeStack, l2_normalize
from ..model.video_text import AttentionPooler, VideoTextModel
from .losses import global_distillation_loss, token_distillation_loss
from .masking import num_kept, tube_mask


class DecoderPositions(nn.Module):
    """Learned decoder positions ``[N, D]`` for location ``t*S + s``: a spatial
    table plus a temporal one, resized to the clip as the encoder's are."""

    def __init__(self, pos_emb_shape: tuple[int, int, int], dim: int):
        super().__init__()
        T0, H0, W0 = pos_emb_shape
        self.shape = (T0, H0, W0)
        self.spatial = nn.Parameter(torch.zeros(H0 * W0, dim))
        self.temporal = nn.Parameter(torch.zeros(T0, dim))

    def forward(self, num_frames: int, grid: tuple[int, int]) -> torch.Tensor:
        T0, H0, W0 = self.shape
        D = self.spatial.shape[1]
        s = resize_table(self.spatial.view(H0, W0, D), grid).reshape(-1, D)
        t = resize_table(self.temporal.view(T0, 1, D), (num_frames, 1)).reshape(-1, D)
        return (t[:, None, :] + s[None, :, :]).reshape(-1, D)


class MaskedDistillation(nn.Module):
    """Student encoder + shuffled-token decoder, distilled from a frozen LvT teacher.

    teacher: the stage-1 ``VideoTextModel``; it is frozen here (no gradients,
        always in eval mode).
    decoder_layers: depth of the decoder (joint attention over all tokens).
    mask_ratio: share of spatial positions hidden on every frame (tube mask).
    token_loss_on: ``"all"`` tokens or only the ``"masked"`` ones.
    seed: initialization of the new parts (decoder, heads, mask token).
    """

    def __init__(self, teacher: VideoTextModel, *, decoder_layers: int = 4, mask_ratio: float = 0.8,
                 token_loss_on: str = "all", token_weight: float = 1.0, global_weight: float = 1.0,
                 seed: int | None = 0):
        super().__init__()
        if not isinstance(teacher, VideoTextModel):
            raise ValueError(f"the stage-2 teacher must be a stage-1 video-text (LvT) model; got {type(teacher).__name__}")
        if token_loss_on not in ("all", "masked"):
            raise ValueError(f"token_loss_on must be 'all' or 'masked'; got {token_loss_on!r}")
        if isinstance(decoder_layers, bool) or not isinstance(decoder_layers, int) or decoder_layers < 1:
            raise ValueError(f"decoder_layers must be a positive int; got {decoder_layers!r}")
        for name, w in (("token_weight", token_weight), ("global_weight", global_weight)):
            if not (isinstance(w, (int, float)) and not isinstance(w, bool) and 0 <= w < math.inf):
                raise ValueError(f"{name} must be a finite number >= 0; got {w!r}")
        c = teacher.config.encoder
        # Only a ratio of 1 keeps nothing of every frame. The position tables'
        # grid is no bound: frames of any size are trained (tables resized), so
        # what a ratio keeps is checked against each video in forward().
        num_kept(1, mask_ratio)  # validates the ratio
        if float(mask_ratio) == 1.0:
            raise ValueError(f"mask_ratio {mask_ratio!r} keeps no patch of any frame: the student would see nothing")
        if token_loss_on == "masked" and float(mask_ratio) == 0.0:  # as TrainConfig refuses it
            raise ValueError("token_loss_on='masked' with mask_ratio 0 leaves no token to predict")
        D = c.width
        self.mask_ratio, self.token_loss_on = float(mask_ratio), token_loss_on
        self.token_weight, self.global_weight = float(token_weight), float(global_weight)
        self.teacher = teacher.eval().requires_grad_(False)
        self.student = VideoEncoder(c)
        self.mask_token = nn.Parameter(torch.zeros(D))
        self.decoder_pos = DecoderPositions(c.pos_emb_shape, D)
        self.decoder = SpaceTimeStack(decoder_layers, D, c.num_heads, c.mlp_dim, c.atten_logit_cap)
        self.decoder_ln = LayerNorm(D)
        self.token_head = nn.Linear(D, D)
        self.global_head = AttentionPooler(D, teacher.config.pooler_num_heads, teacher.config.pooler_hidden)
        # One generator for every new part: a generator per part seeded alike
        # drew the same numbers for each (the mask token equalled the
        # decoder's first position and the global head's query).
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        for part in (self.decoder_pos, self.decoder, self.decoder_ln, self.token_head, self.global_head):
            _init_weights(part, None, generator=g)
        with torch.no_grad():
            nn.init.normal_(self.mask_token, std=0.02, generator=g)
        # The paper starts stage 2 from the stage-1 encoder.
        self.student.load_state_dict(teacher.encoder.state_dict())

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen: eval mode whatever the rest is in
        return self

    @torch.no_grad()
    def targets(self, video: torch.Tensor, frame_paddings: torch.Tensor | None = None):
        """The teacher's tokens ``[B, N, D]`` and L2-normalized embedding ``[B, D]``."""
        tokens, _, _, pooled = self.teacher.video_features(video, frame_paddings)
        return tokens, l2_normalize(pooled)

    def forward(self, video: torch.Tensor, frame_paddings: torch.Tensor | None = None, *,
                generator: torch.Generator | None = None) -> dict:
        """``video [B, T, H, W, 3]`` -> ``{"loss", "token_loss", "global_loss", "global_cos"}``;
        the mask and the shuffle are drawn from ``generator`` (or the device's default)."""
        target_tokens, target_global = self.targets(video, frame_paddings)
        B, N, D = target_tokens.shape
        T = video.shape[1]
        P = self.student.config.patch_size
        grid = (video.shape[2] // P, video.shape[3] // P)
        S = N // T
        if num_kept(S, self.mask_ratio) < 1:
            raise ValueError(f"mask_ratio {self.mask_ratio} keeps no patch of this video's {S} per frame "
                             f"({video.shape[2]}x{video.shape[3]} frames, patch {P}): the student would see nothing")
        if self.token_loss_on == "masked" and num_kept(S, self.mask_ratio) == S:
            # Every token weight would be 0: a token loss of 0, the run silently trained on the global term alone.
            raise ValueError(f"mask_ratio {self.mask_ratio} masks no patch of this video's {S} per frame "
                             f"({video.shape[2]}x{video.shape[3]} frames, patch {P}): token_loss_on='masked' "
                             "would have no token to predict")
        mask = tube_mask(B, T, S, self.mask_ratio, generator=generator, device=video.device)
        visible = self.student.forward_visible(video, mask.keep_idx, frame_paddings)  # [B, K, D]
        dt = visible.dtype
        x = ops.decoder_input(visible, mask.keep_idx, self.mask_token.to(dt), mask.perm,
                              self.decoder_pos(T, grid).to(dt))
        x = self.decoder_ln(self.decoder(x.view(B, 1, N, D), "space")).view(B, N, D)
        pred_tokens = self.token_head(x)  # position i predicts location i
        pred_global = self.global_head(x)
        weight = self._token_weights(mask.keep_idx, frame_paddings, B, T, S, video.device)
        token_loss = token_distillation_loss(pred_tokens, target_tokens, weight)
        global_loss = global_distillation_loss(pred_global, target_global)
        loss = self.token_weight * token_loss + self.global_weight * global_loss
        return {"loss": loss, "token_loss": token_loss.detach(), "global_loss": global_loss.detach(),
                "global_cos": 1.0 - global_loss.detach()}

    def _token_weights(self, keep_idx, frame_paddings, B, T, S, device):
        w = None
        if frame_paddings is not None:
            w = (1.0 - frame_paddings.float()).to(device).repeat_interleave(S, dim=1)  # [B, N]
        if self.token_loss_on == "masked":
            masked = torch.ones(B, T * S, device=device).scatter_(1, keep_idx, 0.0)
            w = masked if w is None else w * masked
        return w

    def exported(self) -> VideoEncoder:
        """The trained student encoder (what :func:`vpengine.save` writes)."""
        return self.student


__all__ = ["DecoderPositions", "MaskedDistillation"]
