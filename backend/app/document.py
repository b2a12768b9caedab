"""A document built once from blocks (headings, paragraphs, tables, lists, code, figures) and rendered to HTML or to
Markdown: the reproduction report (report.py) says what it says in one place, and each rendering only decides how.

All text in the blocks is plain text, never markup: each renderer escapes it for its format. HTML escapes it as
HTML; Markdown escapes it for Markdown and for HTML alike (a Markdown renderer may pass raw HTML through, so a name
such as `<img src=x onerror=…>` must reach it as text, not as a tag), and puts code in fences no text can close.
Torch-free, like the rest of the backend.
"""
from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Em:
    """Emphasised words inside a paragraph, a list item or a cell."""
    text: str


@dataclass
class Swatch:
    """A run's look (core.palette: colour and marker) in a cell, beside `text`."""
    colour: str
    symbol: str
    glyph: str
    text: str = ""


Inline = str | Em | Swatch
Content = str | list  # text, or a list of Inline pieces


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    content: Content
    muted: bool = False


@dataclass
class Table:
    header: list[str]
    rows: list[list[Content]]
    cls: str = ""
    row_classes: list[str] | None = None


@dataclass
class Bullets:
    """A list; each item is its content and its sub-items."""
    items: list[tuple[Content, list[Content]]]


@dataclass
class Code:
    text: str
    lang: str = ""
    cls: str = ""


@dataclass
class Figure:
    """A Plotly figure (drawn by the HTML's inlined bundle) and its numbers as blocks: what Markdown shows in its
    place, and what HTML offers under it."""
    id: str
    figure: dict
    numbers: list = field(default_factory=list)


Block = Heading | Para | Table | Bullets | Code | Figure


@dataclass
class Document:
    title: str
    blocks: list[Block]


def _pieces(content: Content) -> list[Inline]:
    return [content] if isinstance(content, str) else list(content)


# -- HTML ---------------------------------------------------------------------------------------------------------
def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _html_inline(content: Content) -> str:
    out = []
    for p in _pieces(content):
        if isinstance(p, Em):
            out.append(f"<em>{_e(p.text)}</em>")
        elif isinstance(p, Swatch):
            out.append(f'<span class="look" style="color:{_e(p.colour)}" data-symbol="{_e(p.symbol)}" '
                       f'title="{_e(p.colour)} {_e(p.symbol)}">{_e(p.glyph)}</span>&nbsp;{_e(p.colour)}{_e(p.text)}')
        else:
            out.append(_e(p))
    return "".join(out)


def _json_script(obj: Any) -> str:
    """JSON safe inside a <script>: no '</' can close it."""
    return json.dumps(obj, default=str).replace("</", "<\\/").replace("<!--", "<\\!--")


def _html_block(b: Block) -> str:
    if isinstance(b, Heading):
        return f"<h{b.level}>{_e(b.text)}</h{b.level}>"
    if isinstance(b, Para):
        return ('<p class="muted">' if b.muted else "<p>") + _html_inline(b.content) + "</p>"
    if isinstance(b, Table):
        head = "".join(f"<th>{_e(h)}</th>" for h in b.header)
        body = "".join((f'<tr class="{_e(b.row_classes[i])}">' if b.row_classes else "<tr>")
                       + "".join(f"<td>{_html_inline(c)}</td>" for c in r) + "</tr>" for i, r in enumerate(b.rows))
        return f'<table class="{_e(b.cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    if isinstance(b, Bullets):
        return "<ul>" + "".join(
            f"<li>{_html_inline(c)}" + ("<ul>" + "".join(f"<li>{_html_inline(s)}</li>" for s in subs) + "</ul>"
                                        if subs else "") + "</li>" for c, subs in b.items) + "</ul>"
    if isinstance(b, Code):
        return f'<pre class="{_e(b.cls)}">{_e(b.text)}</pre>'
    if isinstance(b, Figure):
        numbers = "".join(_html_block(x) for x in b.numbers)
        return (f'<div class="figure" id="{_e(b.id)}"></div>'
                + (f"<details><summary>The numbers</summary>{numbers}</details>" if numbers else ""))
    raise TypeError(f"not a block: {b!r}")


