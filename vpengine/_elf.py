"""The shared libraries an ELF file asks the dynamic loader for (DT_NEEDED),
read from the file without loading it (what ``readelf -d`` prints as NEEDED;
binutils is not always installed where vpengine runs).

Read as the loader reads it: the PT_DYNAMIC segment from the program headers
and DT_STRTAB mapped to a file offset through the PT_LOAD segments, so a
library stripped of its section headers reads the same.
"""
from __future__ import annotations

import mmap
import os
import struct

_PT_LOAD, _PT_DYNAMIC = 1, 2
_DT_NULL, _DT_NEEDED, _DT_STRTAB = 0, 1, 5


def needed_libraries(path: str) -> list[str] | None:
    """DT_NEEDED entries of a 64-bit little-endian ELF shared object, in file
    order; None for anything else (another format, a truncated or odd file,
    something that is not a regular file)."""
    try:
        if not os.path.isfile(path):  # a FIFO would block open()
            return None
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _needed(data)
    # ValueError: an empty file cannot be mapped; OverflowError: offsets past 2^63
    except (OSError, struct.error, IndexError, ValueError, OverflowError):
        return None


def _needed(data) -> list[str] | None:
    size = len(data)
    if size < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:  # ELFCLASS64, ELFDATA2LSB
        return None
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    if phentsize < 56 or phnum == 0xFFFF or phoff + phnum * phentsize > size:  # 0xFFFF: PN_XNUM, not handled
        return None
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _flags, offset, vaddr, _paddr, filesz, _memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == _PT_LOAD:
            loads.append((vaddr, filesz, offset))
        elif p_type == _PT_DYNAMIC:
            dynamic = (offset, filesz)
    if dynamic is None or dynamic[0] + dynamic[1] > size:
        return None
    entries, strtab = [], None
    for pos in range(dynamic[0], dynamic[0] + dynamic[1] - 15, 16):
        tag, val = struct.unpack_from("<qQ", data, pos)
        if tag == _DT_NULL:
            break
        if tag == _DT_NEEDED:
            entries.append(val)
        elif tag == _DT_STRTAB:
            strtab = next((off + val - va for va, n, off in loads if va <= val < va + n), None)
    if strtab is None:
        return None if entries else []
    names = []
    for name_off in entries:
        start = strtab + name_off
        end = data.find(b"\0", start) if start < size else -1
        if end < 0:
            return None
        names.append(data[start:end].decode("utf-8", "replace"))
    return names
