"""Make ``vpengine.kernels`` importable from a source checkout.

The Triton kernels live in the repository's top-level ``kernels/`` folder and
ship as ``vpengine.kernels`` through setup.py's package-dir mapping. Wheel
installs copy the folder into the package, and editable installs map it with
setuptools' import finder, so both need nothing from here. Running from the
repository root without installing (``PYTHONPATH=. python ...``) finds the
``vpengine`` folder but nothing maps ``kernels/`` under it; this module adds a
finder for exactly that one name, and only when the package sits in a source
checkout (a ``setup.py`` and ``kernels/__init__.py`` beside it).

The finder is appended to ``sys.meta_path``, so any installed mapping (wheel or
editable) is found first and wins.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

_NAME = "vpengine.kernels"
_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_SRC_DIR = os.path.join(os.path.dirname(_PKG_DIR), "kernels")


class _SourceKernelsFinder(importlib.abc.MetaPathFinder):
    """Resolves ``vpengine.kernels`` (and only it) to the checkout's kernels/ folder."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _NAME:
            return None  # submodules resolve through the package's __path__ set below
        return importlib.util.spec_from_file_location(
            _NAME, os.path.join(_SRC_DIR, "__init__.py"), submodule_search_locations=[_SRC_DIR]
        )


def install() -> bool:
    """Add the finder if this is a source checkout without an installed mapping."""
    in_checkout = os.path.isfile(os.path.join(_SRC_DIR, "__init__.py")) and os.path.isfile(
        os.path.join(os.path.dirname(_PKG_DIR), "setup.py")
    )
    if not in_checkout or os.path.isdir(os.path.join(_PKG_DIR, "kernels")):
        return False
    if not any(isinstance(f, _SourceKernelsFinder) for f in sys.meta_path):
        sys.meta_path.append(_SourceKernelsFinder())
    return True


install()
