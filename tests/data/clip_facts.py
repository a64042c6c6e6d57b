"""What the video fixtures of conftest.py were encoded with, for the tests to
check against. Imported by name (``from clip_facts import ...``): a module
called ``conftest`` is ambiguous once several test folders have one."""
from vpengine.data.synthetic import frame_index

FPS = 10
VFR_PTS_MS = [0, 100, 150, 400, 410, 500, 900, 1000, 1100, 1500]
QUIET_X265 = {"x265-params": "log-level=error"}
gray_index = frame_index  # a decoded frame -> the index of the source frame it shows
