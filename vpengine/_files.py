"""Writing output files so that nothing is ever left half-written."""
from __future__ import annotations

import contextlib
import os
import secrets
from typing import Callable


def write_atomically(path: str | os.PathLike, write: Callable[[str], None], *, overwrite: bool = True) -> None:
    """Call ``write(tmp)`` on a fresh file beside ``path``, then rename it to ``path``.

    ``path`` is untouched until the rename (atomic on POSIX), and any error or
    interrupt (KeyboardInterrupt, SystemExit) removes the temporary file. The
    temporary name is unique, so two runs writing the same output cannot mix
    their bytes. ``write`` must write to exactly the name it is given.

    ``overwrite=False``: FileExistsError, and ``path`` left as it is, when it
    exists at the moment of the rename (another run may have written it since
    this one checked): the file is linked into place, which fails atomically
    where a name exists.
    """
    given = os.fspath(path)
    # As open() sees it: "missing/../x" names no file (realpath would read it as "x").
    if not os.path.isdir(os.path.dirname(given) or "."):
        raise FileNotFoundError(f"cannot write {given}: {os.path.dirname(given)} is not an existing folder")
    path = os.path.realpath(given)  # through a symlink: the link stays, its target is replaced
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory")
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(f"{given} exists; it was left as it is")
    folder, name = os.path.split(path)
    # Unique by the random part; the name is cut so the temporary one stays
    # within the 255 bytes a file name may have wherever ``name`` fits.
    stem = os.fsencode(name)[:200].decode(errors="ignore")
    tmp = os.path.join(folder, f".{stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # O_EXCL: a fresh file of ours; mode 0o666 under the umask, as a plain open() would give.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        # Some writers (safetensors) replace the file with a private (0600) one.
        os.chmod(tmp, 0o666 & ~_umask())
        # The bytes reach the disk before the name does: a crash or power loss
        # after the rename must not leave an empty or partial file under it.
        _fsync(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            _place_new(tmp, path)
        _fsync(folder, directory=True)  # and the rename itself
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _fsync(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some filesystems cannot sync a directory; a file that cannot be synced is an error
            raise
    finally:
        os.close(fd)


def _place_new(tmp: str, path: str) -> None:
    exists = FileExistsError(f"{path} appeared while this ran (another run?); it was left as it is")
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise exists from None
    except OSError:  # a filesystem without hard links: the check and the rename are two steps there
        if os.path.lexists(path):
            raise exists from None
        os.replace(tmp, path)
        return
    os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike, what: str = "output", make_folders: bool = False) -> None:
    """ValueError, before any work, when ``path`` cannot be written as a file.
    With ``make_folders`` missing folders are fine (the writer creates them)."""
    path = os.fspath(path)
    full = os.path.abspath(path)
    if os.path.isdir(full):
        raise ValueError(f"{what} {path} is a directory")
    # The folder as open() resolves it: abspath would read "missing/../x" as "x".
    folder = os.path.dirname(os.path.join(os.getcwd(), path))
    if make_folders:
        while not os.path.exists(folder):
            folder = os.path.dirname(folder)
        if not os.path.isdir(folder):
            raise ValueError(f"{what} {path}: {folder} is a file, not a folder")
    elif not os.path.isdir(folder):
        raise ValueError(f"{what} folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(full) and not os.access(full, os.W_OK)):
        raise ValueError(f"{what} {path} cannot be written: {folder} or the file is not writable")
