"""The cpu backend's cache of large output blocks (csrc/cpu/output_pool.cpp).

Legend: B batch, N tokens, K kept tokens, D width.

Outputs of 1 MiB and more come from the pool; a block freed by one output is
handed to the next of a similar size with its old bytes still there, so every
kernel must overwrite all of it. These tests poison a block, free it, and check
that the next output is exact.
"""
import io
import os
import subprocess
import sys

import pytest
import torch

from vpengine import _ext
from vpengine.ops import decoder_input, token_gather, token_scatter, token_shuffle, token_unshuffle, use_backend
from vpengine.ref import tokens as ref

from test_tokens import make_inputs

pytestmark = pytest.mark.skipif(
    bool(_ext.cpu_ext_reasons()) or not sys.platform.startswith("linux"),
    reason="needs the vpengine._C extension on Linux",
)

# Every output here is over 8 MiB, in bf16 too: pooled and written with
# streaming stores, the path where stale bytes could hide.
B, N, K, D = 2, 2048, 1100, 1536


def stats() -> dict[str, int]:
    names = ("cached_bytes", "cached_blocks", "limit_bytes", "reuses", "maps")
    return dict(zip(names, torch.ops.vpengine.cpu_pool_stats()))


def inputs(dtype=torch.float32):
    """(x, keep, perm, x_kept, fill, pos) at this file's shape."""
    return make_inputs(B, N, K, D, dtype)


