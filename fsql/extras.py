"""Optional dependencies, imported where first needed.

A core install (``pip install fsql``) runs the embedded defaults; a configuration that needs more
(a PostgreSQL warehouse or registry) fails with one line naming the extra to install, never a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from fsql.errors import MissingExtraError

# What each extra of pyproject.toml's [project.optional-dependencies] enables, as users call it.
EXTRAS = {"postgres": "PostgreSQL support", "ml": "scikit-learn models", "spark": "the Spark warehouse"}


def require_extra(module: str, extra: str) -> ModuleType:
    """Import ``module``, which the ``fsql[extra]`` install provides, or raise ``MissingExtraError``."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        # Any missing module counts: the extra's package may be there without one of its own dependencies.
        raise MissingExtraError(
            f"{EXTRAS[extra]} needs extra packages", hint=f"run pip install 'fsql[{extra}]'"
        ) from None