def to_html(doc: Document, head: str = "", css: str = "") -> str:
    """One HTML file: the blocks, then a script that draws the figures with Plotly (`head` carries the bundle)."""
    figs = {b.id: b.figure for b in doc.blocks if isinstance(b, Figure)}
    script = ("const FIGURES = " + _json_script(figs) + ";\n"
              "for (const [id, f] of Object.entries(FIGURES)) Plotly.newPlot(id, f.data, f.layout, "
              "{displaylogo: false, responsive: true});")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(doc.title)}</title><style>{css}</style>{head}</head><body>"
            f"<h1>{_e(doc.title)}</h1>{''.join(_html_block(b) for b in doc.blocks)}"
            f"<script>{script}</script></body></html>\n")


# -- Markdown -----------------------------------------------------------------------------------------------------
# Inline Markdown (emphasis, code, links, images, strikethrough, tables' cells) loses its meaning behind a backslash;
# HTML's three characters become entities, which every renderer shows as the characters and none reads as a tag.
_MD_ESCAPE = re.compile(r"([\\`*_\[\]~|!{}])")
# What starts a block only at the start of a line (a heading, a list item, a rule, a setext underline, an ordered
# list's number): escaped there, in a paragraph or a list item; a table's cell starts no block.
_MD_LINE_START = re.compile(r"^(\s*)(?:([#+\-=])|(\d{1,9})([.)])(?=\s|$))")


def md_text(s: Any, line_start: bool = False) -> str:
    """Plain text as Markdown that renders as that text, and never as markup or HTML (one line: breaks become
    spaces). `line_start`: the text begins a line, where a few characters would start a block."""
    s = " ".join(str(s).splitlines())
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = _MD_ESCAPE.sub(r"\\\1", s)
    if line_start:
        s = _MD_LINE_START.sub(lambda m: m.group(1) + ("\\" + m.group(2) if m.group(2) else
                                                       m.group(3) + "\\" + m.group(4)), s)
    return s


def _md_inline(content: Content, line_start: bool = False) -> str:
    out = []
    for i, p in enumerate(_pieces(content)):
        if i == 0 and line_start and isinstance(p, str):
            out.append(md_text(p, line_start=True))
            continue
        if isinstance(p, Em):
            out.append(f"*{md_text(p.text)}*" if p.text.strip() else md_text(p.text))
        elif isinstance(p, Swatch):
            out.append(md_text(f"{p.glyph} {p.colour} {p.symbol}" + (f" {p.text}" if p.text else "")))
        else:
            out.append(md_text(p))
    return "".join(out)


def _fence(text: str) -> str:
    """A backtick fence longer than any run of backticks in `text`: nothing inside can close it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _md_block(b: Block) -> str:
    if isinstance(b, Heading):
        return f"{'#' * b.level} {md_text(b.text)}\n"
    if isinstance(b, Para):
        return _md_inline(b.content, line_start=True) + "\n"
    if isinstance(b, Table):
        return "\n".join(["| " + " | ".join(md_text(h) for h in b.header) + " |", "|" + "---|" * len(b.header),
                          *("| " + " | ".join(_md_inline(c) for c in r) + " |" for r in b.rows)]) + "\n"
    if isinstance(b, Bullets):
        lines = []
        for c, subs in b.items:
            lines.append("- " + _md_inline(c, line_start=True))
            lines += ["  - " + _md_inline(s, line_start=True) for s in subs]
        return "\n".join(lines) + "\n"
    if isinstance(b, Code):
        fence = _fence(b.text)
        return f"{fence}{b.lang}\n{b.text}\n{fence}\n"
    if isinstance(b, Figure):
        return "\n".join(_md_block(x) for x in b.numbers)
    raise TypeError(f"not a block: {b!r}")


def to_markdown(doc: Document) -> str:
    return f"# {md_text(doc.title)}\n\n" + "\n".join(x for x in (_md_block(b) for b in doc.blocks) if x)
