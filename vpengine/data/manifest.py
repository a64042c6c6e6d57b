"""Manifests: the list of videos a loader reads, as JSONL or CSV.

One row per clip (JSON: one object per line, or one array of objects),
with a ``path`` and optionally a ``caption`` and a time
window ``start``/``end`` in seconds from the file's start, as players and
``ffmpeg -ss`` count and as ClipSpec's window (``start_time``/``end_time``,
``time_start``/``time_end`` and ``text`` are accepted as aliases; names are
matched without regard to case or surrounding spaces)::

    {"path": "videos/a.mp4", "caption": "a dog runs", "start": 1.5, "end": 6.0}
    {"path": "videos/b.webm"}

    path,caption,start,end
    videos/a.mp4,a dog runs,1.5,6.0
    videos/b.webm,,,

A CSV may put a space after each comma; a field holding a comma, a quote mark
or a line break is wholly in double quotes (a quote never closed is an
error, not a caption holding every later row). A TSV is read with CSV's quoting
where the whole file follows it (pandas, csv.writer and R quote captions
holding tabs, line breaks or quote marks), else without quoting (a caption
may begin with a quote mark), unquoting only fields wholly in quotes.

Relative paths are resolved against ``root`` (default: the manifest's own
folder). Manifests are UTF-8. A malformed row is a mistake in the manifest, not a bad video, so it
raises ValueError naming the file and line; a missing or broken video only
shows up when the loader reads it (skipped and reported there).
"""
from __future__ import annotations

import json
import math
import os
import posixpath
from dataclasses import dataclass

from .manifest_csv import csv_rows, tsv_rows

_ALIASES = {"path": ("path", "video", "file"), "caption": ("caption", "text"),
            "start": ("start", "start_time", "time_start"), "end": ("end", "end_time", "time_end")}
_NAMES = frozenset(k for keys in _ALIASES.values() for k in keys)


@dataclass(frozen=True, slots=True)  # slots: one object of millions per rank, 48 bytes less each
class ManifestEntry:
    """One row: absolute video path, optional caption and time window, row
    number; ``given``: the path as the row wrote it (``~`` expanded)."""

    path: str
    caption: str | None = None
    start_time: float | None = None
    end_time: float | None = None
    index: int = 0
    given: str = ""


def _key(name) -> object:
    return name.strip().lower() if isinstance(name, str) else name


def _field(row: dict, name: str):
    for key in _ALIASES[name]:
        value = row.get(key)
        if value is not None and value != "":
            return value
    return None


def _time(value, name: str, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):  # JSON true is not 1 second
        raise ValueError(f"{where}: {name} must be a number of seconds; got {value!r}")
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {name} must be a number of seconds; got {value!r}") from None
    if not math.isfinite(t) or t < 0:  # float("nan") parses; NaN compares False with everything
        raise ValueError(f"{where}: {name} must be a finite number of seconds >= 0; got {value!r}")
    return t


def _entry(row: dict, index: int, root: str, where: str) -> ManifestEntry:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: each row must be an object with a 'path'; got {type(row).__name__}")
    if None in row:  # csv.DictReader files fields past the header under None
        raise ValueError(f"{where}: the row has more fields than the header names ({row[None]!r} left over)")
    named = {_key(k): v for k, v in row.items() if _key(k) in _NAMES}
    if len(named) < sum(_key(k) in _NAMES for k in row):
        raise ValueError(f"{where}: two columns name the same field once case and spaces are ignored: {sorted(row)}")
    keys, row = sorted(map(str, row)), named
    path = _field(row, "path")
    if path is None:
        raise ValueError(f"{where}: row has no 'path' (keys: {keys})")
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):  # JSON numbers, objects and lists are not file names
        raise ValueError(f"{where}: path must be a string; got {path!r}")
    given = path = os.path.expanduser(path)
    if not os.path.isabs(path):
        path = os.path.join(root, path)
    caption = _field(row, "caption")
    if isinstance(caption, (list, dict, bool)):
        # str() would train on "['a dog runs', 'a puppy runs']" or "True": a list
        # of captions per clip (MSR-VTT, VATEX) needs one row per caption.
        raise ValueError(f"{where}: caption must be a string; got {caption!r} (for several captions of a "
                         "clip, write one row per caption)")
    start, end = _time(_field(row, "start"), "start", where), _time(_field(row, "end"), "end", where)
    if start is not None and end is not None and end <= start:
        raise ValueError(f"{where}: end ({end}) must be greater than start ({start})")
    return ManifestEntry(path, None if caption is None else str(caption), start, end, index, given)


