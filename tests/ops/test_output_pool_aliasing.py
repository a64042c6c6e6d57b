"""The cpu backend's output pool (csrc/cpu/output_pool.cpp) against live data.

A pooled block goes back to the cache only when its storage dies, and the
next output of a similar size gets it with the old bytes still there. These
tests try to make a block alias something still alive (held outputs, views,
numpy arrays, tensors autograd saved, other threads' outputs, a forked
child's copy) while many outputs of varying sizes churn through the cache,
and check every result afterwards. test_output_pool.py poisons the token
ops' reused blocks; here patchify and attention, whose outputs are pooled
too, get the same check.

Legend: B batch, T frames, S tokens per frame, N tokens, D width, H heads.
"""
import os
import random
import subprocess
import sys
import threading

import pytest
import torch

from vpengine import _ext
from vpengine.ops import patchify, spacetime_attention, token_gather, token_shuffle, token_unshuffle, use_backend
from vpengine.ref import tokens as ref

pytestmark = pytest.mark.skipif(
    bool(_ext.cpu_ext_reasons()) or not sys.platform.startswith("linux"),
    reason="needs the vpengine._C extension on Linux",
)


def reuses() -> int:
    return torch.ops.vpengine.cpu_pool_stats()[3]


def churn(g: torch.Generator, rounds: int = 12) -> None:
    """Pooled outputs of varying sizes, each filled with NaN and freed: any
    block that live data still used would be overwritten here."""
    with use_backend("cpu"), torch.no_grad():
        for _ in range(rounds):
            n = int(torch.randint(256, 1536, (1,), generator=g))
            x = torch.empty(1, n, 1024)
            token_shuffle(x, torch.arange(n)[None]).fill_(float("nan"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_patchify_overwrites_a_reused_block(dtype):
    frames = torch.randint(0, 256, (2, 8, 144, 144, 3), dtype=torch.uint8)  # >= 1 MiB out in every dtype
    with use_backend("cpu"):
        first = patchify(frames, 18, dtype)
        want = first.clone()
        assert first.nbytes >= 1 << 20
        first.view(torch.uint8).fill_(0xFF)  # NaN in every float dtype
        del first
        before = reuses()
        got = patchify(frames, 18, dtype)
    assert reuses() > before, "the freed block was not reused"
    assert torch.equal(got, want)


@pytest.mark.parametrize("axis", ["space", "time"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
def test_attention_overwrites_a_reused_block(axis, dtype, padded):
    B, T, S, H, E = 2, 8, 128, 4, 64  # out [B, T, S, H*E]: 2 MiB in bf16
    qkv = torch.randn(B, T, S, 3 * H * E).to(dtype)
    pads = None
    if padded:  # the rows of padded frames are written too
        pads = torch.zeros(B, T)
        pads[0, 5:] = 1
        pads[1, 2:] = 1
    with use_backend("cpu"), torch.no_grad():
        first = spacetime_attention(qkv, axis, H, frame_paddings=pads)
        want = first.clone()
        assert first.nbytes >= 1 << 20
        first.view(torch.uint8).fill_(0xFF)
        del first
        before = reuses()
        got = spacetime_attention(qkv, axis, H, frame_paddings=pads)
    assert reuses() > before, "the freed block was not reused"
    assert torch.equal(got, want)


def test_held_outputs_views_and_arrays_survive_churn():
    g = torch.Generator().manual_seed(1)
    kept = []  # (what the caller still holds, its expected value)
    with use_backend("cpu"):
        for i in range(24):
            n, d = 256 + 97 * (i % 7), 512 + 128 * (i % 3)
            x = torch.randn(2, n, d, generator=g)
            perm = torch.rand(2, n, generator=g).argsort(dim=1)
            want = ref.token_shuffle_ref(x, perm, None)
            y = token_shuffle(x, perm)
            kind = i % 4
            if kind == 0:
                kept.append((y, want))
            elif kind == 1:  # a view outlives the output it came from
                kept.append((y[:, 1:, 3:], want[:, 1:, 3:]))
            elif kind == 2:  # a numpy array outlives it
                kept.append((y.numpy(), want.numpy()))
            else:  # a tensor sharing the array's memory outlives both
                kept.append((torch.from_numpy(y.numpy()), want))
            del y
            churn(g, rounds=3)
    before = reuses()
    churn(g)
    assert reuses() > before
    for k, (held, want) in enumerate(kept):
        held = torch.as_tensor(held)
        assert torch.equal(held, torch.as_tensor(want)), f"held output {k} was overwritten"


def test_tensors_saved_for_backward_survive_churn():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 1024, 512, generator=g, requires_grad=True)
    perm = torch.rand(2, 1024, generator=g).argsort(dim=1)
    qkv = torch.randn(2, 8, 128, 3 * 4 * 64, generator=g, requires_grad=True)
    with use_backend("cpu"):
        y = token_shuffle(x, perm)
        loss_tokens = (y * y).sum()  # autograd saves y, a pooled output
        out = spacetime_attention(qkv, "space", 4)  # saves its pooled out for the backward
        gout = torch.randn(out.shape, generator=g)
        loss_attn = (out * gout).sum()
        del y, out
        churn(g)
        loss_tokens.backward()
        loss_attn.backward()
        assert torch.equal(x.grad, 2 * x.detach())  # 2y unshuffled, exactly

        qkv2 = qkv.detach().clone().requires_grad_()  # the same computation without churn in between
        (spacetime_attention(qkv2, "space", 4) * gout).sum().backward()
    assert torch.equal(qkv.grad, qkv2.grad)


def test_threads_never_share_a_block():
    errors = []
    stop = threading.Event()

    def release():
        while not stop.is_set():
            torch.ops.vpengine.cpu_pool_release()

    def work(seed):
        rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
        held = []
        try:
            with use_backend("cpu"), torch.no_grad():
                for i in range(16):
                    n = rng.choice([300, 333, 512, 700])
                    x = torch.randn(2, n, 512, generator=g)
                    perm = torch.rand(2, n, generator=g).argsort(dim=1)
                    keep = perm[:, : n // 2].sort(dim=1).values
                    outs = [token_shuffle(x, perm), token_gather(x, keep), token_unshuffle(x, perm)]
                    wants = [ref.token_shuffle_ref(x, perm, None), ref.token_gather_ref(x, keep),
                             ref.token_unshuffle_ref(x, perm)]
                    held.append((outs[0], wants[0]))
                    for o, w in zip(outs[1:], wants[1:]):
                        if not torch.equal(o, w):
                            errors.append(f"thread {seed} call {i}: wrong output")
                        o.fill_(float("nan"))  # freed right after: poison for whoever gets it next
            for k, (o, w) in enumerate(held):
                if not torch.equal(o, w):
                    errors.append(f"thread {seed}: held output {k} overwritten")
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(f"thread {seed}: {e!r}")

    releaser = threading.Thread(target=release)
    workers = [threading.Thread(target=work, args=(s,)) for s in range(3)]
    releaser.start()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    releaser.join()
    assert not errors, errors[:5]


_FORK = """
import os, torch
import vpengine.ops as ops
from vpengine.ref import tokens as ref

x = torch.randn(2, 1024, 512)
perm = torch.rand(2, 1024).argsort(dim=1)
want = ref.token_shuffle_ref(x, perm, None)
with ops.use_backend("cpu"):
    live = ops.token_shuffle(x, perm)             # alive in the parent at fork
    ops.token_shuffle(x, perm).fill_(float("nan"))  # a cached block at fork

def churn_and_check(who):
    with ops.use_backend("cpu"):
        for _ in range(4):
            got = ops.token_shuffle(x, perm)
            assert torch.equal(got, want), who + ": wrong output"
            got.fill_(float("nan"))
    assert torch.equal(live, want), who + ": live output overwritten"

pid = os.fork()
if pid == 0:
    try:
        churn_and_check("child")
    except BaseException as e:
        print(e, flush=True)
        os._exit(1)
    os._exit(0)
_, status = os.waitpid(pid, 0)
churn_and_check("parent")
print("child", os.waitstatus_to_exitcode(status))
"""


def test_fork_child_and_parent_keep_their_own_blocks():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", _FORK], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and done.stdout.strip().endswith("child 0"), done.stdout + done.stderr[-2000:]
