"""Keep sqlglot's log lines out of the user's output.

sqlglot logs a warning when it falls back to an opaque ``Command`` for syntax it does not know
(``LOAD httpfs``, ``CALL ...``) and when a JSON path literal does not parse. fsql refuses the first on
the tree with a located error and the second changes nothing (the literal is kept as written), so
neither is worth a stray line on stderr. A NullHandler stops Python's last-resort handler from printing
them while an application that configures logging still sees them; ``captured`` takes the records of
one block away entirely, for the parse of a feature file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

SQLGLOT = logging.getLogger("sqlglot")
if not any(isinstance(h, logging.NullHandler) for h in SQLGLOT.handlers):
    SQLGLOT.addHandler(logging.NullHandler())


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def captured() -> Iterator[list[logging.LogRecord]]:
    """Collect, instead of emitting, every sqlglot log record of the block."""
    collect = _Collect()
    propagate = SQLGLOT.propagate
    SQLGLOT.addHandler(collect)
    SQLGLOT.propagate = False
    try:
        yield collect.records
    finally:
        SQLGLOT.removeHandler(collect)
        SQLGLOT.propagate = propagate