def cases(x, keep, perm, kept, fill, pos):
    """name -> (vpengine call, reference result)."""
    gather_all = torch.cat([perm, perm[:, :64]], dim=1)  # [B, N + 64]: a larger output
    return {
        "gather": (lambda: token_gather(x, gather_all), ref.token_gather_ref(x, gather_all)),
        "scatter fill": (lambda: token_scatter(kept, keep, N, fill), ref.token_scatter_ref(kept, keep, N, fill)),
        "scatter zero": (lambda: token_scatter(kept, keep, N), ref.token_scatter_ref(kept, keep, N)),
        "shuffle": (lambda: token_shuffle(x, perm, pos), ref.token_shuffle_ref(x, perm, pos)),
        "unshuffle": (lambda: token_unshuffle(x, perm), ref.token_unshuffle_ref(x, perm)),
        "decoder_input": (
            lambda: decoder_input(kept, keep, fill, perm, pos),
            ref.decoder_input_ref(kept, keep, fill, perm, pos),
        ),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_reused_blocks_are_fully_overwritten(dtype):
    t = inputs(dtype)
    with use_backend("cpu"), torch.no_grad():
        for name, (run, want) in cases(*t).items():
            first = run()
            assert first.nbytes >= 8 << 20, f"{name}: too small for the streaming path"
            first.view(torch.uint8).fill_(0xFF)  # NaN in every float dtype
            del first
            before = stats()["reuses"]
            got = run()
            assert stats()["reuses"] > before, f"{name}: the freed block was not reused"
            assert torch.equal(got, want), f"{name} ({dtype}): stale bytes of a reused block survived"


@pytest.mark.parametrize("batch,kept_rows", [(B, K), (3, K + 1)], ids=["even-rows", "odd-rows"])
@pytest.mark.parametrize("width", [1536, 1540, 1538], ids=["64B-rows", "16B-rows", "8B-rows"])
def test_every_streaming_row_width_is_exact(width, batch, kept_rows):
    """Rows of whole 64-byte lines stream two at a time in 32-byte vectors,
    rows of whole 16-byte vectors one at a time in 16-byte ones, others are
    copied plainly: each into a poisoned reused block, copies and zero rows
    alike. An odd row count leaves a last row outside every pair."""
    B, K = batch, kept_rows
    x, keep, perm, kept, fill, pos = make_inputs(B, N, K, width, torch.float32)
    runs = {"gather": (lambda: token_gather(x, keep), ref.token_gather_ref(x, keep)),
            "scatter zero": (lambda: token_scatter(kept, keep, N), ref.token_scatter_ref(kept, keep, N))}
    with use_backend("cpu"), torch.no_grad():
        for name, (run, want) in runs.items():
            first = run()
            assert first.nbytes >= 8 << 20, f"{name}: too small for the streaming path"
            first.view(torch.uint8).fill_(0xFF)
            del first
            assert torch.equal(run(), want), f"{name}, D={width}: stale bytes of a reused block survived"


def test_pooled_tensor_behaves_like_any_tensor():
    x, keep, perm, *_ = inputs()
    with use_backend("cpu"):
        out = token_gather(x, perm)
    want = out.clone()
    assert out.is_contiguous() and out.data_ptr() % (2 << 20) == 0
    buf = io.BytesIO()
    torch.save(out, buf)
    assert torch.equal(torch.load(io.BytesIO(buf.getvalue())), want)
    out.resize_(B + 1, N, D)  # the pool allocator grows it, keeping the contents
    assert torch.equal(out[:B], want)
    out.share_memory_()
    assert torch.equal(out[:B], want)


def test_release_empties_the_cache():
    x, keep, perm, *_ = inputs()
    with use_backend("cpu"):
        out = token_gather(x, perm)
        del out  # its block goes back to the cache
    assert stats()["cached_bytes"] >= B * N * D * 4
    torch.ops.vpengine.cpu_pool_release()
    assert stats()["cached_bytes"] == 0 and stats()["cached_blocks"] == 0


def _in_subprocess(env_value: str, code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, VPENGINE_CPU_POOL_MB=env_value)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


_GATHER_TWICE = """
import torch, vpengine.ops as ops
x = torch.randn(2, 2048, 1024)
perm = torch.rand(2, 2048).argsort(dim=1)
for _ in range(2):
    y = ops.token_gather(x, perm)
    del y
print(list(torch.ops.vpengine.cpu_pool_stats()))
"""


def test_limit_zero_turns_caching_off():
    done = _in_subprocess("0", _GATHER_TWICE)
    assert done.returncode == 0, done.stderr
    cached, blocks, limit, reuses, maps = eval(done.stdout.strip().splitlines()[-1])
    assert (cached, blocks, limit, reuses, maps) == (0, 0, 0, 0, 2)


def test_bad_limit_is_a_value_error_naming_the_variable():
    done = _in_subprocess("lots", _GATHER_TWICE)
    assert done.returncode != 0
    assert "ValueError" in done.stderr and "VPENGINE_CPU_POOL_MB" in done.stderr and "'lots'" in done.stderr


_FORK_STRESS = """
import os, signal, threading, time
import torch
import vpengine.ops as ops

x = torch.randn(1, 256, 1024)  # a 1 MiB output: pooled
idx = torch.arange(256)[None]
stop = False

def hammer():
    while not stop:
        with ops.use_backend("cpu"):
            ops.token_gather(x, idx)

threads = [threading.Thread(target=hammer) for _ in range(3)]
for t in threads:
    t.start()
hung = 0
deadline = time.time() + float(os.environ["STRESS_S"])
while time.time() < deadline and not hung:
    pid = os.fork()
    if pid == 0:
        with ops.use_backend("cpu"):
            ops.token_gather(x, idx)
        os._exit(0)
    t0 = time.time()
    while os.waitpid(pid, os.WNOHANG)[0] == 0:
        if time.time() - t0 > 5:
            hung += 1
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.001)
stop = True
for t in threads:
    t.join()
print("hung", hung)
"""


def test_fork_while_other_threads_allocate():
    """A fork while another thread held the pool's lock left the child's copy
    locked: its first pooled output hung (found at fork 155 and 467 of two
    runs; the pool now holds the lock across fork). A bounded stress run:
    it can miss the race, never pass a hang."""
    env = dict(os.environ, STRESS_S="8", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _FORK_STRESS], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "hung 0", out.stdout + out.stderr[-2000:]


_RELEASE = """
import torch, vpengine.memory as memory
print(memory.release_cpu_pool())  # straight after import: no op has loaded the extension yet
import vpengine.ops as ops
y = ops.token_gather(torch.randn(2, 2048, 1024), torch.rand(2, 2048).argsort(dim=1))
del y
print(memory.release_cpu_pool(), list(torch.ops.vpengine.cpu_pool_stats())[:2])
"""


def test_release_works_right_after_import():
    """The README's way to empty the cache works before any op has loaded the
    extension (torch.ops.vpengine.cpu_pool_release did not exist then), and
    reports the bytes it unmapped."""
    done = _in_subprocess("1024", _RELEASE)
    assert done.returncode == 0, done.stderr
    first, last = done.stdout.strip().splitlines()[-2:]
    assert first == "0"
    released, rest = last.split(" ", 1)
    assert int(released) >= 2 * 2048 * 1024 * 4 and eval(rest) == [0, 0]
