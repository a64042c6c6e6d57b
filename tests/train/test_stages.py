"""Stage 1 and stage 2 task modules: the student's visible-token encoder, the
frozen teacher, and both losses going down on a fixed batch."""
import math

import pytest
import torch

from vpengine.model.api import build
from vpengine.model.config import EncoderConfig
from vpengine.train import ContrastiveTask, MaskedDistillation, tube_mask


def _video(B=2, T=3, H=24, W=32, seed=0):
    return torch.rand(B, T, H, W, 3, generator=torch.Generator().manual_seed(seed))


def _encoder():
    cfg = EncoderConfig(width=32, num_spatial_layers=2, num_temporal_layers=1, num_heads=2, mlp_dim=64,
                        patch_size=8, pos_emb_shape=(4, 2, 2))
    return build(cfg)


def test_forward_visible_with_every_token_equals_forward():
    enc, video = _encoder(), _video()
    keep = tube_mask(2, 3, 12, 0.0, generator=torch.Generator().manual_seed(0)).keep_idx
    pads = torch.tensor([[0.0, 0, 1], [0, 0, 0]])
    assert torch.equal(enc.forward_visible(video, keep, pads), enc(video, pads))


def test_forward_visible_ignores_masked_patches():
    """Kept tokens depend on the kept patches only, and equal the encoder run on
    a video holding just those patch columns (positions kept)."""
    enc, video = _encoder(), _video()
    keep = tube_mask(2, 3, 12, 0.5, generator=torch.Generator().manual_seed(1)).keep_idx  # 6 of 12 per frame
    out = enc.forward_visible(video, keep)
    assert out.shape == (2, 18, 32)
    noisy = video.clone()
    P = 8
    for b in range(2):
        kept = set(keep[b, :6].tolist())
        for s in set(range(12)) - kept:  # scribble over every masked patch
            r, c = divmod(s, 4)
            noisy[b, :, r * P:(r + 1) * P, c * P:(c + 1) * P] = torch.rand(3, P, P, 3)
    assert torch.equal(enc.forward_visible(noisy, keep), out)


def test_forward_visible_refuses_a_non_tube_mask():
    enc, video = _encoder(), _video()
    keep = tube_mask(2, 3, 12, 0.5, generator=torch.Generator().manual_seed(1)).keep_idx
    bad = keep.clone()
    bad[0, 7] = (bad[0, 7] + 1) % 12 + 12  # frame 1 holds another position than frame 0
    with pytest.raises(ValueError, match="not a tube mask"):
        enc.forward_visible(video, bad)
    with pytest.raises(ValueError, match="a tube mask of this video"):
        enc.forward_visible(video, keep[:, :17])
    with pytest.raises(ValueError, match="int64"):
        enc.forward_visible(video, keep.int())


def _steps(task, batch_fn, n=40, lr=1e-3):
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(n):
        out = batch_fn()
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    return losses, out


def test_stage1_learns_pairs(lvt_config):
    torch.manual_seed(0)
    task = ContrastiveTask(build(lvt_config, seed=0).train())
    video = _video(4, 2, 16, 16, seed=3)
    ids = torch.randint(1, 64, (4, 6), generator=torch.Generator().manual_seed(4))
    pads = torch.zeros(4, 6)
    losses, out = _steps(task, lambda: task(video, ids, pads), n=100)
    assert losses[0] > 1.2 and losses[-1] < 0.3, losses[::10]
    assert float(out["video_to_text_acc"]) == 1.0
    with pytest.raises(ValueError, match="one caption per clip"):
        task(video, ids[:3], pads[:3])


