"""Writes the settings table of docs/configuration.md from the one settings class, `core.settings.Settings`.

The class is the declaration: each field's environment variable (its alias, else `BLOCKLAB_<NAME>`), its default
and the comment that documents it (the comment lines right above the field and the one at the end of its line) are
read from the class itself, so the page cannot drift from it; `tests/test_docs.py` fails when the committed page
differs from what this writes. Run `python -m tools.gen_config_doc` after changing a setting.
"""
from __future__ import annotations

import ast
import inspect
import io
import tokenize
from pathlib import Path

from core import settings as settings_module
from core.settings import Settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
BEGIN = "<!-- settings table: written by tools/gen_config_doc.py from core/settings.py; do not edit by hand -->"
END = "<!-- end of settings table -->"


def _comments(source: str) -> dict[int, str]:
    """Line number -> the comment text on that line."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def field_docs() -> dict[str, str]:
    """Each field's documentation: the comment block right above it, then its end-of-line comment."""
    source = inspect.getsource(settings_module)
    lines = source.splitlines()
    comments = _comments(source)
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == settings_module.Settings.__name__)
    docs = {}
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, line = [], node.lineno - 1
        while line >= 1 and lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        text = " ".join(above + [comments[node.end_lineno]] if node.end_lineno in comments else above)
        docs[node.target.id] = text
    return docs


def _variables(name: str) -> str:
    field = Settings.model_fields[name]
    alias = field.validation_alias
    names = list(getattr(alias, "choices", [])) or ([alias] if isinstance(alias, str) else [])
    names = names or [(Settings.model_config.get("env_prefix") or "") + name.upper()]
    return " or ".join(f"`{n}`" for n in names)


def _default(name: str) -> str:
    field = Settings.model_fields[name]
    value = field.default_factory() if field.default_factory else field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path) and not value.is_absolute():
        return f"`./{value}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def table() -> str:
    """The Markdown table of every setting, in declaration order."""
    docs = field_docs()
    rows = ["| variable | default | what |", "| --- | --- | --- |"]
    for name in Settings.model_fields:
        text = docs.get(name, "").replace("|", "\\|").replace("<", "&lt;")
        rows.append(f"| {_variables(name)} | {_default(name)} | {text} |")
    return "\n".join(rows)


def render(page: str) -> str:
    """The page with its settings table replaced by the current one."""
    head, rest = page.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main() -> None:
    DOC.write_text(render(DOC.read_text()))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
