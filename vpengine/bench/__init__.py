"""vpengine's benchmark harness: timing, measured roofline ceilings, FLOP and
byte formulas, the JSON-lines record schema, the table and the roofline plot.

The cases themselves live in :mod:`vpengine.bench.suites` (one module per op
family); ``vpengine bench`` and the pytest-benchmark files in ``benchmarks/``
both read them, so there is one definition of every measured case.
"""
from .record import SCHEMA_KEYS, Record
from .suites import SUITES, Case, SkipCase, SuiteContext

__all__ = ["SCHEMA_KEYS", "SUITES", "Case", "Record", "SkipCase", "SuiteContext"]