def _plan(keys: tuple):
    """For a row with ``keys`` (in order), the keys each field reads, in
    alias order; None where the rules need the full check (:func:`_entry`):
    a key that is not a str (CSV's None for fields past the header) or two
    keys naming one field."""
    named = {}
    for k in keys:
        if type(k) is not str:
            return None
        n = k.strip().lower()
        if n in _NAMES:
            if n in named:
                return None
            named[n] = k
    return tuple(tuple(named[a] for a in _ALIASES[f] if a in named) for f in ("path", "caption", "start", "end"))


_new = object.__new__
_SET = tuple(ManifestEntry.__dict__[n].__set__ for n in ("path", "caption", "start_time", "end_time", "index", "given"))
_INF = math.inf


def _converter(root: str):
    """``convert(row, index, loc, n)``: :func:`_entry` of ``row`` with where =
    ``f"{loc}{n}"``. Rows of millions repeat a few key sets and hold plain
    strings and numbers: those take a fast path (key names matched once per
    key set, the error text never built); anything else, every error
    included, goes through :func:`_entry` itself, so the rules and messages
    are its own."""
    plans: dict = {}
    # posixpath.join(root, p) for a relative p, as one concatenation
    prefix = (root if root.endswith("/") else root + "/") if os.path is posixpath else None
    set_path, set_caption, set_start, set_end, set_index, set_given = _SET

    def time(v):  # seconds, or False: let _entry decide
        if v is None or v == "":
            return None
        t = type(v)
        if t is float:
            return v if 0 <= v < _INF else False  # NaN compares False
        if t is int:
            return float(v) if 0 <= v < 2**53 else False
        if t is str:
            try:
                f = float(v)
            except ValueError:
                return False
            return f if 0 <= f < _INF else False
        return False

    def slow(row, index, loc, n):
        return _entry(row, index, root, f"{loc}{n}")

    def convert(row, index, loc, n):
        if prefix is None or type(row) is not dict:
            return slow(row, index, loc, n)
        keys = tuple(row)
        plan = plans.get(keys)
        if plan is None:
            plan = _plan(keys)
            if plan is None:
                return slow(row, index, loc, n)
            if len(plans) < 4096:  # a manifest whose every row has its own keys must not grow this
                plans[keys] = plan
        pk, ck, sk, ek = plan
        path = caption = start = end = None
        for k in pk:
            v = row[k]
            if v is not None and v != "":
                path = v
                break
        if type(path) is not str or path[:1] == "~":
            return slow(row, index, loc, n)
        for k in ck:
            v = row[k]
            if v is not None and v != "":
                caption = v
                break
        if caption is not None and type(caption) is not str:
            return slow(row, index, loc, n)
        for k in sk:
            start = time(row[k])
            if start is not None:
                break
        for k in ek:
            end = time(row[k])
            if end is not None:
                break
        if start is False or end is False or (start is not None and end is not None and end <= start):
            return slow(row, index, loc, n)
        e = _new(ManifestEntry)
        set_path(e, path if path[:1] == "/" else prefix + path)
        set_caption(e, caption)
        set_start(e, start)
        set_end(e, end)
        set_index(e, index)
        set_given(e, path)
        return e

    return convert


