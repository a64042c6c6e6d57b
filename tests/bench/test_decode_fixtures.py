"""The decode suite's loader rows read copies of a fixture: distinct files (a
probe is remembered per file), refreshed when the fixture changes."""
import os

import pytest

from vpengine.bench.suites import decode

pytest.importorskip("av")


def test_loader_copies_follow_their_fixture(tmp_path, monkeypatch):
    monkeypatch.setenv("VPENGINE_BENCH_VIDEO_DIR", str(tmp_path))
    src = decode.fixture("360p_h264", 8)  # absent: encoded here with PyAV
    first = decode.copies("360p_h264", 8, 3)
    assert len(set(first)) == 3 and len({os.stat(p).st_ino for p in first}) == 3
    assert all(open(p, "rb").read() == src.read_bytes() for p in first)
    src.write_bytes(b"a replaced fixture")  # as VPENGINE_BENCH_VIDEO_DIR may hand one in
    again = decode.copies("360p_h264", 8, 3)
    assert again == first and all(open(p, "rb").read() == b"a replaced fixture" for p in again)
