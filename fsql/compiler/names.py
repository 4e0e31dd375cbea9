"""Generated identifiers that never collide with the user's, shared by every rewrite of the compiler."""

from __future__ import annotations

from collections.abc import Iterable


class Namer:
    """Generated identifiers (``__fsql_*``) that never collide with user columns, case-insensitively.

    ``fixed`` names are reused across CTEs (same role, same name); ``__call__`` names are unique.
    """

    def __init__(self, taken: Iterable[str]) -> None:
        self._taken = {t.lower() for t in taken}
        self._fixed: dict[str, str] = {}

    def __call__(self, base: str) -> str:
        name, n = f"__fsql_{base}", 1
        while name.lower() in self._taken:
            name, n = f"__fsql_{base}_{n}", n + 1
        self._taken.add(name.lower())
        return name

    def fixed(self, base: str) -> str:
        if base not in self._fixed:
            self._fixed[base] = self(base)
        return self._fixed[base]
