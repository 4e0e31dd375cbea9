"""Jinja rendering before parsing, with a map from rendered lines back to the file's lines.

Feature files are untrusted input: `fsql plan` runs on pull requests. Templates therefore render in
Jinja's immutable sandbox with almost nothing in scope: ``var()``, ``range()`` (bounded by the
sandbox) and the project's macros. Attribute access to private members, calls to unsafe callables
and huge ``*``/``**`` results are refused as a located error, so a template can compute text but
never reach Python.

Most feature files contain no Jinja and map one to one. When a template expands or removes lines, a
line diff between the source and the rendered text maps every unchanged line exactly and every
rewritten region to where it starts in the file, which is where a user would look.
"""

from __future__ import annotations

import difflib
import operator
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError, safe_range

from fsql.errors import FeatureFileError

_MISSING = object()
# Above this many characters (or digits), a template's arithmetic is refused: it is a way to exhaust
# memory, never a way to write a query.
MAX_TEMPLATE_VALUE = 1_000_000
SANDBOX_HINT = "feature files may only use var(), range(), Jinja statements and the project's macros"


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "**":
            # the result has about right * bits(left) bits
            ints = isinstance(left, int) and isinstance(right, int)
            if ints and right > 0 and abs(left) > 1 and right * abs(left).bit_length() > MAX_TEMPLATE_VALUE:
                raise SecurityError("the result of '**' is too large")
            return operator.pow(left, right)
        for sized, count in ((left, right), (right, left)):
            if isinstance(sized, (str, list, tuple)) and isinstance(count, int) and len(sized) * count > MAX_TEMPLATE_VALUE:
                raise SecurityError("the result of '*' is too large")
        return operator.mul(left, right)


def read_text(file: Path, shown: str) -> str:
    """A feature or macro file's text; invalid UTF-8 is a one-line error naming the byte and line."""
    data = file.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise FeatureFileError(f"not valid UTF-8 (byte 0x{data[e.start]:02x} at line {line})", path=shown) from None


