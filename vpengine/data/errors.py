"""Bad input files: one exception type and one record type.

Every decoder turns whatever its library raises on a bad file (missing,
empty, not a video, truncated, corrupt, unsupported codec) into
:class:`BadVideoError` carrying the path and a one-line reason, so the loader
can skip, count and report it (or re-raise under ``strict=True``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass


class BadVideoError(ValueError):
    """A file that cannot give the requested clip; ``path`` and ``reason`` say why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class BackendUnsupported(RuntimeError):
    """A decode backend cannot handle this file or machine (codec, missing library).

    Not a bad file: ``backend="auto"`` falls back to the next backend instead.
    """


@dataclass(frozen=True)
class BadFile:
    """One skipped input: where it is and why it was skipped."""

    path: str
    reason: str
    index: int = -1  # row of the manifest it came from, -1 when not from a manifest


def check_file(path: str) -> None:
    """Cheap checks before any decoder opens the file: exists, regular, non-empty."""
    if not os.path.exists(path):
        raise BadVideoError(path, "missing: no such file")
    if not os.path.isfile(path):
        raise BadVideoError(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise BadVideoError(path, "empty file (0 bytes)")
