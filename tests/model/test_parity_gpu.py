"""The port against the official outputs on a GPU, with the GPU backends.

The same bounds as tests/model/test_parity.py (an fp32 port): the Triton and
CUDA attention kernels run in fp32 with IEEE dots there, cuBLAS without TF32,
so a kernel bug shows as a miss of orders of magnitude, not of rounding.
Needs the parity set (tests/conftest.py: VPENGINE_SHARED) on the GPU machine.
"""
import numpy as np
import pytest
import torch

import vpengine
from test_parity import EMB_MAX, TOKEN_MAX, TOKEN_MEAN, _close

pytestmark = pytest.mark.gpu


# "auto" is what a user gets (with vpengine._C_cuda built: the CUDA kernel on
# the time axis, Triton on the space axis); "triton" runs both axes in Triton.
GPU_BACKENDS = ("auto", "triton")


@pytest.fixture(scope="module")
def encoder(parity_dir):
    return vpengine.load_official(parity_dir / "video_encoder" / "params.npz").cuda()


@pytest.fixture(scope="module")
def lvt(parity_dir):
    return vpengine.load_official(parity_dir / "lvt" / "params.npz").cuda()


def _run(backend, fn):
    with torch.no_grad(), vpengine.ops.use_backend(backend, ops=("spacetime_attention",)):
        return fn()


@pytest.mark.parametrize("case", ["native", "interp_up", "frame_padded"])
def test_encoder_cases_on_gpu(encoder, parity_dir, case):
    d = parity_dir / "video_encoder" / case
    video = np.load((d if case != "frame_padded" else d.parent / "native") / "input_video.npy")
    video = torch.from_numpy(video).cuda()
    pads = torch.from_numpy(np.load(d / "frame_paddings.npy")).cuda() if case == "frame_padded" else None
    want = np.load(d / "out_embeddings.npy")
    for backend in GPU_BACKENDS:
        tokens = _run(backend, lambda: encoder(video, pads))
        assert tokens.shape == want.shape and tokens.dtype == torch.float32
        _close(f"{case} tokens [{backend}]", tokens.cpu(), want, TOKEN_MAX, TOKEN_MEAN)


def test_encoder_uint8_and_bf16_on_gpu(encoder, parity_dir):
    """uint8 input through the GPU patchify, and bf16 autocast within bf16's error."""
    d = parity_dir / "video_encoder" / "native"
    video = torch.from_numpy(np.load(d / "input_video.npy")).cuda()
    want = torch.from_numpy(np.load(d / "out_embeddings.npy"))
    u8 = (video * 255).round().clamp(0, 255).to(torch.uint8)
    with torch.no_grad():
        from_u8 = encoder(u8)
        from_float = encoder(u8.float() / 255)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = encoder(video)
    torch.testing.assert_close(from_u8, from_float, rtol=0, atol=2e-5)
    rel = (bf16.float().cpu() - want).norm() / want.norm()
    assert rel < 3e-2, f"bf16 autocast: relative error {rel:.3g} against the official fp32 output"


def test_lvt_on_gpu(lvt, parity_dir):
    d = parity_dir / "lvt"
    video = torch.from_numpy(np.load(d / "input_video.npy")).cuda()
    ids = torch.from_numpy(np.load(d / "text_token_ids.npy")).cuda()
    pads = torch.from_numpy(np.load(d / "text_paddings.npy")).cuda()
    for backend in GPU_BACKENDS:
        v, extra = _run(backend, lambda: lvt.encode_video(video, return_intermediate=True))
        t = _run(backend, lambda: lvt.encode_text(ids, pads))
        _close(f"video emb [{backend}]", v.cpu(), np.load(d / "out_video_embeddings.npy"), EMB_MAX)
        _close(f"text emb [{backend}]", t.cpu(), np.load(d / "out_text_embeddings.npy"), EMB_MAX)
        _close(f"similarity [{backend}]", lvt.similarity(v, t).cpu(), np.load(d / "out_similarity.npy"), EMB_MAX)
        _close(f"auxiliary [{backend}]", extra["auxiliary"].cpu(),
               np.load(d / "intermediates" / "auxiliary_encoder.npy"), TOKEN_MAX)
