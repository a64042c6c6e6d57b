"""Manifests and ClipLoader: formats, determinism for a seed, rank sharding, prefetch."""
import json
import os

import pytest
import torch
from clip_facts import gray_index

from vpengine.data import ClipLoader, ClipSpec, read_manifest

GOOD = ["h264", "hevc", "vp9", "odd", "portrait", "vfr", "short", "one", "h264_gop", "mjpeg", "vfr_vp9"]
SPEC = ClipSpec(4, sampling="random", size=(16, 16))


@pytest.fixture
def manifest(tmp_path, videos):
    p = tmp_path / "m.jsonl"
    p.write_text("".join(json.dumps({"path": videos[n], "caption": f"clip {n}"}) + "\n" for n in GOOD))
    return p


def test_jsonl_and_csv_manifests(tmp_path, videos):
    (tmp_path / "sub").mkdir()
    j = tmp_path / "sub" / "m.jsonl"
    j.write_text('{"video": "a.mp4", "text": "hi", "start_time": 1, "end_time": 2.5}\n\n{"path": "/abs/b.webm"}\n')
    a, b = read_manifest(j)
    assert a.path == str(tmp_path / "sub" / "a.mp4") and a.caption == "hi" and (a.start_time, a.end_time) == (1, 2.5)
    assert b.path == "/abs/b.webm" and b.caption is None and b.start_time is None and b.index == 1
    c = tmp_path / "m.csv"
    c.write_text('path,caption,start,end\nx.mp4,"a, quoted caption",,3\ny.mp4,,,\n')
    x, y = read_manifest(c, root="/data")
    assert (x.path, x.caption, x.start_time, x.end_time) == ("/data/x.mp4", "a, quoted caption", None, 3.0)
    assert y.caption is None
    assert [e.path for e in read_manifest([videos["h264"]])] == [videos["h264"]]


def test_json_array_manifest(tmp_path):
    rows = [{"path": "a.mp4", "caption": "line\u2028separator"}, {"video": "b.mp4", "start": 1, "end": 2}]
    raw = dict(ensure_ascii=False)  # U+2028 written as itself
    for name, text in (("m.json", json.dumps(rows, indent=2, **raw)),
                       ("n.jsonl", "\n".join(json.dumps(r, **raw) for r in rows))):
        (tmp_path / name).write_text(text, encoding="utf-8")
        a, b = read_manifest(tmp_path / name)
        assert (a.path, a.caption) == (str(tmp_path / "a.mp4"), "line\u2028separator")
        assert (b.path, b.start_time, b.end_time, b.index) == (str(tmp_path / "b.mp4"), 1.0, 2.0, 1)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"path": "a.mp4"},\n {"caption": "x"}]')
    with pytest.raises(ValueError, match="row 1: row has no 'path'"):
        read_manifest(bad)
    bad.write_text('[{"path": "a.mp4"},\n oops]')
    with pytest.raises(ValueError, match=r"bad.json:2: not valid JSON"):
        read_manifest(bad)
    bad.write_text('{\n  "path": "a.mp4"\n}\n')  # pretty-printed single object: say what the format is
    with pytest.raises(ValueError, match="one object per line, or one array"):
        read_manifest(bad)


@pytest.mark.parametrize("text, ext, match", [
    ('{"caption": "no path"}\n', "jsonl", "no 'path'"),
    ("{not json\n", "jsonl", "not valid JSON"),
    ('{"path": "a.mp4", "start": 3, "end": 1}\n', "jsonl", "end"),
    ("file_name,caption\na.mp4,x\n", "csv", "'path' column"),
    ('{"path": "a.mp4", "caption": ["a dog runs", "a puppy runs"]}\n', "jsonl", "caption must be a string"),
    ('{"path": "a.mp4", "caption": {"en": "a cat"}}\n', "jsonl", "caption must be a string"),
    ('{"path": "a.mp4", "text": true}\n', "jsonl", "caption must be a string"),
    ("a.mp4\n", "txt", "must end in"),
])
def test_manifest_errors_name_the_line(tmp_path, text, ext, match):
    p = tmp_path / f"m.{ext}"
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_manifest(p)


