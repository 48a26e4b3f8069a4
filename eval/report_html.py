"""The report page: its items (`MetricTable`, `Curves`, `Picture`, `Note`, `Preformatted`) in `Section`s, and
their rendering to one self-contained HTML page.

    html_text = build_report("my run", [Section("metrics", [MetricTable("pose", {"AP": 0.71})])])
    write_report("report.html", "my run", sections)

Pictures become base64 PNG `data:` URIs, curves inline SVG, the style sheet is inline and there is no script, so
the page opens offline. Gathering items from run folders and metrics files is `eval.report`'s part.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_TABLE_ROWS = 60
_CURVE_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


@dataclass
class MetricTable:
    title: str
    metrics: dict[str, Any]  # scalars become one table; nested dicts (groups, per_class) their own


@dataclass
class Curves:
    title: str
    records: list[dict[str, Any]]  # each with `step` and numeric series; one chart per series
    x_key: str = "step"


@dataclass
class Picture:
    title: str
    png: bytes
    caption: str = ""


@dataclass
class Note:
    text: str
    level: str = "info"  # "info" or "warning": warnings are shown in a red box


@dataclass
class Preformatted:
    title: str
    text: str  # shown folded, verbatim (a resolved config, a log excerpt)


Item = MetricTable | Curves | Picture | Note | Preformatted


@dataclass
class Section:
    title: str
    items: list[Item] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- rendering


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1232px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin:16px 0 6px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px;max-width:100%}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right;overflow-wrap:anywhere}th{background:#f3f3f3}
.wide{max-width:100%;overflow-x:auto}
td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:6px 12px 12px 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:12px;color:#555}
.charts{display:flex;flex-wrap:wrap;gap:12px}.note{font-size:13px;color:#444}
.warning{background:#fdecea;border:1px solid #f5c2c0;padding:6px 10px;border-radius:4px}
pre{background:#f7f7f7;padding:8px;font-size:12px;overflow:auto}
"""


