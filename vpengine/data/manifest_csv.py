"""CSV and TSV manifests as (line number, row dict) pairs; see :mod:`.manifest`.

Rows are dicts as ``csv.DictReader`` makes them (fields past the header
under ``None``, missing ones None, blank lines skipped), built here from
``csv.reader``: DictReader's Python ``__next__`` was half the time of a CSV
manifest of a million rows, and it hides the blank lines it skips, so a
broken row after blank lines was reported on the first blank one.
"""
from __future__ import annotations

import csv


class _Broken(Exception):
    """csv.Error of the row beginning on line ``start``."""

    def __init__(self, start: int, error: csv.Error):
        super().__init__(start, error)
        self.start, self.error = start, error


def _dict_rows(reader, header: list, field=None):
    """(line number, dict) of each further row of ``reader``, as DictReader's;
    ``field`` maps each value. A csv.Error is raised as _Broken, with the line
    the row began on."""
    lf, last = len(header), reader.line_num
    try:
        for row in reader:
            if row:
                d = dict(zip(header, row))
                lr = len(row)
                if lf < lr:
                    d[None] = row[lf:]
                elif lf > lr:
                    for key in header[lr:]:
                        d[key] = None
                yield reader.line_num, d if field is None else {k: field(v) for k, v in d.items()}
            last = reader.line_num
    except csv.Error as e:
        raise _Broken(last + 1, e) from None


def csv_rows(f, name: str):
    """(header, (line number, row) pairs) of CSV file ``name``; a space may
    follow each comma. Strict: a quote mark never closed would otherwise
    swallow every later row into one caption, silently."""
    reader = csv.reader(f, skipinitialspace=True, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise ValueError(f"{name}:1: the header is not valid CSV ({e})") from None

    def rows():
        try:
            yield from _dict_rows(reader, header)
        except _Broken as b:
            raise ValueError(
                f"{name}:{b.start}: not valid CSV ({b.error}); a field holding a comma, a quote mark or a "
                "line break must be wholly in double quotes, its quote marks doubled") from None

    return header, (rows() if header is not None else iter(()))


def tsv_rows(f):
    """(header, (line number, row) pairs) of a TSV file, read with CSV's quoting
    where the whole file follows it (pandas and csv.writer quote a caption
    holding a tab, a line break or a quote mark; R quotes every field), else
    with none: a caption that merely begins with a quote mark, or holds an
    unbalanced one, breaks CSV's rules (strict mode says so, or the merged
    rows show) and would have swallowed the rows after it. The file is read
    twice, the first time only to decide: rows are never all held at once."""
    quoted = _follows_csv_quoting(f)
    f.seek(0)
    if quoted:
        reader = csv.reader(f, delimiter="\t", strict=True)
        header = next(reader, None)
        return header, (_dict_rows(reader, header) if header is not None else iter(()))
    reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader, None)
    return header, (_dict_rows(reader, header, _tsv_field) if header is not None else iter(()))


def _follows_csv_quoting(f) -> bool:
    reader = csv.reader(f, delimiter="\t", strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return True
        # A stray quote closed by another at a row's end is valid CSV and
        # merges the rows between: a field holding both a line break and a
        # tab (a merged row's columns) is that, not a caption.
        return not any("\n" in v and "\t" in v for _, row in _dict_rows(reader, header)
                       for v in row.values() if isinstance(v, str))
    except (csv.Error, _Broken):
        return False


def _tsv_field(value):
    """A TSV field as written: unquoted unless wholly in CSV-style quotes."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        if '"' not in inner.replace('""', ""):
            return inner.replace('""', '"')
    return value