def test_tsv_has_no_quoting(tmp_path):
    """A caption that begins with a quote mark is text: CSV's quoting rules
    made an unbalanced one swallow every row after it, silently."""
    p = tmp_path / "m.tsv"
    p.write_text('path\tcaption\n'
                 'a.mp4\t"Stop!" she shouts\n'
                 'b.mp4\t"Hello, said the man\n'
                 'c.mp4\t"""Quoted"" by pandas"\n'
                 'd.mp4\ta cat sleeps\n')
    rows = read_manifest(p)
    assert [r.caption for r in rows] == ['"Stop!" she shouts', '"Hello, said the man', '"Quoted" by pandas',
                                         "a cat sleeps"]
    # a stray quote closed by another at a later row's end is valid CSV: the rows between merge
    p.write_text('path\tcaption\na.mp4\t"Quoted opening\nb.mp4\tends in a quote"\nc.mp4\tthird\n')
    assert [r.caption for r in read_manifest(p)] == ['"Quoted opening', 'ends in a quote"', "third"]


def test_tsv_quoted_by_its_writer(tmp_path):
    """pandas and csv.writer quote a caption holding a tab, a line break or a
    quote mark; R and QUOTE_ALL quote every field, the header too."""
    import csv

    captions = ["a dog runs.\nThen it sits.", "col1\tcol2", 'say "hi"', "plain"]
    for quoting in (csv.QUOTE_MINIMAL, csv.QUOTE_ALL):
        p = tmp_path / f"q{quoting}.tsv"
        with open(p, "w", newline="", encoding="utf-8-sig") as f:  # with a byte order mark, as Excel writes
            w = csv.writer(f, delimiter="\t", quoting=quoting)
            w.writerow(["path", "caption"])
            w.writerows([f"{i}.mp4", c] for i, c in enumerate(captions))
        rows = read_manifest(p)
        assert [(os.path.basename(r.path), r.caption) for r in rows] == [(f"{i}.mp4", c) for i, c in enumerate(captions)]


def test_csv_with_a_quote_never_closed(tmp_path):
    """A quote mark opened and never closed swallowed every later row into one
    caption, silently; CSV's own multi-line captions still read."""
    p = tmp_path / "m.csv"
    p.write_text('path,caption\na.mp4,"Best of\nb.mp4,second clip\nc.mp4,third clip\n')
    with pytest.raises(ValueError, match=r"m.csv:2: not valid CSV \(unexpected end of data\)"):
        read_manifest(p)
    p.write_text('path,caption\na.mp4,ok\nb.mp4,"Best" of\n')
    with pytest.raises(ValueError, match=r"m.csv:3: not valid CSV"):
        read_manifest(p)
    p.write_text('path,"cap\n')
    with pytest.raises(ValueError, match=r"m.csv:1: the header is not valid CSV"):
        read_manifest(p)
    p.write_text('path,caption\na.mp4,"two lines,\nsaid ""she"""\nb.mp4, "x, y"\n')
    assert [r.caption for r in read_manifest(p)] == ['two lines,\nsaid "she"', "x, y"]


@pytest.mark.parametrize("ext", ["csv", "jsonl", "tsv"])
def test_manifest_not_utf8_names_the_line(tmp_path, ext):
    p = tmp_path / f"m.{ext}"
    rows = ["path,caption", "a.mp4,ok", "b.mp4,caf\xe9"] if ext != "jsonl" else \
        ['{"path": "a.mp4"}', '{"path": "b.mp4"}', '{"path": "caf\xe9.mp4"}']
    p.write_bytes("\n".join(rows).replace(",", "\t" if ext == "tsv" else ",").encode("latin-1"))
    with pytest.raises(ValueError, match=rf"m.{ext}:3: not UTF-8 text .*save the manifest as UTF-8"):
        read_manifest(p)
    p.write_text("\n".join(rows), encoding="utf-16")
    with pytest.raises(ValueError, match=rf"m.{ext}:1: not UTF-8"):
        read_manifest(p)


@pytest.mark.parametrize("header", ["path, caption, start, end", "Path,Caption,Start,End",
                                    "path,caption,time_start,time_end", " PATH ,Text,start_time,END_TIME"])
def test_csv_column_names_ignore_case_and_spaces(tmp_path, header):
    p = tmp_path / "m.csv"
    p.write_text(f"{header}\nclip.mp4, a dog runs, 12.5, 18\n")
    (e,) = read_manifest(p)
    assert (os.path.basename(e.path), e.caption, e.start_time, e.end_time) == ("clip.mp4", "a dog runs", 12.5, 18.0)
    p.write_text("path,Path\na.mp4,b.mp4\n")
    with pytest.raises(ValueError, match="two columns name the same field"):
        read_manifest(p)


def _run(manifest, **kw):
    loader = ClipLoader(manifest, SPEC, batch_size=3, backend="pyav", **kw)
    return loader, list(loader)