def _first_char(f) -> str:
    """The first non-blank character of text file ``f`` ("" if none); rewinds it."""
    while True:
        chunk = f.read(4096)
        if not chunk or chunk.strip():
            f.seek(0)
            return chunk.strip()[:1]


def read_manifest(manifest, root: str | None = None) -> list[ManifestEntry]:
    """Rows of a ``.jsonl``/``.json`` (JSON lines, or one array) or ``.csv``/``.tsv`` manifest file.

    ``manifest`` may also be a list of paths or of row dicts (already loaded).
    """
    if isinstance(manifest, (list, tuple)):
        base = os.path.abspath(root or os.getcwd())
        rows = [{"path": r} if isinstance(r, (str, os.PathLike)) else r for r in manifest]
        convert = _converter(base)
        return [convert(r, i, "manifest row ", i) for i, r in enumerate(rows)]
    manifest = os.fspath(manifest)
    if not os.path.exists(manifest):  # open()'s "[Errno 2] No such file" would not say which file it was
        raise FileNotFoundError(f"manifest {manifest} not found")
    base = os.path.abspath(root or os.path.dirname(os.path.abspath(manifest)))
    ext = os.path.splitext(manifest)[1].lower()
    if ext not in (".jsonl", ".json", ".ndjson", ".csv", ".tsv"):
        raise ValueError(f"manifest must end in .jsonl, .json, .csv or .tsv; got {manifest!r}")
    try:
        return _read_file(manifest, base, ext)
    except UnicodeDecodeError as e:
        raise ValueError(f"{manifest}:{_first_bad_line(manifest)}: not UTF-8 text ({e.reason}, byte "
                         f"{e.object[e.start:e.start + 1]!r}); save the manifest as UTF-8") from None


def _first_bad_line(path: str) -> int:
    """The number of the first line of ``path`` that is not UTF-8."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            try:
                line.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                return lineno
    return 1  # not reached: the file failed to decode somewhere


def _read_file(manifest: str, base: str, ext: str) -> list[ManifestEntry]:
    entries: list[ManifestEntry] = []
    convert, at, append, loads = _converter(base), f"{manifest}:", entries.append, json.loads
    scan = json.JSONDecoder().scan_once  # json.loads's own settings (NaN allowed, strict strings)
    if ext in (".jsonl", ".json", ".ndjson"):
        with open(manifest, encoding="utf-8-sig") as f:  # -sig: tolerate a BOM (Excel writes one)
            if _first_char(f) == "[":  # one JSON array of rows (what json.dump of a list writes)
                try:
                    rows = json.load(f)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{manifest}:{e.lineno}: not valid JSON ({e.msg})") from None
                loc = f"{manifest}: row "
                # Each parsed row is dropped once its entry is made: the parsed
                # rows and all the entries are never held at once.
                rows.reverse()
                for i in range(len(rows)):
                    append(convert(rows.pop(), i, loc, i))
                return entries
            # Line by line: manifests of tens of millions of rows are never held as one string.
            for lineno, line in enumerate(f, 1):
                text = line.strip(" \t\r\n")  # JSON's whitespace
                try:  # json.loads without its Python wrapper, a third of the time per row
                    row, end = scan(text, 0)
                except Exception:  # json.loads below raises it as it would (or the line is blank)
                    end = -1
                if end != len(text):
                    if not line.strip():
                        continue
                    try:
                        row = loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{at}{lineno}: not valid JSON ({e.msg}); a JSON manifest holds one "
                                         "object per line, or one array of objects") from None
                append(convert(row, len(entries), at, lineno))
    else:
        with open(manifest, encoding="utf-8-sig", newline="") as f:
            fieldnames, rows = tsv_rows(f) if ext == ".tsv" else csv_rows(f, manifest)
            names = [_key(k) for k in fieldnames or ()]
            if not any(k in names for k in _ALIASES["path"]):
                raise ValueError(f"{manifest}: the header must name a 'path' column; got {fieldnames}")
            for lineno, row in rows:
                append(convert(row, len(entries), at, lineno))
    return entries
