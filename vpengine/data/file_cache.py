"""What was learnt from reading a file, remembered while the file is unchanged.

A file counts as unchanged while its real path, device, inode, size,
modification time and status-change time (ctime) stay the same. The ctime
matters: ``cp -p``, ``rsync -t`` and ``tar x`` put an old mtime back on new
contents, and a freed inode is reused at once, but no program can set the
ctime. One process-wide LRU per kind of fact, bounded by a cost budget;
threads that ask for the same missing file at once wait for one of them to
read it (the loader's workers would otherwise each demux it).
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Callable, Generic, TypeVar

V = TypeVar("V")


def file_key(path: str) -> tuple:
    """Identity of ``path``'s current contents (raises OSError when it is gone)."""
    st = os.stat(path)
    return os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class FileCache(Generic[V]):
    """``get(path, make)``: ``make(path)`` once per unchanged file, kept while
    the costs of the kept values add up to at most ``budget`` (least recently
    used first out). A value costing more than the budget is kept alone, up
    to ``OVERSIZE`` budgets (one very long video, read window after window,
    would otherwise be read again for each); beyond that, never. Exceptions
    of ``make`` are raised to the caller and never kept."""

    OVERSIZE = 4

    def __init__(self, budget: int, cost: Callable[[V], int]):
        self.budget, self._cost = budget, cost
        self._items: OrderedDict[tuple, tuple[V, int]] = OrderedDict()
        self._pending: dict[tuple, threading.Event] = {}
        self._lock = threading.Lock()
        self.total = 0  # cost of the kept values

    def get(self, path: str, make: Callable[[str], V]) -> V:
        key = file_key(path)
        while True:
            with self._lock:
                hit = self._items.get(key)
                if hit is not None:
                    self._items.move_to_end(key)
                    return hit[0]
                busy = self._pending.get(key)
                if busy is None:
                    self._pending[key] = threading.Event()
                    break
            busy.wait()  # then look again: the other read may have failed or not been kept
        try:
            value = make(path)
            with self._lock:
                self._keep(key, value)
        finally:
            with self._lock:
                self._pending.pop(key).set()
        return value

    def _keep(self, key: tuple, value: V) -> None:
        cost = self._cost(value)
        if cost > self.OVERSIZE * self.budget:
            return
        self._items[key] = (value, cost)
        self.total += cost
        while self.total > max(self.budget, cost):  # an oversized value stays, alone
            self.total -= self._items.popitem(last=False)[1][1]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.total = 0

    def __len__(self) -> int:
        return len(self._items)