def test_stage1_temperature_at_its_cap_keeps_its_gradient(lvt_config):
    """AdamW's momentum can carry the log scale past log(100); it must come back
    to the cap and still receive a gradient, not sit above it, frozen."""
    task = ContrastiveTask(build(lvt_config, seed=0).train())
    with torch.no_grad():
        task.log_logit_scale.fill_(math.log(100.0) + 0.3)
    ids = torch.randint(1, 64, (3, 5), generator=torch.Generator().manual_seed(1))
    out = task(_video(3, 2, 16, 16, seed=2), ids, torch.zeros(3, 5))
    out["loss"].backward()
    assert float(out["temperature"]) == pytest.approx(0.01)
    assert float(task.log_logit_scale) <= math.log(100.0) + 1e-6
    assert float(task.log_logit_scale.grad) != 0.0


def test_stage1_clips_of_one_caption_are_not_each_others_negatives(lvt_config):
    """Clips 0 and 2 have the same caption (padding may hide other ids): its
    other clip is left out of each one's negatives, in both directions."""
    task = ContrastiveTask(build(lvt_config, seed=0).train())
    ids = torch.tensor([[5, 6, 0], [5, 6, 7], [5, 6, 9], [8, 0, 0]])
    pads = torch.tensor([[0, 0, 1], [0, 0, 0], [0, 0, 1], [0, 1, 1.0]])
    video = _video(4, 2, 16, 16, seed=5)
    out = task(video, ids, pads)
    v, t = task.model.encode_video(video), task.model.encode_text(ids, pads)
    sim = task.logit_scale() * v @ t.T
    negatives = [[0, 1, 3], [0, 1, 2, 3], [1, 2, 3], [0, 1, 2, 3]]
    want = torch.stack([0.5 * (sim[i, n].logsumexp(0) + sim[n, i].logsumexp(0)) - sim[i, i]
                        for i, n in enumerate(negatives)]).mean()
    torch.testing.assert_close(out["loss"], want, rtol=1e-5, atol=1e-6)


def test_stage2_teacher_frozen_student_from_teacher_and_loss_falls(lvt_config):
    teacher = build(lvt_config, seed=0)
    task = MaskedDistillation(teacher, decoder_layers=1, mask_ratio=0.5).train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    for k, v in teacher.encoder.state_dict().items():
        assert torch.equal(task.student.state_dict()[k], v)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    video, g = _video(2, 2, 16, 16, seed=5), torch.Generator().manual_seed(0)
    losses, out = _steps(task, lambda: task(video, generator=g), n=30)
    assert losses[-1] < 0.2 * losses[0], losses[::5]
    assert set(out) == {"loss", "token_loss", "global_loss", "global_cos"}
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_stage2_new_parts_are_independent_draws(lvt_config):
    """The decoder, heads, positions and mask token draw from one generator:
    one generator per part, seeded alike, repeated the same numbers in each."""
    task = MaskedDistillation(build(lvt_config, seed=0), decoder_layers=1, seed=3)
    again = MaskedDistillation(build(lvt_config, seed=0), decoder_layers=1, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(task.state_dict().values(), again.state_dict().values()))
    new = [(n, p.detach().flatten()[:4]) for n, p in task.named_parameters()
           if not n.startswith(("student.", "teacher.")) and p.numel() >= 4 and bool(p.abs().sum() > 0)]
    assert len(new) >= 5, [n for n, _ in new]
    for i, (name, head) in enumerate(new):
        for other, head2 in new[:i]:
            assert not torch.equal(head, head2), f"{name} starts with the same draws as {other}"