def test_batches_carry_clips_captions_and_paddings(manifest):
    loader, batches = _run(manifest, shuffle=False, num_workers=2, prefetch=1)
    assert len(batches) == len(loader) == 4 and loader.num_bad == 0
    b = batches[0]
    assert b.frames.shape == (3, 4, 16, 16, 3) and b.frames.dtype == torch.uint8
    assert b.frame_paddings.shape == (3, 4) and b.frame_paddings.dtype == torch.float32
    assert b.captions == [f"clip {n}" for n in GOOD[:3]] and b.rows == [0, 1, 2]
    for clip, info in zip(b.frames, b.infos):
        assert gray_index(clip) == info.frame_indices
    assert batches[-1].frames.shape[0] == 2  # 11 clips: the last batch is partial


def test_deterministic_for_a_seed(manifest):
    _, a = _run(manifest, seed=5, num_workers=1)
    _, b = _run(manifest, seed=5, num_workers=3, prefetch=3)  # worker count and timing do not matter
    assert [x.rows for x in a] == [x.rows for x in b]
    assert all(torch.equal(x.frames, y.frames) for x, y in zip(a, b))
    assert [i.frame_indices for x in a for i in x.infos] == [i.frame_indices for x in b for i in x.infos]
    loader, c = _run(manifest, seed=6)
    assert [x.rows for x in a] != [x.rows for x in c]
    loader.set_epoch(1)
    d = list(loader)
    assert sorted(r for x in d for r in x.rows) == list(range(len(GOOD)))
    assert [x.rows for x in c] != [x.rows for x in d]


def test_start_resumes_mid_epoch(manifest):
    """set_epoch(e, start=k) yields what a full pass yields after its first k
    shard rows (the same clips: row seeds do not depend on the start)."""
    loader = ClipLoader(manifest, SPEC, 2, seed=3, num_workers=2)
    loader.set_epoch(1)
    full = list(loader)
    shard = loader.shard_rows()
    loader.set_epoch(1, start=4)
    assert len(loader) == -(-(len(shard) - 4) // 2)
    rest = list(loader)
    assert [r for x in rest for r in x.rows] == shard[4:]
    tail = [(r, x.frames[i]) for x in full for i, r in enumerate(x.rows) if r in shard[4:]]
    got = [(r, x.frames[i]) for x in rest for i, r in enumerate(x.rows)]
    assert [r for r, _ in tail] == [r for r, _ in got] and all(torch.equal(a, b) for (_, a), (_, b) in zip(tail, got))
    loader.set_epoch(2)
    assert loader.start == 0
    with pytest.raises(ValueError, match="start must be >= 0"):
        loader.set_epoch(1, start=-1)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_rank_sharding(manifest, world):
    shards = [ClipLoader(manifest, SPEC, batch_size=2, rank=r, world_size=world, seed=1).shard_rows()
              for r in range(world)]
    n = len(GOOD)
    per = -(-n // world)
    assert all(len(s) == per for s in shards)  # equal lengths: padded by wrapping around
    rows = [r for s in shards for r in s]
    assert set(rows) == set(range(n)) and len(rows) - len(set(rows)) == per * world - n
    # Rank 1 of a 2-way split reads exactly what its shard says, with clips equal to a 1-rank read.
    if world == 2:
        _, batches = _run(manifest, seed=1, rank=1, world_size=2)
        assert [r for b in batches for r in b.rows] == shards[1]


@pytest.mark.parametrize("n,world", [(1, 3), (3, 8), (2, 7)])
def test_fewer_rows_than_ranks(tmp_path, n, world):
    """Every rank still gets the same number of rows (DDP step counts agree)."""
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps({"path": f"v{i}.mp4"}) + "\n" for i in range(n)))
    shards = [ClipLoader(m, SPEC, batch_size=1, rank=r, world_size=world).shard_rows() for r in range(world)]
    assert all(len(s) == 1 for s in shards) and {r for s in shards for r in s} == set(range(n))


