"""CSV and TSV manifests as (line number, row dict) pairs; see :mod:`.manifest`."""
from __future__ import annotations

import csv


def csv_rows(f, name: str):
    """(header, (line number, row) pairs) of CSV file ``name``; a space may
    follow each comma. Strict: a quote mark never closed would otherwise
    swallow every later row into one caption, silently."""
    reader = csv.DictReader(f, skipinitialspace=True, strict=True)

    def step():
        start = reader.reader.line_num + 1  # the line the next row begins on
        try:
            return next(reader, None)
        except csv.Error as e:
            raise ValueError(
                f"{name}:{start}: not valid CSV ({e}); a field holding a comma, a quote mark or a "
                "line break must be wholly in double quotes, its quote marks doubled") from None

    def rows():
        while (row := step()) is not None:
            yield reader.line_num, row

    try:
        header = reader.fieldnames
    except csv.Error as e:
        raise ValueError(f"{name}:1: the header is not valid CSV ({e})") from None
    return header, rows()


def tsv_rows(f):
    """(header, (line number, row) pairs) of a TSV file, read with CSV's quoting
    where the whole file follows it (pandas and csv.writer quote a caption
    holding a tab, a line break or a quote mark; R quotes every field), else
    with none: a caption that merely begins with a quote mark, or holds an
    unbalanced one, breaks CSV's rules (strict mode says so, or the merged
    rows show) and would have swallowed the rows after it."""
    reader = csv.DictReader(f, delimiter="\t", strict=True)
    try:
        rows = [(reader.line_num, row) for row in reader]
        # A stray quote closed by another at a row's end is valid CSV and
        # merges the rows between: a field holding both a line break and a
        # tab (a merged row's columns) is that, not a caption.
        if not any("\n" in v and "\t" in v for _, row in rows for v in row.values() if isinstance(v, str)):
            return reader.fieldnames, rows
    except csv.Error:
        pass
    f.seek(0)
    reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    return reader.fieldnames, [(reader.line_num, {k: _tsv_field(v) for k, v in row.items()}) for row in reader]


def _tsv_field(value):
    """A TSV field as written: unquoted unless wholly in CSV-style quotes."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        if '"' not in inner.replace('""', ""):
            return inner.replace('""', '"')
    return value
