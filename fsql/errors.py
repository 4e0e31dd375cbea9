"""The FsqlError tree.

Every error a user can cause carries where it happened (file and line when there is one) and, where it
helps, a hint saying what to do. ``str(error)`` is the one line the CLI prints:
``features/orders.sql:12: unknown source 'order'; did you mean 'orders'?``.

This module imports nothing from fsql so that every layer can raise these errors.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit


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
    """The URL (or libpq ``key=value`` string) with every secret replaced by ``***``, for messages,
    logs, ``--json`` output and run records.

    Secrets are the userinfo password (``user:***@``) and the query parameters in
    ``_SECRET_PARAMETERS``, which PostgreSQL (libpq), SQLAlchemy and redis-py all accept. Everything
    else is kept as written, so the user still recognises the URL. Text that cannot be split as a
    URL is redacted by pattern rather than echoed.
    """
    secret = "|".join(sorted(_SECRET_PARAMETERS))
    if "://" not in url:
        # libpq keyword/value connection strings: host=... password=... (values may be quoted)
        return re.sub(rf"(?i)\b({secret})(\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1\2***", url)
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
    except ValueError:
        netloc_redacted = re.sub(r"^([^:/]+://)([^@/]*?):[^@/]*@", r"\1\2:***@", url)
        return re.sub(rf"(?i)([?&;]({secret})=)[^&;#]*", r"\1***", netloc_redacted)
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    query = "&".join(_redact_parameter(p) for p in parts.query.split("&")) if parts.query else parts.query
    if netloc == parts.netloc and query == parts.query:
        return url
    # Spliced into the original text rather than rebuilt with urlunsplit, which drops the empty
    # authority of sqlite:///path.
    start = url.index("://") + 3
    rest = url[start + len(parts.netloc) :]
    if parts.query:
        before, _, after = rest.partition("?" + parts.query)
        rest = f"{before}?{query}{after}"
    return url[:start] + netloc + rest


# Query parameters whose value is a secret. sslkey/sslcert/sslrootcert are file paths, not secrets,
# and stay visible because they are what a user needs to see when a TLS connection fails.
_SECRET_PARAMETERS = frozenset({
    "password", "passwd", "pwd", "sslpassword", "token", "access_token", "auth_token", "secret",
    "client_secret", "api_key", "apikey",
})


def _redact_parameter(pair: str) -> str:
    key, sep, _value = pair.partition("=")
    return f"{key}=***" if sep and unquote(key).strip().lower() in _SECRET_PARAMETERS else pair
