"""The HTML report: self-contained, well-formed, fed by run folders, metric files and logs; bad inputs named."""

from __future__ import annotations

import base64
import io
import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from eval.report import (
    Curves,
    MetricTable,
    Picture,
    ReportInputError,
    Section,
    build_report,
    numeric_series,
    report_from_paths,
)
from eval.visualize import png_bytes
from humanvision_cli import main


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href"):
                self.urls.append(value or "")


def check_self_contained(text: str) -> _Collector:
    """No script, every URL a data: URI, every image a decodable PNG, every SVG well-formed XML."""
    parser = _Collector()
    parser.feed(text)
    assert "script" not in parser.tags
    assert all(u.startswith("data:image/png;base64,") for u in parser.urls), parser.urls
    for url in parser.urls:
        Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).verify()
    for svg in re.findall(r"<svg.*?</svg>", text, flags=re.S):
        ET.fromstring(svg)
    return parser


def _run_folder(root) -> str:
    run = root / "pose-tiny"
    (run / "pictures").mkdir(parents=True)
    lines = [json.dumps({"step": s, "loss": 1.0 / (s + 1), "lr": 1e-3 * (s + 1) / 10}) for s in range(10)]
    lines.insert(4, "{not json")
    lines.insert(6, "[1, 2]")
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run / "eval_pose.json").write_text(json.dumps({"AP": 0.5, "groups": {"body": {"AP": 0.6}, "face": {"AP": 0.4}}}))
    (run / "ds_config.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))  # not a metrics file
    (run / "config.yaml").write_text("arch: tiny\nlr: 0.001 <b>\n")
    (run / "pictures" / "0001.png").write_bytes(png_bytes(np.full((8, 8, 3), 90, np.uint8)))
    (run / "pictures" / "broken.png").write_bytes(b"not a png")
    return str(run)


def test_report_from_run_folder_and_files(tmp_path) -> None:
    run = _run_folder(tmp_path)
    metrics = tmp_path / "seg.json"
    metrics.write_text(json.dumps({"mIoU": 0.25, "per_class": {"Hair": 0.5, "Torso": None}}))
    out = tmp_path / "out" / "report.html"
    report_from_paths([run, str(metrics)], str(out), title="demo")
    text = out.read_text()
    parser = check_self_contained(text)
    assert parser.tags.count("svg") == 2  # loss and lr curves
    assert parser.tags.count("img") == 1  # the good picture; the broken one is a warning
    assert "broken.png is not a PNG file" in text
    assert "2 unreadable line(s) skipped: line 5: not JSON" in text
    assert "eval_pose.json" in text and "ds_config.json" not in text
    assert "lr: 0.001 &lt;b&gt;" in text  # config shown verbatim, escaped
    assert "<td>Hair</td><td>0.5000</td>" in text and "<td>Torso</td><td>–</td>" in text


def test_build_report_is_reusable_with_own_sections() -> None:
    picture = png_bytes(np.zeros((4, 4, 3), np.uint8))
    text = build_report(
        "demo <run>",
        [
            Section("metrics", [MetricTable("pose", {"AP": 0.9, "groups": {"all": {"AP": 0.9, "AR": 0.95}}})]),
            Section("curves", [Curves("train", [{"step": 0, "loss": 2.0}, {"step": 1, "loss": float("nan")}])]),
            Section("pictures", [Picture("pred vs gt", picture, caption="sample 1")]),
        ],
    )
    check_self_contained(text)
    assert "<title>demo &lt;run&gt;</title>" in text
    assert "<th>AR</th>" in text


def test_numeric_series_skips_non_numbers_and_non_finite() -> None:
    series = numeric_series([{"step": 0, "loss": 1.0, "phase": "train"}, {"step": 1, "loss": float("inf"), "lr": 0.1}])
    assert series == {"loss": [(0.0, 1.0)], "lr": [(1.0, 0.1)]}


def test_report_bad_inputs(tmp_path, capsys) -> None:
    with pytest.raises(ReportInputError, match=r"does not exist"):
        report_from_paths([str(tmp_path / "nope")], str(tmp_path / "r.html"))
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    with pytest.raises(ReportInputError, match=r"bad.json is not valid JSON"):
        report_from_paths([str(bad)], str(tmp_path / "r.html"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "report", str(tmp_path / "notes.txt"), "--out", str(tmp_path / "r.html")])
    assert exit_info.value.code == 2
    assert "notes.txt: not a run folder" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()  # nothing half-written
    empty = tmp_path / "empty-run"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "report", str(empty), "--out", str(tmp_path / "r.html")])
    assert exit_info.value.code == 0
    assert "no records" in (tmp_path / "r.html").read_text()


def test_metrics_json_array_is_drawn_as_curves(tmp_path) -> None:
    log = tmp_path / "metrics.json"
    log.write_text(json.dumps([{"step": s, "loss": 2.0 - 0.1 * s} for s in range(5)]))
    out = tmp_path / "r.html"
    report_from_paths([str(log)], str(out))
    parser = check_self_contained(out.read_text())
    assert parser.tags.count("svg") == 1 and "polyline" in parser.tags
    log.write_text(json.dumps([1, 2, 3]))
    with pytest.raises(ReportInputError, match=r"holds a JSON list; a metrics file holds an object or a list of step"):
        report_from_paths([str(log)], str(out))