def test_stage2_masks_come_from_the_generator(lvt_config):
    task = MaskedDistillation(build(lvt_config, seed=0), decoder_layers=1, mask_ratio=0.75)
    video = _video(2, 2, 16, 16)
    a = task(video, generator=torch.Generator().manual_seed(7))["loss"]
    b = task(video, generator=torch.Generator().manual_seed(7))["loss"]
    c = task(video, generator=torch.Generator().manual_seed(8))["loss"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_stage2_masked_only_and_padded_frames(lvt_config):
    task = MaskedDistillation(build(lvt_config, seed=0), decoder_layers=1, mask_ratio=0.5,
                              token_loss_on="masked")
    keep = torch.tensor([[0, 2, 4, 6], [1, 3, 5, 7]])  # T=2, S=4: positions {0, 2} and {1, 3}
    w = task._token_weights(keep, torch.tensor([[0.0, 1.0], [0.0, 0.0]]), 2, 2, 4, torch.device("cpu"))
    assert w.tolist() == [[0, 1, 0, 1, 0, 0, 0, 0], [1, 0, 1, 0, 1, 0, 1, 0]]


def test_stage2_bf16_autocast_runs_and_backprops(lvt_config):
    task = MaskedDistillation(build(lvt_config, seed=0), decoder_layers=1).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = task((_video(2, 2, 16, 16) * 255).to(torch.uint8), generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and task.mask_token.grad is not None


def test_bad_task_arguments(lvt_config):
    enc_only = _encoder()
    with pytest.raises(ValueError, match="video-text"):
        ContrastiveTask(enc_only)
    with pytest.raises(ValueError, match="teacher must be"):
        MaskedDistillation(enc_only)
    lvt = build(lvt_config)
    with pytest.raises(ValueError, match="mask_ratio"):
        MaskedDistillation(lvt, mask_ratio=1.5)
    with pytest.raises(ValueError, match="token_loss_on"):
        MaskedDistillation(lvt, token_loss_on="visible")
    with pytest.raises(ValueError, match="keeps no patch of any frame"):
        MaskedDistillation(lvt, mask_ratio=1.0)
    with pytest.raises(ValueError, match="token_weight must be a finite number"):
        MaskedDistillation(lvt, token_weight=float("inf"))
    task = MaskedDistillation(lvt, mask_ratio=0.9)  # keeps 2 of 16; of a 16x16 video's 4, none
    with pytest.raises(ValueError, match="keeps no patch of this video's 4 per frame"):
        task(_video(H=16, W=16))


def test_stage2_mask_ratio_is_bounded_by_the_video_not_the_position_grid():
    """A teacher whose position tables are a 2x2 grid trains on larger frames
    (tables resized): 0.9 keeps none of 4 patches but 2 of a 32x32 frame's 16."""
    from vpengine.model.config import TextConfig, VideoTextConfig

    enc = EncoderConfig(width=32, num_spatial_layers=1, num_temporal_layers=1, num_heads=2, mlp_dim=64,
                        patch_size=8, pos_emb_shape=(4, 2, 2))
    cfg = VideoTextConfig(encoder=enc, num_auxiliary_layers=1, pooler_num_heads=2, pooler_hidden=128,
                          text=TextConfig(vocab_size=64, num_layers=1, num_heads=2, width=32, mlp_dim=64))
    task = MaskedDistillation(build(cfg), decoder_layers=1, mask_ratio=0.9)
    out = task(_video(2, 2, 32, 32), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="keeps no patch of this video's 4 per frame"):
        task(_video(2, 2, 16, 16))


def test_stage2_masked_token_loss_refuses_a_mask_that_masks_nothing(lvt_config):
    """token_loss_on='masked' with nothing masked weighs every token 0: the
    token loss would be 0 and training would go on without it, unsaid."""
    with pytest.raises(ValueError, match="mask_ratio 0 leaves no token to predict"):
        MaskedDistillation(build(lvt_config), decoder_layers=1, mask_ratio=0.0, token_loss_on="masked")
    task = MaskedDistillation(build(lvt_config), decoder_layers=1, mask_ratio=0.03, token_loss_on="masked")
    with pytest.raises(ValueError, match="masks no patch of this video's 16 per frame"):
        task(_video(2, 2, 32, 32), generator=torch.Generator().manual_seed(0))  # keeps round(15.52) = 16
    out = task(_video(2, 2, 48, 48), generator=torch.Generator().manual_seed(0))  # 36 patches: 1 masked
    assert out["token_loss"] > 0