class Renderer:
    def __init__(self, vars: dict[str, Any], macros_dir: Path | None, root: Path) -> None:
        self.root = root
        self.env = _Sandbox(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        # Jinja's default globals (cycler, joiner, lipsum, namespace, dict) are the classic ways out
        # of a template; only what a feature file needs is put back.
        self.env.globals.clear()
        self.env.globals["var"] = _var_function(dict(vars))
        self.env.globals["range"] = safe_range
        if macros_dir is not None and macros_dir.is_dir():
            for file in sorted(macros_dir.rglob("*.sql")):
                shown = str(file.relative_to(root))
                template = self._template(read_text(file, shown), shown)
                try:
                    module = template.module
                except Exception:  # top-level code of a macros file runs when it is loaded
                    try:
                        self.env.handle_exception()  # re-raises with template lines in the traceback
                    except Exception as e:
                        raise _render_error(e, shown) from None
                for name in dir(module):
                    if not name.startswith("_"):
                        self.env.globals[name] = getattr(module, name)

    def _template(self, text: str, shown: str) -> jinja2.Template:
        # Compiled with the file's name so traceback frames tell a macro's lines from the caller's.
        try:
            code = self.env.compile(text, filename=shown)
            return self.env.template_class.from_code(self.env, code, self.env.make_globals(None))
        except jinja2.TemplateSyntaxError as e:
            raise FeatureFileError(f"Jinja syntax error: {e.message}", path=shown, line=e.lineno) from None

    def render(self, text: str, shown: str) -> tuple[str, list[int]]:
        """The rendered text and, for each rendered line (0-based), its 1-based line in the file."""
        if "{{" not in text and "{%" not in text and "{#" not in text:
            return text, list(range(1, text.count("\n") + 2))
        template = self._template(text, shown)
        try:
            rendered = template.render()
        except Exception as e:  # a template may raise anything (a macro dividing by zero, a bad filter...)
            raise _render_error(e, shown) from None
        return rendered, line_map(text, rendered)


def _var_function(values: dict[str, Any]) -> Callable[..., Any]:
    # A plain closure, not a bound method: nothing reachable from it leads back to the renderer.
    def var(name: str, default: Any = _MISSING) -> Any:
        if name in values:
            return values[name]
        if default is not _MISSING:
            return default
        raise jinja2.UndefinedError(
            f"var '{name}' is not defined; set it under [vars] in fsql.toml or pass --var {name}=..."
        )

    return var


def _render_error(error: BaseException, shown: str) -> FeatureFileError:
    line = _template_line(error, shown)
    message = (getattr(error, "message", None) or str(error)).rstrip(".")
    inner = _innermost_other_template(error, shown)
    if inner:
        message += f" (in {inner[0]}:{inner[1]})"
    if isinstance(error, SecurityError):
        return FeatureFileError(f"unsafe template code: {message}", path=shown, line=line, hint=SANDBOX_HINT)
    if isinstance(error, TypeError) and "no loader" in message:
        return FeatureFileError(
            "Jinja error: include, import and extends are not supported", path=shown, line=line,
            hint="define shared code as macros in the project's macros folder; they are available everywhere",
        )
    if isinstance(error, jinja2.UndefinedError):
        return FeatureFileError(f"Jinja error: {message}", path=shown, line=line)
    return FeatureFileError(f"Jinja error: {type(error).__name__}: {message}", path=shown, line=line)


def _template_line(error: BaseException, shown: str) -> int | None:
    """The line in ``shown`` from Jinja's rewritten traceback (frames carry the template's name)."""
    line = None
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename == shown:
            line = frame.lineno
    return line


def _innermost_other_template(error: BaseException, shown: str) -> tuple[str, int] | None:
    """Where in a macros file the error happened, when a feature file's macro call failed there."""
    frames = traceback.extract_tb(error.__traceback__)
    inner = next((f for f in reversed(frames) if f.filename != shown and f.filename.endswith(".sql")), None)
    return (inner.filename, inner.lineno or 0) if inner else None


def line_map(source: str, rendered: str) -> list[int]:
    """For each rendered line (0-based), the 1-based source line it comes from.

    ``SequenceMatcher`` is quadratic on long runs of repeated lines (a large IN list written one value
    a line, or a loop's output), so lines shared at both ends are mapped directly and the middle is
    diffed as runs of equal lines; within two matched runs lines pair up one to one.
    """
    src, out = source.splitlines(), rendered.splitlines()
    mapping = [1] * (len(out) + 1)
    head = 0
    limit = min(len(src), len(out))
    while head < limit and src[head] == out[head]:
        mapping[head] = head + 1
        head += 1
    tail = 0
    while tail < limit - head and src[-1 - tail] == out[-1 - tail]:
        mapping[len(out) - 1 - tail] = len(src) - tail
        tail += 1
    a_text, a_start, a_count = _runs(src, head, len(src) - tail)
    b_text, b_start, b_count = _runs(out, head, len(out) - tail)
    matcher = difflib.SequenceMatcher(a=a_text, b=b_text, autojunk=False)
    for tag, i1, _i2, j1, j2 in matcher.get_opcodes():
        for j in range(j1, j2):
            if tag == "equal":
                i = i1 + j - j1
                last = a_start[i] + a_count[i]  # 1-based line of the run's last source line
                for k in range(b_count[j]):
                    mapping[b_start[j] + k] = min(a_start[i] + k + 1, last)
            else:
                # a rewritten region maps to where it starts in the file
                first = a_start[i1] + 1 if i1 < len(a_start) else len(src) - tail + 1
                for k in range(b_count[j]):
                    mapping[b_start[j] + k] = min(first, max(len(src), 1))
    if out:
        mapping[len(out)] = mapping[len(out) - 1]
    return mapping


def _runs(lines: list[str], start: int, stop: int) -> tuple[list[str], list[int], list[int]]:
    """Texts, first indexes and lengths of the runs of equal consecutive lines in lines[start:stop]."""
    segment = lines[start:stop]
    if not segment:
        return [], [], []
    firsts = [0, *(i for i in range(1, len(segment)) if segment[i] != segment[i - 1])]
    ends = [*firsts[1:], len(segment)]
    return [segment[i] for i in firsts], [start + i for i in firsts], [e - f for f, e in zip(firsts, ends, strict=True)]
