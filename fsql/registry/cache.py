"""A value loaded from the registry, reused instead of read again on every call.

Reading the registry costs milliseconds (definitions are JSON); a hot path (an online read, a training
set in a notebook loop) must not pay that per call. The cached value is reused while this process has
committed no registry write (``Registry.local_writes``, free to check) and it is at most ``max_age``
seconds old, so a build made through any Store of this process is seen at once and one made by another
process within ``max_age``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

from fsql.registry.registry import Registry

T = TypeVar("T")

# How stale a cached registry read may be: a build by another process is seen within this many seconds.
DEFAULT_MAX_AGE = 2.0


class RegistryCache(Generic[T]):
    """``load(registry)``, reused while this process has not written the registry and it is young enough."""

    def __init__(self, registry: Registry, load: Callable[[Registry], T], *, max_age: float = DEFAULT_MAX_AGE) -> None:
        self.registry = registry
        self.max_age = max_age
        self._load = load
        # (checked at, local writes, change counter, version, value)
        self._value: tuple[float, int, int | None, str, T] | None = None

    def get(self, max_age: float | None = None, *, validate: bool = False) -> T:
        """The cached value, or a fresh one when this process wrote the registry since or it is older
        than ``max_age`` (default: the cache's own; 0 always reads). ``validate``: past ``max_age``,
        first ask the registry whether anything changed (a SQLite file's change counter, read without
        a query, then ``Registry.version``, one small query, a fraction of a full read) and keep the value when nothing did, so a build by another process
        is seen at once without reading every definition again."""
        age = self.max_age if max_age is None else max_age
        cached = self._value
        if cached is None or cached[1] != self.registry.local_writes():
            return self.reload()
        if time.monotonic() - cached[0] <= age:
            return cached[4]
        if validate:
            counter = self.registry.change_counter()
            if counter is not None and counter == cached[2]:
                self._value = (time.monotonic(), *cached[1:])
                return cached[4]
            if self.registry.version() == cached[3]:
                self._value = (time.monotonic(), cached[1], counter, *cached[3:])
                return cached[4]
        return self.reload()

    def reload(self) -> T:
        """Read now and cache the result (the write count and version are taken first: a write racing
        the read only makes the next call read again)."""
        writes = self.registry.local_writes()
        counter = self.registry.change_counter()
        version = self.registry.version()
        value = self._load(self.registry)
        self._value = (time.monotonic(), writes, counter, version, value)
        return value

    def invalidate(self) -> None:
        self._value = None
