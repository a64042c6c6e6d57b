"""read_manifest's fast path gives what the full row check gives: the same
entry, or the same error naming the same line."""
import dataclasses
import itertools
import json
import os
import pickle

import pytest

from vpengine.data.manifest import ManifestEntry, _converter, _entry, read_manifest

ROOT = os.path.abspath("data")
PATHS = ["a.mp4", "/abs/b.mp4", "~/c.mp4", "", None, 3, ["a.mp4"], "sub/../d e.mp4"]
CAPTIONS = ["a dog", "", None, 42, 1.5, True, ["x"], {"en": "x"}, " "]
TIMES = [None, "", 0, 0.0, -0.0, 1, 2.5, -1, -1.5, float("nan"), float("inf"), 2**60, True, "1.5", " 3 ", "nan",
         "abc", "-2", [1]]


def _outcome(fn):
    try:
        return fn()
    except Exception as e:  # the type and the text are the behaviour
        return type(e), str(e)


def _same(row, index=7):
    fast = _outcome(lambda: _converter(ROOT)(row, index, "m.jsonl:", 3))
    full = _outcome(lambda: _entry(row, index, ROOT, "m.jsonl:3"))
    assert fast == full, row


@pytest.mark.parametrize("path", PATHS)
def test_paths_and_captions(path):
    for caption in CAPTIONS:
        _same({"path": path, "caption": caption})
        _same({"video": "v.mp4", "path": path, "text": caption, "caption": "c"})


def test_time_windows():
    for start, end in itertools.product(TIMES, TIMES):
        _same({"path": "a.mp4", "start": start, "end": end})
    for start, start_time in itertools.product(TIMES[:6], TIMES):  # the first alias with a value wins
        _same({"path": "a.mp4", "start": start, "start_time": start_time, "time_end": "9"})


@pytest.mark.parametrize("row", [
    {"caption": "no path"}, {"PATH ": "a.mp4", " Caption": "x"}, {"path": "a.mp4", "Path": "b.mp4"},
    {"path": "a.mp4", None: ["extra"]}, {"path": "a.mp4", 3: "x"}, {"path": "a.mp4", "id": 9, "meta": {}},
    ["a.mp4"], "a.mp4", None, {},
])
def test_odd_rows(row):
    _same(row)


def test_rows_of_many_key_sets():
    """A key set is matched once and remembered; the memory is bounded, and
    a row after it is full still reads."""
    convert = _converter(ROOT)
    rows = [{"path": f"{i}.mp4", f"extra{i}": i} for i in range(5000)]
    assert [convert(r, i, "m:", i) for i, r in enumerate(rows)] == [
        _entry(r, i, ROOT, f"m:{i}") for i, r in enumerate(rows)]


def test_jsonl_lines_read_as_json_loads_reads_them(tmp_path):
    lines = ['{"path": "a.mp4"}', "  \t", "\x0c", '\u00a0', ' {"path": "b.mp4", "start": NaN}',
             '{"path": "c.mp4"} ', '{"path": "d.mp4"} {"path": "e.mp4"}', '\ufeff{"path": "f.mp4"}',
             '{"path": "g\\u00e9.mp4", "caption": "x\\ty"}', "[1, 2]", '"just a string"', '{"path": "h.mp4",',
             '\u00a0{"path": "i.mp4"}']
    for line in lines:
        p = tmp_path / "m.jsonl"
        p.write_text('{"path": "first.mp4"}\n' + line + "\n", encoding="utf-8")

        def reference():  # read_manifest's rules, spelled out with json.loads
            out = [_entry({"path": "first.mp4"}, 0, str(tmp_path), f"{p}:1")]
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{p}:2: not valid JSON ({e.msg}); a JSON manifest holds one object per "
                                     "line, or one array of objects") from None
                out.append(_entry(row, 1, str(tmp_path), f"{p}:2"))
            return out

        assert _outcome(lambda: read_manifest(p)) == _outcome(reference), line


def test_entries_stay_frozen_hashable_and_picklable():
    e = read_manifest([{"path": "/v/a.mp4", "caption": "x", "start": 1}])[0]
    assert e == ManifestEntry("/v/a.mp4", "x", 1.0, None, 0, "/v/a.mp4") and hash(e) == hash(pickle.loads(pickle.dumps(e)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.caption = "y"
    assert dataclasses.replace(e, caption="y").caption == "y" and dataclasses.asdict(e)["given"] == "/v/a.mp4"
