"""CSV/TSV manifest rows: as csv.DictReader reads them, and a broken row named
by the line it begins on."""
import csv
import io

import pytest

from vpengine.data import read_manifest
from vpengine.data.manifest_csv import csv_rows, tsv_rows

FILES = [
    "path,caption\na.mp4,x\n\n\nb.mp4,y\n",
    "path,caption,start\na.mp4\nb.mp4,x,1,extra,more\n",
    "path,caption,path\na.mp4,x\nb.mp4,y,c.mp4\n",  # DictReader: the last 'path' wins, None where missing
    'path, caption\na.mp4, "x, y"\nb.mp4,"two\nlines"\n',
    "path,caption\n", "", "\npath\na.mp4\n",
]
TSV = ['path\tcaption\na.mp4\t"Stop!" she shouts\nb.mp4\t"""Quoted"" by pandas"\n\nc.mp4\tx\ty\n',
       'path\tcaption\na.mp4\t"Quoted opening\nb.mp4\tends in a quote"\nc.mp4\n',
       '"path"\t"caption"\n"a.mp4"\t"tab\there"\n', "path\tcaption\n"]


def _reference(text, tsv):  # DictReader, as the reader before it
    if not tsv:
        reader = csv.DictReader(io.StringIO(text), skipinitialspace=True, strict=True)
        return reader.fieldnames, [(reader.line_num, row) for row in reader]
    reader = csv.DictReader(io.StringIO(text), delimiter="\t", strict=True)
    try:
        rows = [(reader.line_num, row) for row in reader]
        if not any("\n" in v and "\t" in v for _, row in rows for v in row.values() if isinstance(v, str)):
            return reader.fieldnames, rows
    except csv.Error:
        pass
    reader = csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    return reader.fieldnames, [(reader.line_num, {k: (v[1:-1].replace('""', '"') if isinstance(v, str) and len(v) > 1
                                                      and v[0] == v[-1] == '"' and '"' not in v[1:-1].replace('""', "")
                                                      else v) for k, v in row.items()}) for row in reader]


@pytest.mark.parametrize("text,tsv", [(t, False) for t in FILES] + [(t, True) for t in TSV])
def test_rows_as_dictreader_reads_them(text, tsv):
    header, rows = (tsv_rows if tsv else lambda f: csv_rows(f, "m.csv"))(io.StringIO(text, newline=""))
    assert (header, list(rows)) == _reference(text, tsv)


def test_a_broken_row_after_blank_lines_names_its_own_line(tmp_path):
    """Blank lines before a broken row made the error name the first blank line."""
    p = tmp_path / "m.csv"
    p.write_text('path,caption\na.mp4,ok\n\n\nb.mp4,"Best" of\n')
    with pytest.raises(ValueError, match=r"m.csv:5: not valid CSV"):
        read_manifest(p)
    p.write_text('path,caption\n\na.mp4,"never closed\nb.mp4,x\n')
    with pytest.raises(ValueError, match=r"m.csv:3: not valid CSV \(unexpected end of data\)"):
        read_manifest(p)
