"""Names of PostgreSQL advisory locks, shared by the registry and the warehouse engine.

An advisory lock is keyed by a 64-bit integer; every lock fsql takes is named by a string (what it
guards and where) hashed here, so two processes of any version agree on the key.
"""

from __future__ import annotations

import hashlib


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock and its variants."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
