"""The encoder under torch.compile with input shapes that change between
calls: a dynamic graph serves other batch sizes, frame counts and frame
sizes without recompiling, and matches eager."""
import dataclasses

import pytest
import torch

import vpengine
from vpengine.model.config import PRESETS


def _config():
    base = PRESETS["videoprism_public_v1_base"]
    # A (4, 2, 3) table: the first call below uses exactly its frame count and grid.
    return dataclasses.replace(base, width=16, num_spatial_layers=1, num_temporal_layers=1, num_heads=2,
                               mlp_dim=32, patch_size=4, pos_emb_shape=(4, 2, 3))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_dynamic_graph_serves_other_frame_counts_and_sizes():
    """The first call's frame count and grid equal the trained tables' (the
    common case: 16 frames of 288x288 on the official weights), which once
    pinned them in the graph: every other frame count or frame size
    recompiled, and after 8 shapes fell back to eager (fullgraph=True: raised)."""
    model = vpengine.build(_config(), seed=0).eval()
    compiled = torch.compile(model, dynamic=True, fullgraph=True, backend="eager")
    g = torch.Generator().manual_seed(0)
    # Sizes distinct within each call: PyTorch gives equal sizes one symbol.
    shapes = [(2, 4, 8, 12), (3, 6, 12, 8), (2, 5, 16, 20)]
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        for B, T, H, W in shapes:
            video = torch.rand(B, T, H, W, 3, generator=g)
            torch.testing.assert_close(compiled(video), model(video), rtol=1e-6, atol=1e-6)
