"""fsql: a SQL-first feature store."""

from fsql.errors import FsqlError
from fsql.store import Store

__all__ = ["FsqlError", "Store"]
__version__ = "0.1.0"