def build_report(title: str, sections: Sequence[Section]) -> str:
    """The whole HTML page as text."""
    body = [f"<h1>{_esc(title)}</h1>"]
    if not sections:
        body.append('<p class="note">Nothing to report.</p>')
    for section in sections:
        body.append(f"<h2>{_esc(section.title)}</h2>")
        for item in section.items:
            body.append(_render_item(item))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{_STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(path: str, title: str, sections: Sequence[Section]) -> str:
    """Write the page atomically (a reader never sees half a report); returns the path."""
    text = build_report(title, sections)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _render_item(item: Item) -> str:
    if isinstance(item, MetricTable):
        return metric_table_html(item.title, item.metrics)
    if isinstance(item, Curves):
        return curves_html(item.title, item.records, item.x_key)
    if isinstance(item, Picture):
        data = base64.b64encode(item.png).decode("ascii")
        caption = f"<figcaption>{_esc(item.title)}{': ' + _esc(item.caption) if item.caption else ''}</figcaption>"
        return f'<figure><img alt="{_esc(item.title)}" src="data:image/png;base64,{data}">{caption}</figure>'
    if isinstance(item, Note):
        css = "note warning" if item.level == "warning" else "note"
        return f'<p class="{css}">{_esc(item.text)}</p>'
    if isinstance(item, Preformatted):
        return f"<details><summary>{_esc(item.title)}</summary><pre>{_esc(item.text)}</pre></details>"
    raise TypeError(f"unknown report item {type(item).__name__}")


def _format_value(value: Any) -> str:
    """A table cell: numbers rounded to what a reader compares (4 decimals, 4 significant digits when tiny or
    huge, so float32 noise such as -0.008999999612569809 shows as -0.0090), booleans as yes / no."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
            return f"{value:.4g}"
        return f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        shown = ", ".join(_format_value(v) for v in value[:8])
        return f"[{shown}{', ...' if len(value) > 8 else ''}] ({len(value)})"
    return str(value)


def metric_table_html(title: str, metrics: dict[str, Any]) -> str:
    """Scalars in a key/value table; each nested dict as its own table: a dict of dicts (e.g. `groups`)
    as rows x columns, a dict of scalars (e.g. `per_class`) as name/value rows."""
    parts = [f"<h3>{_esc(title)}</h3>"]
    scalars = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    if scalars:
        rows = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(_format_value(v))}</td></tr>" for k, v in scalars.items())
        parts.append(f'<div class="wide"><table><tr><th>metric</th><th>value</th></tr>{rows}</table></div>')
    for key, nested in metrics.items():
        if not isinstance(nested, dict) or not nested:
            continue
        names = list(nested)
        shown = names[:MAX_TABLE_ROWS]
        more = len(names) - len(shown)
        if all(isinstance(v, dict) for v in nested.values()):
            columns: list[str] = []
            for v in nested.values():
                columns += [c for c in v if c not in columns and not isinstance(v[c], dict)]
            head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
            body = "".join(
                f"<tr><td>{_esc(n)}</td>"
                + "".join(f"<td>{_esc(_format_value(nested[n].get(c)))}</td>" for c in columns)
                + "</tr>"
                for n in shown
            )
            table = f"<table><caption>{_esc(key)}</caption><tr><th></th>{head}</tr>{body}</table>"
            parts.append(f'<div class="wide">{table}</div>')
        else:
            body = "".join(f"<tr><td>{_esc(n)}</td><td>{_esc(_format_value(nested[n]))}</td></tr>" for n in shown)
            table = f"<table><caption>{_esc(key)}</caption><tr><th>name</th><th>value</th></tr>{body}</table>"
            parts.append(f'<div class="wide">{table}</div>')
        if more:
            parts.append(f'<p class="note">{more} more rows of {_esc(key)} are in the JSON file.</p>')
    return "\n".join(parts)


def numeric_series(records: Sequence[dict[str, Any]], x_key: str = "step") -> dict[str, list[tuple[float, float]]]:
    """Series name -> [(x, y)] for every key whose values are finite numbers; non-finite points dropped."""
    series: dict[str, list[tuple[float, float]]] = {}
    for n, record in enumerate(records):
        x = record.get(x_key, n)
        if not is_number(x):
            continue
        for key, value in record.items():
            if key != x_key and is_number(value) and math.isfinite(value):
                series.setdefault(key, []).append((float(x), float(value)))
    return series


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def curves_html(title: str, records: Sequence[dict[str, Any]], x_key: str = "step") -> str:
    series = numeric_series(records, x_key)
    if not series:
        return f'<h3>{_esc(title)}</h3><p class="note">No numeric series to draw.</p>'
    charts = "".join(
        svg_line_chart(name, points, x_key, _CURVE_COLORS[i % len(_CURVE_COLORS)])
        for i, (name, points) in enumerate(series.items())
    )
    return f'<h3>{_esc(title)}</h3><div class="charts">{charts}</div>'


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), default=raw)
    first = math.ceil(lo / step) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9 and len(ticks) < 12:
        ticks.append(round(t, 12))
        t += step
    return ticks


def svg_line_chart(
    name: str,
    points: Sequence[tuple[float, float]],
    x_label: str = "step",
    color: str = "#1f77b4",
    width: int = 360,
    height: int = 220,
) -> str:
    """One series as an inline SVG line chart with axes, ticks and a title; a log y axis for a series that is
    positive and spans more than two decades (learning rates, early losses)."""
    left, right, top, bottom = 56, 12, 22, 34
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    log_y = min(ys) > 0 and max(ys) / min(ys) > 100
    ty = [math.log10(y) for y in ys] if log_y else ys
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ty), max(ty)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        pad = abs(y0) * 0.05 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    def text(x: float, y: float, size: int, content: str, anchor: str = "start") -> str:
        return f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}">{content}</text>'

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">',
        f"<title>{_esc(name)}</title>",
        text(left, 15, 13, _esc(name) + (" (log)" if log_y else "")),
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
    ]
    for t in _nice_ticks(y0, y1, 4):
        y = sy(t)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(text(left - 4, y + 4, 10, f"{10**t:.2g}" if log_y else f"{t:.4g}", "end"))
    for t in _nice_ticks(x0, x1, 5):
        out.append(text(sx(t), top + ph + 14, 10, f"{t:.6g}", "middle"))
    out.append(text(left + pw / 2, height - 4, 11, _esc(x_label), "middle"))
    coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ty, strict=True))
    if len(points) == 1:
        out.append(f'<circle cx="{sx(xs[0]):.1f}" cy="{sy(ty[0]):.1f}" r="3" fill="{color}"/>')
    else:
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{coords}"/>')
    out.append("</svg>")
    return "".join(out)
