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
    """Base of every error fsql raises on purpose.

    ``status`` is the HTTP status a server answers with; it comes from the class (bad input 400, not
    found 404, conflict 409, unavailable 503, internal 500), so no caller ever parses a message.
    """

    status: int = 500

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


# The five families a server maps to a status. Concrete errors below derive from exactly one of them
# (the "unavailable" variants also derive from their component's error, so `except EngineError` still
# catches an unreachable warehouse).


class BadInputError(FsqlError):
    """What the user wrote or sent is wrong: a file, the config, a request, a query."""

    status = 400


class NotFoundError(FsqlError):
    """A named object (view, training set, feature, entity, model, run) does not exist."""

    status = 404


class ConflictError(FsqlError):
    """The request is valid but the project's state refuses it: not built yet, breaking, busy."""

    status = 409


class UnavailableError(FsqlError):
    """A server fsql depends on (warehouse, registry, online store) cannot be reached."""

    status = 503


class InternalError(FsqlError):
    """A component failed in a way the user's input does not explain."""

    status = 500


class ConfigError(BadInputError):
    """fsql.toml is missing, malformed, or names something that does not exist."""


class MissingExtraError(ConfigError):
    """The configuration needs an optional package that is not installed; the hint names the extra."""


class FeatureFileError(BadInputError):
    """A feature or training-set file is malformed: header, Jinja, SQL or columns."""


class ResolutionError(FeatureFileError):
    """A name in a query does not resolve to a source or view, or the view graph has a cycle."""


class RuleViolations(FeatureFileError):
    """Feature files break the project's [governance] rules. One error carries every violation, so a
    build reports them all at once; ``str()`` is one ``path:line: message; hint`` line per violation
    (the only FsqlError whose text spans several lines), and path/line are the first violation's."""

    def __init__(self, violations: list[FeatureFileError]) -> None:
        first = violations[0]
        super().__init__(first.message, path=first.path, line=first.line, hint=first.hint)
        self.violations = violations

    def __str__(self) -> str:
        return "\n".join(FeatureFileError.__str__(v) for v in self.violations)

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "violations": [v.to_dict() for v in self.violations]}


class CompileError(BadInputError):
    """A definition cannot be compiled for the target dialect with the same semantics."""


class RequestError(BadInputError):
    """A call's arguments are wrong: entity keys, feature references, a spine, an option."""


class QueryError(BadInputError):
    """SQL given by the user (a query, a spine) failed on the warehouse."""


class NotBuiltError(ConflictError):
    """The registry holds nothing yet, or not what the call needs: run `fsql build`."""


class ContentionError(ConflictError):
    """Another build or materialization holds the lock this call needs."""


class EngineError(InternalError):
    """The warehouse engine failed."""


class EngineUnavailableError(UnavailableError, EngineError):
    """The warehouse cannot be reached or opened."""


class RegistryError(InternalError):
    """The registry database failed."""


class RegistryUnavailableError(UnavailableError, RegistryError):
    """The registry database cannot be reached or opened."""


class OnlineStoreError(InternalError):
    """The online store failed."""


class OnlineStoreUnavailableError(UnavailableError, OnlineStoreError):
    """The online store cannot be reached."""


class MaterializationError(FsqlError):
    """A materialization run failed; its watermark did not advance. Its status is its cause's."""

    def __init__(self, message: str, *, cause: FsqlError | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.cause = cause
        self.status = cause.status if cause is not None else InternalError.status


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
