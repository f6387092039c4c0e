"""HTML for the console without a template engine: every value is escaped unless it is `Html`
(markup this package built from escaped parts). SIP values are attacker-chosen (a From display
name of `<script>` is three bytes of effort), so escaping is the default, not a choice made at
each call.

    page = render("layout.html", title="Calls", body=table(["caller"], [[call.caller]]))

Templates are files of this package (`templates/*.html`, `string.Template` syntax: `$name`),
included as package data.
"""
from __future__ import annotations

import html
import string
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable


VOID = frozenset({"input", "br", "meta", "link", "img", "hr"})


class Html(str):
    """Markup that is safe to put into a page as is. `Html + x` escapes x (unless it is Html)."""

    def __add__(self, other: Any) -> "Html":
        return Html(str.__add__(self, esc(other)))

    def __radd__(self, other: Any) -> "Html":
        return Html(str.__add__(esc(other), self))


def esc(value: Any) -> Html:
    if isinstance(value, Html):
        return value
    return Html(html.escape("" if value is None else str(value), quote=True))


def join(parts: Iterable[Any], sep: str = "") -> Html:
    return Html(esc(sep).join(esc(p) for p in parts))


def tag(element: str, content: Any = "", /, **attrs: Any) -> Html:
    """<element attr="..">content</element>; attribute names: trailing _ dropped, _ -> -."""
    a = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items()
                if v is not None and v is not False)
    if element in VOID:
        return Html(f"<{element}{a}>")
    return Html(f"<{element}{a}>{esc(content)}</{element}>")


def table(head: list[str], rows: Iterable[Iterable[Any]], *, id_: str | None = None, cls: str | None = None,
          empty: str = "nothing") -> Html:
    body = [tag("tr", join(tag("td", c) for c in row)) for row in rows]
    if not body:
        body = [tag("tr", tag("td", empty, colspan=str(max(len(head), 1)), class_="empty"))]
    thead = tag("thead", tag("tr", join(tag("th", h) for h in head))) if any(head) else Html("")
    return tag("table", thead + tag("tbody", join(body)), id=id_, class_=cls)


@lru_cache(maxsize=None)
def _template(name: str) -> string.Template:
    return string.Template(resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8"))


def render(name: str, **values: Any) -> Html:
    return Html(_template(name).substitute({k: esc(v) for k, v in values.items()}))


def static_file(name: str) -> bytes | None:
    """A file of static/ (no path separators: nothing outside that directory)."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    f = resources.files(__package__).joinpath("static", name)
    try:
        return f.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
