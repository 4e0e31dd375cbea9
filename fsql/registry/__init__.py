"""The registry: definitions, versions, lineage and materialization state in SQLite or PostgreSQL.

``Registry.open(url)`` applies the Alembic migrations shipped in ``fsql/registry/migrations``.
"""

from fsql.registry.cache import DEFAULT_MAX_AGE, RegistryCache
from fsql.registry.catalog import FeatureLineage, RankedHit, Revision, StatsRecord
from fsql.registry.registry import (
    DEFAULT_URL,
    ApplyResult,
    Changes,
    FeatureRecord,
    LineageEdge,
    LineageGraph,
    ObjectKind,
    Registry,
    RegistrySnapshot,
    RegistryTransaction,
    RunRecord,
    SearchHit,
    TrainingSetRecord,
    ViewRecord,
    ViewVersion,
    entity_fingerprint,
    from_json,
    model_fingerprint,
    source_fingerprint,
    to_json,
)

__all__ = [
    "DEFAULT_MAX_AGE",
    "RegistryCache",
    "FeatureLineage",
    "RankedHit",
    "Revision",
    "StatsRecord",
    "DEFAULT_URL",
    "ApplyResult",
    "Changes",
    "FeatureRecord",
    "LineageEdge",
    "LineageGraph",
    "ObjectKind",
    "Registry",
    "RegistrySnapshot",
    "RegistryTransaction",
    "RunRecord",
    "SearchHit",
    "TrainingSetRecord",
    "ViewRecord",
    "ViewVersion",
    "entity_fingerprint",
    "from_json",
    "model_fingerprint",
    "source_fingerprint",
    "to_json",
]
