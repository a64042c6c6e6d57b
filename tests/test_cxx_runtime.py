"""The extensions load the C++ runtime torch uses, never a static copy.

An H100 image's g++ linked libstdc++ statically: every C++ error raised in
vpengine's extensions then crashed the process (SIGSEGV) instead of reaching
Python. setup.py links the file of the runtime torch loaded, and vpengine._ext
refuses a library that still carries its own copy (read from the file's
DT_NEEDED entries, vpengine._elf) rather than load it.
"""
from __future__ import annotations

import glob
import os
import runpy
import shutil
import struct
import subprocess

import pytest
import setuptools

from vpengine import _elf, _ext

CXX = shutil.which("c++") or shutil.which("g++")  # not $CXX: it may be a command line ("ccache g++")
LIBC10 = _ext._torch_libc10()
TORCH_RUNTIME = [lib for lib in (_elf.needed_libraries(LIBC10) or []) if lib.startswith("libstdc++")] if LIBC10 else []
SETUP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")
BUILT = sorted(glob.glob(os.path.join(os.path.dirname(_ext.__file__), "_C*.so")))


@pytest.mark.skipif(not BUILT, reason="vpengine._C is not built")
@pytest.mark.parametrize("path", BUILT, ids=os.path.basename)
def test_built_extensions_load_the_shared_runtime(path):
    needed = _elf.needed_libraries(path)
    assert needed is not None and "libstdc++.so.6" in needed, needed
    assert _ext._cxx_runtime_reason("_C", path) is None
    if shutil.which("readelf"):  # the parser agrees with binutils
        out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
        assert needed == [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


def test_files_that_are_not_elf_shared_objects_give_none(tmp_path):
    text = tmp_path / "a.so"
    text.write_text("not a library\n")
    empty = tmp_path / "empty.so"
    empty.write_bytes(b"")
    cut = tmp_path / "cut.so"
    cut.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 40)  # a header cut short
    for path in (text, empty, cut, tmp_path / "missing.so"):
        assert _elf.needed_libraries(str(path)) is None, path
        assert _ext._cxx_runtime_reason("_C", str(path)) is None  # unknown is not refused


def _shared_lib(tmp_path, name, *flags, libs=(), must_link=False):
    src = tmp_path / "thrower.cpp"
    src.write_text('#include <stdexcept>\nextern "C" void vp_throw(int n) { throw std::runtime_error(std::to_string(n)); }\n')
    out = tmp_path / name
    proc = subprocess.run([CXX, "-shared", "-fPIC", *flags, str(src), *libs, "-o", str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        if must_link:  # what setup.py passes must link wherever the compiler works
            pytest.fail(f"{CXX} {flags} {libs}: {proc.stderr[-300:]}")
        pytest.skip(f"{CXX} cannot build {flags}: {proc.stderr[-300:]}")
    return str(out)


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
@pytest.mark.skipif(not TORCH_RUNTIME, reason="torch's libc10 names no libstdc++ here")
def test_a_library_with_a_static_runtime_is_refused(tmp_path):
    shared = _shared_lib(tmp_path, "shared.so")
    static = _shared_lib(tmp_path, "static.so", "-static-libstdc++")
    assert "libstdc++.so.6" in _elf.needed_libraries(shared)
    assert "libstdc++.so.6" not in _elf.needed_libraries(static)
    assert _ext._cxx_runtime_reason("_C", shared) is None
    why = _ext._cxx_runtime_reason("_C", static)
    assert why and "libstdc++" in why and "statically" in why and "pip install" in why


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
@pytest.mark.skipif(not TORCH_RUNTIME, reason="torch's libc10 names no libstdc++ here")
def test_setup_links_the_runtime_file_torch_loaded(tmp_path, monkeypatch):
    """The H100 image's toolchain: its library folder, searched first, holds
    only libstdc++.a, so an explicit -lstdc++ links the static copy. setup.py
    names the file torch loaded instead, which no search can swap."""
    monkeypatch.setattr(setuptools, "setup", lambda **kw: None)
    monkeypatch.setenv("VPENGINE_BUILD_EXT", "0")
    args = runpy.run_path(SETUP)["_cxx_runtime_link_args"]()
    assert len(args) == 1 and os.path.isabs(args[0]) and os.path.basename(args[0]).startswith("libstdc++.so"), args
    archive = subprocess.run([CXX, "-print-file-name=libstdc++.a"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(archive):
        pytest.skip(f"{CXX} has no libstdc++.a")
    toolchain = tmp_path / "toolchain"
    toolchain.mkdir()
    (toolchain / "libstdc++.a").symlink_to(archive)
    searched = _shared_lib(tmp_path, "searched.so", f"-L{toolchain}", libs=["-lstdc++"])
    assert _ext._cxx_runtime_reason("_C", searched) is not None  # the failure, reproduced
    for flags in ((f"-L{toolchain}",), (f"-L{toolchain}", "-static-libstdc++")):
        fixed = _shared_lib(tmp_path, "fixed.so", *flags, libs=args, must_link=True)
        assert _ext._cxx_runtime_reason("_C", fixed) is None, flags


def _patched(src: str, dst, **fields) -> str:
    """A copy of ELF file ``src`` with header fields overwritten (offset: (fmt, value))."""
    data = bytearray(open(src, "rb").read())
    for offset, (fmt, value) in fields.items():
        struct.pack_into(fmt, data, int(offset, 16), value)
    dst.write_bytes(bytes(data))
    return str(dst)


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
def test_headers_the_loader_ignores_or_cannot_use(tmp_path):
    lib = _shared_lib(tmp_path, "plain.so")
    want = _elf.needed_libraries(lib)
    assert want and "libstdc++.so.6" in want
    # no section headers (as sstrip leaves a library): the loader reads the
    # program headers only, and so does the parser
    nosh = _patched(lib, tmp_path / "nosh.so", **{"0x28": ("<Q", 0), "0x3C": ("<H", 0), "0x3E": ("<H", 0)})
    assert _elf.needed_libraries(nosh) == want
    # offsets past 2**63 (struct and mmap raise OverflowError there) and past the file
    for name, field in {"huge": ("<Q", 2**63 + 5), "past_end": ("<Q", 1 << 40)}.items():
        assert _elf.needed_libraries(_patched(lib, tmp_path / f"{name}.so", **{"0x20": field})) is None
