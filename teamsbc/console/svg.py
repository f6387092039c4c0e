"""The console's pictures as inline SVG built on the server (no script, no library): a peer's
24 h health strip, the calls graph, the call ladder. Colours come from classes styled in
static/console.css; every text is escaped (`html.esc`)."""
from __future__ import annotations

import time
from typing import Any, Sequence

from .html import Html, join, tag
from .ladder import Arrow, Column

STATE_CLASS = {"up": "st-up", "failing": "st-failing", "cooling": "st-cooling", "down": "st-down",
               "unknown": "st-unknown"}


def _f(x: float) -> str:
    return f"{x:.1f}"


def strip(minutes: Sequence[Sequence[Any]], now: float, *, span: float = 86400.0, bucket: float = 60.0,
          width: int = 480, height: int = 14, label: str = "") -> Html:
    """A peer's health over the last `span` seconds: one run of colour per state, grey where
    nothing was sampled (the SBC was not running)."""
    start = now - span
    rects = [tag("rect", "", x="0", y="0", width=str(width), height=str(height), class_="st-none")]
    runs: list[list] = []       # [x0, x1, state]
    for minute, state in minutes:
        if minute + bucket <= start:
            continue
        x0 = max(0.0, (minute - start) / span * width)
        x1 = min(float(width), (minute + bucket - start) / span * width)
        if runs and runs[-1][2] == state and x0 - runs[-1][1] < 0.5:
            runs[-1][1] = x1
        else:
            runs.append([x0, x1, state])
    for x0, x1, state in runs:
        rects.append(tag("rect", tag("title", f"{state}"), x=_f(min(x0, width - 2.0)), y="0",
                         width=_f(max(x1 - x0, 2.0)),
                         height=str(height), class_=STATE_CLASS.get(state, "st-unknown")))
    return tag("svg", join(rects), class_="strip", width=str(width), height=str(height),
               viewBox=f"0 0 {width} {height}", role="img",
               aria_label=f"{label} health over the last {span / 3600:.0f} h".strip())


def graph(points: Sequence[Sequence[float]], start: float, end: float, *, width: int = 720,
          height: int = 170) -> Html:
    """Concurrent calls (solid, left scale) and calls per second (dashed, right scale) between
    `start` and `end` (Unix seconds). `points`: (t, cps, concurrent)."""
    left, right, top, bottom = 44, 52, 12, 26
    w, h = width - left - right, height - top - bottom
    pts = [p for p in points if start <= p[0] <= end]
    cmax = max([p[2] for p in pts] + [1])
    rmax = max([p[1] for p in pts] + [0.1])

    def x(t: float) -> float:
        return left + (t - start) / max(end - start, 1e-9) * w

    def series(idx: int, top_value: float) -> str:
        return " ".join(f"{_f(x(p[0]))},{_f(top + h - p[idx] / top_value * h)}" for p in pts)

    parts = [tag("rect", "", x=str(left), y=str(top), width=str(w), height=str(h), class_="plot")]
    for frac in (0.0, 0.5, 1.0):
        y = top + h - frac * h
        parts.append(tag("line", "", x1=str(left), x2=str(left + w), y1=_f(y), y2=_f(y), class_="grid"))
        parts.append(tag("text", f"{cmax * frac:.0f}" if cmax >= 2 else f"{cmax * frac:.1f}",
                         x=str(left - 6), y=_f(y + 4), class_="axis calls", text_anchor="end"))
        parts.append(tag("text", f"{rmax * frac:.2f}", x=str(left + w + 6), y=_f(y + 4), class_="axis cps"))
    span = end - start
    parts.append(tag("text", f"-{span / 3600:.0f} h" if span >= 3600 else f"-{span / 60:.0f} min",
                     x=str(left), y=str(height - 8), class_="axis"))
    parts.append(tag("text", time.strftime("%H:%M UTC", time.gmtime(end)), x=str(left + w), y=str(height - 8),
                     class_="axis", text_anchor="end"))
    if pts:
        parts.append(tag("polyline", "", points=series(2, cmax), class_="line calls"))
        parts.append(tag("polyline", "", points=series(1, rmax), class_="line cps"))
    else:
        parts.append(tag("text", "no samples yet", x=_f(left + w / 2), y=_f(top + h / 2), class_="axis",
                         text_anchor="middle"))
    parts.append(tag("text", "concurrent calls", x=str(left + 4), y=str(top + 12), class_="legend calls"))
    parts.append(tag("text", "calls per second", x=str(left + w - 4), y=str(top + 12), class_="legend cps",
                     text_anchor="end"))
    return tag("svg", join(parts), class_="graph", width=str(width), height=str(height),
               viewBox=f"0 0 {width} {height}", role="img", aria_label="calls graph")


COL_W, ROW_H, TOP, GUTTER = 200, 26, 52, 64


def ladder(columns: list[Column], arrows: list[Arrow]) -> Html:
    """The call as sngrep draws it. Each arrow links to its message (`#msg-N`): the page shows
    the message of the arrow clicked (CSS :target, no script needed)."""
    width = GUTTER + COL_W * len(columns) + 20
    height = TOP + ROW_H * (len(arrows) + 1)

    def cx(i: int) -> float:
        return GUTTER + COL_W * i + COL_W / 2

    defs = Html('<defs><marker id="ah" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
                'markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="head"/>'
                '</marker></defs>')
    parts = [defs]
    for i, c in enumerate(columns):
        parts.append(tag("text", c.label, x=_f(cx(i)), y="18", class_="col", text_anchor="middle"))
        parts.append(tag("text", c.detail, x=_f(cx(i)), y="34", class_="coldetail", text_anchor="middle"))
        parts.append(tag("line", "", x1=_f(cx(i)), x2=_f(cx(i)), y1="42", y2=str(height), class_="life"))
    for a in arrows:
        y = TOP + ROW_H * a.index + ROW_H / 2
        x1, x2 = cx(a.src), cx(a.dst)
        kind = f"arrow {a.kind} leg-{a.leg}" + (" failed" if a.failed else "")
        parts.append(tag("text", f"+{a.t:.3f}", x="4", y=_f(y + 4), class_="time"))
        inner = join([
            tag("rect", "", x=_f(min(x1, x2)), y=_f(y - 10), width=_f(abs(x2 - x1)), height="20", class_="hit"),
            tag("line", "", x1=_f(x1), x2=_f(x2 - 2 if x2 > x1 else x2 + 2), y1=_f(y + 6), y2=_f(y + 6),
                marker_end="url(#ah)", class_="shaft"),
            tag("text", a.label, x=_f((x1 + x2) / 2), y=_f(y + 1), class_="label", text_anchor="middle"),
        ])
        parts.append(tag("a", tag("g", inner, class_=kind), href=f"#msg-{a.index}", id=f"arrow-{a.index}",
                         data_index=str(a.index), data_from=columns[a.src].key, data_to=columns[a.dst].key,
                         data_label=a.label, data_cseq=a.cseq))
    return tag("svg", join(parts), class_="ladder", width=str(width), height=str(height),
               viewBox=f"0 0 {width} {height}", role="img", aria_label="SIP ladder")
