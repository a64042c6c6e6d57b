"""The shared libraries an ELF file asks the dynamic loader for (DT_NEEDED),
read from the file without loading it (what ``readelf -d`` prints as NEEDED;
binutils is not always installed where vpengine runs)."""
from __future__ import annotations

import mmap
import struct

_SHT_DYNAMIC, _DT_NULL, _DT_NEEDED = 6, 0, 1


def needed_libraries(path: str) -> list[str] | None:
    """DT_NEEDED entries of a 64-bit little-endian ELF shared object, in file
    order; None for anything else (another format, a truncated or odd file)."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _needed(data)
    except (OSError, struct.error, IndexError, ValueError):  # ValueError: an empty file cannot be mapped
        return None


def _needed(data) -> list[str] | None:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:  # ELFCLASS64, ELFDATA2LSB
        return None
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    if shoff == 0 or shentsize < 64:
        return None
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    for _name, sh_type, _flags, _addr, offset, size, link, _info, _align, _entsize in sections:
        if sh_type != _SHT_DYNAMIC:
            continue
        strtab = sections[link][4]
        names = []
        for pos in range(offset, offset + size, 16):
            tag, val = struct.unpack_from("<qQ", data, pos)
            if tag == _DT_NULL:
                break
            if tag == _DT_NEEDED:
                start = strtab + val
                end = data.find(b"\0", start)
                if end < 0:
                    return None
                names.append(data[start:end].decode("utf-8", "replace"))
        return names
    return None