def test_rank_and_arguments_validated(manifest):
    with pytest.raises(ValueError, match="rank"):
        ClipLoader(manifest, SPEC, batch_size=2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="needs rank"):  # every process would read rank 0's shard
        ClipLoader(manifest, SPEC, batch_size=2, world_size=2)
    for bad in (dict(rank=0, world_size=0), dict(rank=True, world_size=2)):
        with pytest.raises(ValueError, match="world_size"):
            ClipLoader(manifest, SPEC, batch_size=2, **bad)
    with pytest.raises(ValueError, match="batch_size"):
        ClipLoader(manifest, SPEC, batch_size=0)
    for name, bad in (("batch_size", True), ("num_workers", 1.5), ("prefetch", "2"), ("decode_threads", -1)):
        kw = {"batch_size": 2, name: bad}
        with pytest.raises(ValueError, match=name):
            ClipLoader(manifest, SPEC, **kw)
    with pytest.raises(ValueError, match="backend"):
        ClipLoader(manifest, SPEC, batch_size=2, backend="opencv")
    with pytest.raises(ValueError, match="spec.size"):
        ClipLoader(manifest, ClipSpec(4, size=None), batch_size=2)
    for bad in (1.5, True, "3"):
        with pytest.raises(ValueError, match="seed must be an integer"):
            ClipLoader(manifest, SPEC, batch_size=2, seed=bad)
        with pytest.raises(ValueError, match="epoch must be an integer"):
            ClipLoader(manifest, SPEC, batch_size=2).set_epoch(bad)


def test_default_workers_are_the_cpus_this_process_may_use(manifest, monkeypatch):
    """Not the machine's count: a torchrun rank pinned to 3 of a node's cores gets 3 threads.
    With DALI on the GPU these are DALI's threads, one clip's NVDEC decoder each."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5, 6}, raising=False)
    assert ClipLoader(manifest, SPEC, batch_size=2).num_workers == 3
    assert ClipLoader(manifest, SPEC, batch_size=2, num_workers=1).num_workers == 1


def test_row_seeds_do_not_collide_across_epochs(manifest):
    """Row r + P of one epoch must not replay row r of the next (P = any
    multiplier a linear formula would use; manifests reach 10^7+ rows)."""
    loader = ClipLoader(manifest, SPEC, batch_size=2, seed=3)
    seeds = {}
    for epoch in range(3):
        loader.set_epoch(epoch)
        for row in (0, 1, 10_000_019, 10_000_020, 2**31, 2**40):
            seeds.setdefault(loader._row_seed(row), []).append((epoch, row))
    assert all(len(v) == 1 for v in seeds.values())
    assert all(0 <= s < 2**63 for s in seeds)  # fits torch.Generator.manual_seed


def test_early_break_stops_producer(manifest):
    loader = ClipLoader(manifest, SPEC, batch_size=1, backend="pyav", prefetch=1)
    for _ in loader:
        break
    assert len(list(loader)) == len(GOOD)  # a fresh iteration starts over


def test_row_window_conflicting_with_the_spec_is_a_bad_row(tmp_path):
    """A row ending before the spec's start has no frames: skipped and
    reported like any bad file, the run goes on."""
    from vpengine.data.synthetic import encode_video, index_frames

    path = encode_video(tmp_path / "w.mp4", index_frames(20), "libx264", fps=10)
    rows = [{"path": path}, {"path": path, "end": 0.5}, {"path": path}]
    loader = ClipLoader(rows, ClipSpec(2, size=(18, 18), start_time=1.0), batch_size=1, shuffle=False,
                        backend="pyav")
    assert [b.rows for b in loader] == [[0], [2]]
    (bad,) = loader.bad_files
    assert bad.index == 1 and "window" in bad.reason


def test_consumed_clips_are_released(videos, monkeypatch):
    """A clip the consumer got is not kept by the producer: an epoch of
    millions of rows must run in the memory of a few batches."""
    import gc
    import weakref

    import vpengine.data.loader as loader_module

    decoded = []
    decode_plan = loader_module.decode_plan

    def tracked(*args, **kw):
        clip = decode_plan(*args, **kw)
        decoded.append(weakref.ref(clip))
        return clip

    monkeypatch.setattr(loader_module, "decode_plan", tracked)
    loader = ClipLoader([videos["h264"]] * 40, SPEC, batch_size=2, backend="pyav", num_workers=1, prefetch=1,
                        shuffle=False)
    for i, _ in enumerate(loader):
        if i == 15:
            gc.collect()
            alive = sum(r() is not None for r in decoded)
            break
    # Ahead of the consumer: the queued batch, one waiting to be queued, the pool's batch.
    assert len(decoded) >= 32 and alive <= 4 * 2


def test_early_break_does_not_decode_the_queued_rows(videos, monkeypatch):
    """After a break (or an error, or Ctrl-C) the loop waits for the decodes
    already running, not for the prefetch window's queued rows: with long
    videos those took seconds to minutes."""
    import time

    import vpengine.data.loader as loader_module

    started = []
    decode_plan = loader_module.decode_plan

    def slow(*args, **kw):
        started.append(1)
        time.sleep(0.05)
        return decode_plan(*args, **kw)

    monkeypatch.setattr(loader_module, "decode_plan", slow)
    loader = ClipLoader([videos["h264"]] * 40, SPEC, batch_size=4, backend="pyav", num_workers=1, prefetch=2,
                        shuffle=False)
    for _ in loader:
        at_break = len(started)
        break
    # The decode running, and one the worker may take up before the producer
    # sees the stop; the prefetch window's other rows are cancelled.
    assert len(started) - at_break <= 2


def test_set_epoch_does_not_change_a_pass_under_way(videos):
    """A pass keeps the epoch it started with: set_epoch for the next pass
    (a trainer preparing it) must not change the clips still to come, which
    would otherwise depend on how many were already prefetched."""
    spec = ClipSpec(2, sampling="random", size=(16, 16))

    def loader():
        return ClipLoader([videos["h264"]] * 12, spec, batch_size=2, backend="pyav", num_workers=1, prefetch=1,
                          shuffle=False)

    whole = [i.frame_indices for b in loader() for i in b.infos]
    interrupted = loader()
    it = iter(interrupted)
    first = next(it)
    interrupted.set_epoch(1)
    got = [i.frame_indices for i in first.infos] + [i.frame_indices for b in it for i in b.infos]
    assert got == whole


_FINALIZED_IN_A_LOADER_THREAD = """
import gc, sys, threading
import vpengine.data.loader as loader_module
from vpengine.data import ClipLoader, ClipSpec

