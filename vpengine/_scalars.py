"""NumPy's scalars as the Python numbers the ops' schemas take.

``np.int64(2)`` is an integer to every user who got it from a shape or a
config array, but ``isinstance(x, int)`` says no and a ``torch.library``
schema of ``int`` refuses it; ``np.float32`` is no ``float`` either, while
``np.float64`` is. Anything else is returned as it is, for the caller's own
check to judge (bools stay bools, so they are still refused as counts).
"""
from __future__ import annotations

import numbers
import operator


def plain_int(value):
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, int)):
        return operator.index(value)
    return value


def plain_float(value):
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, int, float)):
        return float(value)
    return value
