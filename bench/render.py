"""The report as data (sections of paragraphs, tables and figures) and its two renderings: HTML and Markdown.

The HTML is self-contained (PNGs embedded as base64 data URIs); the Markdown links the PNG files beside it.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

from .colours import solver_style
from .plots import Figure


@dataclass
class Table:
    columns: list[str]
    rows: list[list]  # cells: text, or (text, css class) with class in good | bad | warn
    swatch: str | None = None  # column whose values are solver names: shown with the solver's colour


@dataclass
class Section:
    title: str
    # blocks: a str paragraph, ("h3", text), ("p", text, css class or None), Table or Figure
    blocks: list = field(default_factory=list)


CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1250px;margin:24px auto;
padding:0 16px;color:#1d1d1f;font-size:15px;line-height:1.45}h1{font-size:26px}h2{margin-top:36px;
border-bottom:2px solid #ddd;padding-bottom:4px}h3{margin:22px 0 6px;font-size:16px}table{border-collapse:collapse;
margin:8px 0 14px;font-size:13.5px}th,td{border:1px solid #d6d6d6;padding:4px 9px;text-align:left;
vertical-align:top}td:first-child{white-space:nowrap}th{background:#f2f2f4}tr:nth-child(even) td{background:#fafafa}.good{color:#17692f;
font-weight:600}td.bad{background:#fde2df!important}.bad{color:#a50e0e;font-weight:600}td.warn{background:#fff4d1!important}
p{margin:6px 0}.sw{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:6px;vertical-align:-1px}
figure{margin:10px 0 26px}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:13px}
p.meta{color:#555}p.toc{font-size:14px}p.toc a{color:#1a5fb4;text-decoration:none}"""


def _cell(c) -> tuple[str, str | None]:
    return (str(c[0]), c[1]) if isinstance(c, tuple) else (str(c), None)


def md_escape(text) -> str:
    """Text from the data made inert in Markdown: HTML's < > & as entities, table pipes escaped, one line."""
    s = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    return s.replace("\r", " ").replace("\n", " ")


def _swatch(solver: str) -> str:
    """The solver's colour as a small square: filled, or outlined for a hollow style (other libraries' solvers)."""
    st = solver_style(solver)
    fill = f"border:2px solid {st.colour};box-sizing:border-box" if st.hollow else f"background:{st.colour}"
    return f"<span class='sw' style='{fill}'></span>"


def _html_block(b) -> str:
    e = html.escape
    if isinstance(b, str):
        return f"<p>{e(b)}</p>"
    if isinstance(b, tuple) and b[0] == "h3":
        return f"<h3>{e(b[1])}</h3>"
    if isinstance(b, tuple):
        return f"<p{f' class={b[2]}' if b[2] else ''}>{e(b[1])}</p>"
    if isinstance(b, Figure):
        data = base64.b64encode(b.path.read_bytes()).decode()
        return (f"<figure><img alt='{e(b.title)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{e(b.caption)}</figcaption></figure>")
    out = ["<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in b.columns) + "</tr>"]
    for row in b.rows:
        tds = []
        for name, c in zip(b.columns, row):
            text, cls = _cell(c)
            sw = _swatch(text) if name == b.swatch else ""
            tds.append(f"<td{f' class={cls}' if cls else ''}>{sw}{e(text)}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    return "\n".join(out) + "</table>"


def render_html(title: str, meta: str, sections: list[Section]) -> str:
    """One HTML page with its CSS and images inline."""
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><p class='meta'>{html.escape(meta)}</p>"]
    out.append("<p class='toc'>" + " · ".join(f"<a href='#s{i}'>{html.escape(sec.title)}</a>"
                                             for i, sec in enumerate(sections)) + "</p>")
    for i, sec in enumerate(sections):
        out.append(f"<h2 id='s{i}'>{html.escape(sec.title)}</h2>")
        out += [_html_block(b) for b in sec.blocks]
    return "\n".join(out) + "\n</body></html>\n"


def _md_block(b) -> list[str]:
    esc = md_escape
    if isinstance(b, str):
        return [esc(b), ""]
    if isinstance(b, tuple) and b[0] == "h3":
        return [f"### {esc(b[1])}", ""]
    if isinstance(b, tuple):
        return [f"**{esc(b[1])}**" if b[2] == "bad" else esc(b[1]), ""]
    if isinstance(b, Figure):
        return [f"![{esc(b.title)}]({b.path.name})", "", f"*{esc(b.caption)}*", ""]
    out = ["| " + " | ".join(map(esc, b.columns)) + " |", "|" + "---|" * len(b.columns)]
    for row in b.rows:
        out.append("| " + " | ".join(f"**{esc(t)}**" if cls == "bad" else esc(t) for t, cls in map(_cell, row)) + " |")
    return out + [""]


def render_md(title: str, meta: str, sections: list[Section]) -> str:
    """Markdown with pipe tables; figures link the PNG files written beside it; regressions in bold; every text
    escaped (md_escape), so that data cannot inject HTML or break a table."""
    out = [f"# {md_escape(title)}", "", md_escape(meta), ""]
    for sec in sections:
        out += [f"## {md_escape(sec.title)}", ""]
        for b in sec.blocks:
            out += _md_block(b)
    return "\n".join(out)
