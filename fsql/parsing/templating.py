"""Jinja rendering before parsing, with a map from rendered lines back to the file's lines.

Most feature files contain no Jinja and map one to one. When a template expands or removes lines, a
line diff between the source and the rendered text maps every unchanged line exactly and every
rewritten region to where it starts in the file, which is where a user would look.
"""

from __future__ import annotations

import difflib
import traceback
from pathlib import Path
from typing import Any

import jinja2

from fsql.errors import FeatureFileError

_MISSING = object()


class Renderer:
    def __init__(self, vars: dict[str, Any], macros_dir: Path | None, root: Path) -> None:
        self.vars = dict(vars)
        self.env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        self.env.globals["var"] = self._var
        self.root = root
        if macros_dir is not None and macros_dir.is_dir():
            for file in sorted(macros_dir.rglob("*.sql")):
                shown = str(file.relative_to(root))
                module = self._template(file.read_text(), shown).module
                for name in dir(module):
                    if not name.startswith("_"):
                        self.env.globals[name] = getattr(module, name)

    def _var(self, name: str, default: Any = _MISSING) -> Any:
        if name in self.vars:
            return self.vars[name]
        if default is not _MISSING:
            return default
        raise jinja2.UndefinedError(f"var '{name}' is not defined; set it under [vars] in fsql.toml or pass --var {name}=...")

    def _template(self, text: str, shown: str) -> jinja2.Template:
        try:
            return self.env.from_string(text, globals={"__fsql_file__": shown})
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
            line = _template_line(e)
            detail = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
            raise FeatureFileError(f"Jinja error: {detail}", path=shown, line=line) from None
        return rendered, line_map(text, rendered)


def _template_line(error: BaseException) -> int | None:
    """The template line from Jinja's rewritten traceback (frames named '<template>')."""
    line = None
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename == "<template>":
            line = frame.lineno
    return line


def line_map(source: str, rendered: str) -> list[int]:
    src, out = source.splitlines(), rendered.splitlines()
    mapping = [1] * (len(out) + 1)
    matcher = difflib.SequenceMatcher(a=src, b=out, autojunk=False)
    for tag, i1, _i2, j1, j2 in matcher.get_opcodes():
        for j in range(j1, j2):
            mapping[j] = (i1 + (j - j1) + 1) if tag == "equal" else i1 + 1
    if out:
        mapping[len(out)] = mapping[len(out) - 1]
    return mapping
