"""HTML building blocks of the run report: one self-contained page, inline CSS, no script.

Figures are embedded as base64 PNG (``data:`` URIs) so ``index.html`` alone is the whole
report: it opens from the file system in any browser, with no server and no network.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

CSS = """
:root { --ink: #1d2430; --muted: #5b6573; --line: #d9dee6; --accent: #1f5fa8; --warn: #a35200;
        --bad: #b22222; --good: #2e7d32; --paper: #ffffff; --bg: #f4f6f9; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1020px; margin: 0 auto; padding: 24px 28px 60px; background: var(--paper);
       box-shadow: 0 0 0 1px var(--line); }
header h1 { margin: 0 0 4px; font-size: 26px; }
header .sub { color: var(--muted); margin: 0; }
nav { margin: 14px 0 6px; font-size: 13px; }
nav a { color: var(--accent); margin-right: 14px; text-decoration: none; }
h2 { font-size: 19px; margin: 34px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 6px; }
p { margin: 6px 0 10px; }
code { font: 13px/1.4 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
       background: #eef1f5; padding: 1px 4px; border-radius: 3px; }
.status { display: inline-block; padding: 2px 10px; border-radius: 12px; font-size: 13px;
          font-weight: 600; margin-top: 8px; }
.status.done { background: #e3f2e5; color: var(--good); }
.status.open { background: #fff1e0; color: var(--warn); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(210px, 1fr)); gap: 12px;
         margin: 14px 0; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; background: #fbfcfd; }
.card .value { font-size: 24px; font-weight: 650; line-height: 1.2; }
.card .what { font-weight: 600; margin: 2px 0 6px; }
.card .basis { color: var(--muted); font-size: 12.5px; }
.card.bad .value { color: var(--bad); }
.card.warn { border-color: #f0c27a; background: #fffaf2; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13.5px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px 4px 0; text-align: left;
         vertical-align: top; }
th { color: var(--muted); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv { width: 100%; }
table.kv th { width: 48%; }
.settings { display: grid; grid-template-columns: 1fr 1fr; gap: 0 28px; }
figure { margin: 14px 0 22px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 13.5px; margin-top: 6px; }
figcaption a { color: var(--accent); }
.note { border-left: 4px solid #f0c27a; background: #fffaf2; padding: 8px 12px; margin: 10px 0; }
.note.bad { border-color: var(--bad); background: #fdf0f0; }
details { margin: 8px 0 14px; }
summary { cursor: pointer; color: var(--accent); }
.above { color: var(--bad); font-weight: 600; }
footer { margin-top: 40px; color: var(--muted); font-size: 12.5px; }
"""


@dataclass(frozen=True)
class Png:
    """One figure of the page: its PNG bytes, the file it was also written to, its caption.

    Attributes
    ----------
    name
        File name in ``report/`` (the PNG is embedded in the page and also written there).
    data
        The PNG bytes.
    caption
        Caption text (escaped when written); says what the figure rests on.
    """

    name: str
    data: bytes
    caption: str


def esc(value: object) -> str:
    """HTML-escape ``str(value)``."""
    return html.escape(str(value))


def fmt(value: object, digits: int = 4) -> str:
    """A number in ``digits`` significant figures; None as an en dash; anything else as text."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def figure(png: Png, alt: str | None = None) -> str:
    """An embedded figure with its caption and a link to the PNG file beside the page."""
    data = base64.b64encode(png.data).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt or png.caption[:120])}">'
        f'<figcaption>{esc(png.caption)} <a href="{esc(png.name)}">PNG</a></figcaption></figure>'
    )


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Sequence[bool] = ()) -> str:
    """A table; cells are escaped; ``numeric[i]`` right-aligns column i."""
    num = list(numeric) + [False] * (len(headers) - len(numeric))
    head = "".join(f'<th class="{"num" if n else ""}">{esc(h)}</th>' for h, n in zip(headers, num, strict=True))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"num" if n else ""}">{esc(c)}</td>' for c, n in zip(row, num, strict=True)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def key_values(rows: Iterable[tuple[str, object]], title: str = "") -> str:
    """A two-column table of settings (values escaped)."""
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>" for k, v in rows)
    head = f"<h3>{esc(title)}</h3>" if title else ""
    return f'{head}<table class="kv"><tbody>{body}</tbody></table>'


def card(value: str, what: str, basis: str, kind: str = "") -> str:
    """A headline number: big value, what it is, and what it rests on (all escaped)."""
    return (
        f'<div class="card {esc(kind)}"><div class="value">{esc(value)}</div>'
        f'<div class="what">{esc(what)}</div><div class="basis">{esc(basis)}</div></div>'
    )


def section(anchor: str, title: str, body: str) -> str:
    """A titled section with an anchor for the page's navigation."""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def note(text_html: str, bad: bool = False) -> str:
    """A highlighted note; ``text_html`` must already be escaped."""
    return f'<div class="note{" bad" if bad else ""}">{text_html}</div>'


def document(title: str, header_html: str, sections: Sequence[tuple[str, str, str]], footer_html: str) -> str:
    """The whole page: ``sections`` are ``(anchor, title, body html)``."""
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    body = "".join(section(a, t, b) for a, t, b in sections)
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<link rel='icon' href='data:,'>"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
        f"<header>{header_html}</header><nav>{nav}</nav>{body}<footer>{footer_html}</footer>"
        "</main></body></html>\n"
    )
