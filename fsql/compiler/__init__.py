"""Definitions to sqlglot trees: the PIT plan, latest-per-entity, dialect flags and rewrites.

Everything here is pure (trees in, trees out, no I/O), so every rewrite is testable without a
database. See ``fsql.compiler.pit`` for the PIT contract and the documented tie rule.
"""

from fsql.compiler.dialects import SUPPORTED_DIALECTS, Capabilities, capabilities
from fsql.compiler.pit import PitView, compile_pit, latest_per_entity, offline_index

__all__ = [
    "SUPPORTED_DIALECTS",
    "Capabilities",
    "PitView",
    "capabilities",
    "compile_pit",
    "latest_per_entity",
    "offline_index",
]
