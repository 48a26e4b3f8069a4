"""A self-contained HTML report: metric tables, training curves and prediction-vs-ground-truth pictures.

    hv eval report runs/pose-tiny runs/eval-pose/metrics.json --out report.html

Everything is inside the one file: pictures are base64 PNG `data:` URIs, curves are inline SVG, the
style sheet is inline, and there is no script at all, so it opens offline, in a mail attachment or on a
cluster's file browser. `build_report(title, sections)` is the reusable part: build `Section`s of
`MetricTable`, `Curves`, `Picture`, `Note` and `Preformatted` items from anywhere (the demo does) and get the HTML text.

Inputs of `report_from_paths` (each path one of):
- a run folder: its `metrics.jsonl` (one JSON object a line with `step` and numbers: `loss`, `lr`, ...)
  becomes curves; each `*.json` whose name says metric, eval, report or result (and holds numbers) a
  table; `config.yaml` is shown folded; PNGs in `pictures/` (or the folder itself) become pictures;
- a `.json` metrics file (the output of `hv eval ...`), a `.jsonl` metrics log, or a `.png` picture.
A line of a metrics log that is not a JSON object is skipped and counted in a note, never silently.

This module gathers the inputs into sections; the page model and its HTML are `eval.report_html`, re-exported here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from eval.report_html import (
    MAX_TABLE_ROWS,
    Curves,
    Item,
    MetricTable,
    Note,
    Picture,
    Preformatted,
    Section,
    build_report,
    curves_html,
    is_number,
    metric_table_html,
    numeric_series,
    svg_line_chart,
    write_report,
)

__all__ = [
    "MAX_PICTURES_PER_RUN",
    "MAX_TABLE_ROWS",
    "Curves",
    "Item",
    "MetricTable",
    "Note",
    "Picture",
    "Preformatted",
    "ReportInputError",
    "Section",
    "build_report",
    "curves_html",
    "metric_table_html",
    "numeric_series",
    "read_metrics_json",
    "read_metrics_log",
    "report_from_paths",
    "run_section",
    "sections_from_paths",
    "svg_line_chart",
    "write_report",
]

MAX_PICTURES_PER_RUN = 24
_METRIC_FILE_WORDS = ("metric", "eval", "report", "result")


class ReportInputError(ValueError):
    """A report input that does not exist or cannot be read; the message names it."""


def read_metrics_log(path: str) -> tuple[list[dict[str, Any]], list[str]]:
    """(records, problems): JSON-object lines of a metrics.jsonl; each unreadable line is a problem entry."""
    records: list[dict[str, Any]] = []
    problems: list[str] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ReportInputError(f"cannot read {path}: {e}") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"line {n}: not JSON ({e.msg})")
            continue
        if not isinstance(obj, dict):
            problems.append(f"line {n}: a {type(obj).__name__}, not an object")
            continue
        records.append(obj)
    return records, problems


def read_metrics_json(path: str) -> dict[str, Any] | list[dict[str, Any]]:
    """A metrics object (the output of `hv eval ...`), or a list of step records (a training log saved as a
    JSON array instead of JSON lines)."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except OSError as e:
        raise ReportInputError(f"cannot read {path}: {e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReportInputError(f"{path} is not valid JSON: {e}") from None
    if isinstance(obj, list) and obj and all(isinstance(r, dict) for r in obj):
        return obj
    if not isinstance(obj, dict):
        raise ReportInputError(
            f"{path} holds a JSON {type(obj).__name__}; a metrics file holds an object or a list of step records"
        )
    return obj


def _json_items(path: str) -> list[Item]:
    obj = read_metrics_json(path)
    name = os.path.basename(path)
    if isinstance(obj, list):
        return [Curves(name, obj)]
    return [MetricTable(name, obj)] if _has_numbers(obj) else [Note(f"{path}: no numbers to show")]


def _has_numbers(obj: dict[str, Any]) -> bool:
    return any(is_number(v) or (isinstance(v, dict) and _has_numbers(v)) for v in obj.values())


def _read_png(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ReportInputError(f"{path} is not a PNG file")
    return data


def _log_items(path: str) -> list[Item]:
    records, problems = read_metrics_log(path)
    items: list[Item] = [Curves(os.path.basename(path), records)]
    if not records:
        items = [Note(f"{path}: no records", "warning")]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... {len(problems) - 5} more" if len(problems) > 5 else "")
        items.append(Note(f"{path}: {len(problems)} unreadable line(s) skipped: {shown}", "warning"))
    return items


def run_section(folder: str) -> Section:
    """Everything a run or evaluation folder holds: curves, metric tables, config, pictures."""
    section = Section(os.path.basename(os.path.normpath(folder)) or folder)
    names = sorted(os.listdir(folder))
    for name in names:
        if name.endswith(".jsonl"):
            section.items += _log_items(os.path.join(folder, name))
    for name in names:
        path = os.path.join(folder, name)
        # Only files named as metrics or reports: a run folder also holds DeepSpeed and model configs.
        if name.endswith(".json") and os.path.isfile(path) and any(w in name for w in _METRIC_FILE_WORDS):
            try:
                section.items += _json_items(path)
            except ReportInputError as e:
                section.items.append(Note(str(e), "warning"))
    config = next((os.path.join(folder, n) for n in ("config.yaml", "config.yml") if n in names), None)
    if config:
        with open(config, encoding="utf-8", errors="replace") as f:
            section.items.append(Preformatted(os.path.basename(config), f.read()))
    picture_dir = os.path.join(folder, "pictures")
    picture_dir = picture_dir if os.path.isdir(picture_dir) else folder
    pngs = sorted(n for n in os.listdir(picture_dir) if n.lower().endswith(".png"))
    for name in pngs[:MAX_PICTURES_PER_RUN]:
        try:
            section.items.append(Picture(name, _read_png(os.path.join(picture_dir, name))))
        except (OSError, ReportInputError) as e:
            section.items.append(Note(str(e), "warning"))
    if len(pngs) > MAX_PICTURES_PER_RUN:
        section.items.append(Note(f"{len(pngs) - MAX_PICTURES_PER_RUN} more pictures in {picture_dir}"))
    if not section.items:
        section.items.append(Note(f"{folder}: no metrics.jsonl, metrics JSON or pictures found", "warning"))
    return section


def sections_from_paths(paths: Sequence[str]) -> list[Section]:
    sections: list[Section] = []
    for path in paths:
        if not os.path.exists(path):
            raise ReportInputError(f"{path} does not exist")
        if os.path.isdir(path):
            sections.append(run_section(path))
        elif path.endswith(".jsonl"):
            sections.append(Section(os.path.basename(path), _log_items(path)))
        elif path.endswith(".json"):
            sections.append(Section(os.path.basename(path), _json_items(path)))
        elif path.lower().endswith(".png"):
            sections.append(Section(os.path.basename(path), [Picture(os.path.basename(path), _read_png(path))]))
        else:
            raise ReportInputError(f"{path}: not a run folder, .json, .jsonl or .png file")
    return sections


def report_from_paths(paths: Sequence[str], out: str, title: str = "humanvision evaluation report") -> str:
    return write_report(out, title, sections_from_paths(paths))