gc.disable()  # collections in the decode thread only, as an automatic one may run there
decode_plan, calls = loader_module.decode_plan, []

def collecting(*args, **kw):
    calls.append(1)
    if len(calls) >= 4:  # once the pass is dropped
        gc.collect()
    return decode_plan(*args, **kw)

loader_module.decode_plan = collecting
loader = ClipLoader([sys.argv[1]] * 20, ClipSpec(2, size=(16, 16)), batch_size=1, backend="pyav",
                    num_workers=1, prefetch=8, shuffle=False)

class Holder:
    pass

h = Holder()
h.me, h.it = h, iter(loader)
next(h.it)
del h  # dropped without close(): only the cycle collector frees the pass
for t in threading.enumerate():
    if t is not threading.current_thread():
        t.join(timeout=10)
print(sorted(t.name for t in threading.enumerate()))
"""


def test_a_pass_finalized_in_its_own_decode_thread_stops(videos):
    """A pass dropped without close() in a reference cycle is finalized by the
    cycle collector, in whichever thread it runs: in the pass's own decode
    thread the finally waited for the producer, which waited for that
    thread. Both hung for good, and the process at exit."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _FINALIZED_IN_A_LOADER_THREAD, videos["h264"]],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "['MainThread']"


def test_two_passes_at_once_count_their_own_bad_files(videos):
    """An older pass still running must not add its skips to the newer pass's bad_files."""
    loader = ClipLoader([videos["h264"], videos["text"], videos["vp9"]], SPEC, batch_size=1, backend="pyav",
                        shuffle=False, num_workers=1, prefetch=1)
    old = iter(loader)
    next(old)
    new = list(loader)  # resets bad_files for its own pass
    assert len(new) == 2 and [b.index for b in loader.bad_files] == [1]
    rest = list(old)  # the older pass skips the text file too, into its own list
    assert len(rest) == 1 and [b.index for b in loader.bad_files] == [1]


def test_a_cuda_device_the_machine_lacks_is_refused_at_construction(manifest, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no such CUDA device"):
        ClipLoader(manifest, SPEC, batch_size=2, backend="pyav", device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"cuda:1.*1 visible"):
        ClipLoader(manifest, SPEC, batch_size=2, backend="pyav", device="cuda:1")


@pytest.mark.parametrize("drop_last", [False, True])
def test_len_counts_the_shard_without_drawing_it(tmp_path, drop_last):
    """len() is the number of batches iteration yields from the rank's shard
    (shard_rows() padded to ceil(n / world_size)), for every rank, start and
    manifest size, including the empty tail past the shard."""
    for n in (1, 2, 5, 7, 12):
        rows = "".join(f'{{"path": "v{i}.mp4"}}\n' for i in range(n))
        (tmp_path / "m.jsonl").write_text(rows)
        for world in (1, 2, 3, 5):
            for rank in range(world):
                loader = ClipLoader(str(tmp_path / "m.jsonl"), SPEC, 2, rank=rank, world_size=world,
                                    drop_last=drop_last, num_workers=1)
                for start in (0, 1, 3, 9):
                    loader.set_epoch(4, start=start)
                    left = max(len(loader.shard_rows()) - start, 0)
                    want = left // 2 if drop_last else -(-left // 2)
                    assert len(loader) == want, (n, world, rank, start)
