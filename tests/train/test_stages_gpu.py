"""Both training tasks on a CUDA device: vpengine's kernels (attention forward
and backward, token ops) against the reference backend, and a bf16 run that
learns. Run by benchmarks/device_check.sh on a GPU machine."""
import pytest
import torch

from vpengine.model.api import build
from vpengine.ops import use_backend
from vpengine.train import ContrastiveTask, MaskedDistillation

pytestmark = pytest.mark.gpu


def _grads(task):
    return {n: p.grad.detach().clone() for n, p in task.named_parameters() if p.grad is not None}


def _run(task, call, backend):
    task.zero_grad(set_to_none=True)
    with use_backend(backend):
        out = call()
        out["loss"].backward()
    return float(out["loss"]), _grads(task)


@pytest.mark.parametrize("stage", [1, 2])
def test_tasks_on_cuda_match_ref(lvt_config, stage):
    model = build(lvt_config, seed=0).cuda().train()
    video = torch.rand(4, 4, 32, 32, 3, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    if stage == 1:
        task = ContrastiveTask(model).cuda()
        ids = torch.randint(1, 64, (4, 8), device="cuda")
        pads = torch.zeros(4, 8, device="cuda")

        def call():
            return task(video, ids, pads)
    else:
        task = MaskedDistillation(model, decoder_layers=2, mask_ratio=0.5).cuda().train()

        def call():
            return task(video, generator=torch.Generator("cuda").manual_seed(1))
    loss_auto, g_auto = _run(task, call, "auto")
    loss_ref, g_ref = _run(task, call, "ref")
    assert abs(loss_auto - loss_ref) <= 1e-4 * max(1.0, abs(loss_ref))
    assert g_auto.keys() == g_ref.keys()
    for n in g_ref:
        torch.testing.assert_close(g_auto[n], g_ref[n], rtol=2e-3, atol=2e-5, msg=n)


def test_stage2_bf16_learns_on_cuda(lvt_config):
    task = MaskedDistillation(build(lvt_config, seed=0).cuda(), decoder_layers=2, mask_ratio=0.75).cuda().train()
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-3, fused=True)
    video = (torch.rand(4, 4, 32, 32, 3, device="cuda") * 255).to(torch.uint8)
    g = torch.Generator("cuda").manual_seed(0)
    losses = []
    for _ in range(30):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = task(video, generator=g)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"]))
    assert all(x == x for x in losses) and losses[-1] < 0.5 * losses[0], losses[::5]


def test_checkpointed_bf16_step_matches_plain_on_cuda(lvt_config):
    """Activation checkpointing under bf16 autocast with the GPU kernels: the
    recomputed forward replays the autocast state, so gradients are unchanged."""
    from vpengine.model import activation_checkpointing

    task = MaskedDistillation(build(lvt_config, seed=0).cuda(), decoder_layers=2, mask_ratio=0.5).cuda().train()
    video = (torch.rand(4, 4, 32, 32, 3, device="cuda") * 255).to(torch.uint8)
    results = []
    for on in (False, True):
        activation_checkpointing(task, on)
        task.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = task(video, generator=torch.Generator("cuda").manual_seed(1))
        out["loss"].backward()
        results.append((float(out["loss"]), _grads(task)))
    (loss0, g0), (loss1, g1) = results
    assert loss0 == loss1 and g0.keys() == g1.keys()
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-3, atol=1e-5, msg=n)
