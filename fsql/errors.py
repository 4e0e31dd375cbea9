"""The FsqlError tree.

Every error a user can cause carries where it happened (file and line when there is one) and, where it
helps, a hint saying what to do. ``str(error)`` is the one line the CLI prints:
``features/orders.sql:12: unknown source 'order'; did you mean 'orders'?``.

This module imports nothing from fsql so that every layer can raise these errors.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit


class FsqlError(Exception):
    """Base of every error fsql raises on purpose."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line
        self.hint = hint

    @property
    def location(self) -> str | None:
        if self.path is None:
            return None
        return f"{self.path}:{self.line}" if self.line is not None else self.path

    def __str__(self) -> str:
        # One line, always: messages from engines and sqlglot may carry newlines and caret diagrams.
        message = " ".join(line.strip() for line in self.message.splitlines() if line.strip())
        text = f"{self.location}: {message}" if self.location else message
        if self.hint:
            text += f"; {self.hint}"
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "path": self.path,
            "line": self.line,
            "hint": self.hint,
        }


class ConfigError(FsqlError):
    """fsql.toml is missing, malformed, or names something that does not exist."""


class MissingExtraError(ConfigError):
    """The configuration needs an optional package that is not installed; the hint names the extra."""


class FeatureFileError(FsqlError):
    """A feature or training-set file is malformed: header, Jinja, SQL or columns."""


class ResolutionError(FeatureFileError):
    """A name in a query does not resolve to a source or view, or the view graph has a cycle."""


class CompileError(FsqlError):
    """A definition cannot be compiled for the target dialect with the same semantics."""


class EngineError(FsqlError):
    """The warehouse engine failed or is unreachable."""


class RegistryError(FsqlError):
    """The registry database failed or is unreachable."""


class OnlineStoreError(FsqlError):
    """The online store failed or is unreachable."""


class MaterializationError(FsqlError):
    """A materialization run failed; its watermark did not advance."""


class NotFoundError(FsqlError):
    """A named object (view, training set, feature, entity) does not exist."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A 'did you mean' hint for a misspelt name, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"did you mean '{matches[0]}'?" if matches else None


def redact_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))
