"""The report's tables fit a 1280 px page in headless Chromium (wide ones scroll inside their box), numbers are
rounded and booleans are words."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from demo.screenshot import CHROMIUM_FLAGS, find_chromium
from eval.report import MetricTable, Note, Section, write_report

# Runs its measurement after layout and writes it into the page, which --dump-dom prints.
_MEASURE = """<script>
window.addEventListener("load", () => {
  const width = document.documentElement.clientWidth;
  const out = {width, page: document.documentElement.scrollWidth, over: []};
  for (const table of document.querySelectorAll("table")) {
    const box = (table.closest(".wide") || table).getBoundingClientRect();
    const caption = table.caption ? table.caption.textContent : "";
    if (box.right > width + 0.5) out.over.push({caption, right: box.right});
  }
  const pre = document.createElement("pre");
  pre.id = "layout";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _layout(page: Path, width: int = 1280) -> dict:
    instrumented = page.with_name("measured.html")
    instrumented.write_text(page.read_text().replace("</body>", _MEASURE + "</body>"))
    with tempfile.TemporaryDirectory(prefix="hv-chromium-") as profile:
        result = subprocess.run(
            [
                find_chromium(),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},1600",
                "--virtual-time-budget=3000",
                "--dump-dom",
                instrumented.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    found = re.search(r'<pre id="layout">(.*?)</pre>', result.stdout)
    assert found, f"Chromium printed no measurement (exit {result.returncode}): {result.stderr[-500:]}"
    return json.loads(found.group(1).replace("&quot;", '"'))


def _demo_like_metrics() -> dict:
    """Like the demo's "Every metric" table: several runs x every metric of every task, with float32 noise."""
    rng = np.random.default_rng(0)
    names = [
        f"{task}/{metric}"
        for task in ("pose", "seg", "depth", "normal")
        for metric in (
            "AP",
            "AP50",
            "AR",
            "mIoU",
            "aAcc",
            "absrel",
            "rmse",
            "delta1",
            "mean_angular_error_deg",
            "within_11.25",
        )
    ]
    run = {n: float(np.float32(rng.normal(0, 0.01))) for n in names}
    run.update(flip_test=True, pretrained=False, keypoint_set="body+feet+hands", sizes=[0.1234567, 2.5, True])
    return {"runs": {f"finetune-pretrained-run-{i}": dict(run) for i in range(3)}}


@pytest.mark.slow
def test_report_tables_fit_a_1280_px_page(tmp_path):
    metrics = _demo_like_metrics()
    noise = next(iter(metrics["runs"].values()))["pose/AP"]
    long_name = "a_metric_name_without_any_place_to_break_" * 4
    page = write_report(
        str(tmp_path / "report.html"),
        "layout",
        [
            Section("Every metric", [MetricTable("Held-out metrics per run", metrics)]),
            Section("Scalars", [MetricTable("one run", {long_name: 1.0, "ok": True}), Note("a note")]),
        ],
    )
    html = Path(page).read_text()
    assert repr(noise) not in html and "True" not in html and "False" not in html
    assert ">yes<" in html and ">no<" in html
    layout = _layout(Path(page))
    assert layout["width"] == 1280 or layout["width"] > 1200  # a scrollbar may take a few pixels
    assert layout["over"] == [], layout
    assert layout["page"] <= layout["width"], layout


def test_cells_are_rounded_and_booleans_are_words():
    from eval.report_html import _format_value

    assert _format_value(float(np.float32(-0.009))) == "-0.0090"
    assert _format_value(True) == "yes" and _format_value(False) == "no"
    assert _format_value(1.234e-6) == "1.234e-06" and _format_value(123456.0) == "1.235e+05"
    assert _format_value([0.1234567, True]) == "[0.1235, yes] (2)"
