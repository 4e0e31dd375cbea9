"""A nesting limit for feature-file SQL, checked on tokens before sqlglot's recursive parser runs.

sqlglot parses and generates nested expressions by recursion, about twenty Python frames per level of
parentheses, so a few dozen levels exhaust Python's stack and a hostile or generated file ends in a
RecursionError thousands of lines long. Hand-written feature SQL stays far below the limit; a deeper
query is refused with one line, and whatever still recurses too deep becomes the same error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlglot.tokens import Token, TokenType

from fsql.errors import FeatureFileError

MAX_NESTING = 32
_OPEN = {TokenType.L_PAREN, TokenType.L_BRACKET, TokenType.L_BRACE, TokenType.CASE}
_CLOSE = {TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.R_BRACE, TokenType.END}
HINT = "flatten the query with CTEs (WITH name AS (...)) or split it into views"


def check_nesting(tokens: Sequence[Token], shown: str, file_line: Callable[[int], int] = int) -> None:
    """Refuse parentheses, brackets and CASE nested deeper than MAX_NESTING.

    ``file_line`` maps a token's (rendered) line to the file's line, for the message."""
    depth = 0
    for token in tokens:
        kind = token.token_type
        if kind in _OPEN:
            depth += 1
            if depth > MAX_NESTING:
                raise too_deep(shown, file_line(token.line))
        elif kind in _CLOSE:
            depth = max(depth - 1, 0)


def too_deep(shown: str, line: int | None = None) -> FeatureFileError:
    where = f" at line {line}" if line is not None else ""
    return FeatureFileError(
        f"query nested too deeply (more than {MAX_NESTING} levels{where})", path=shown, hint=HINT
    )
