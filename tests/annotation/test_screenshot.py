"""What an annotator sees: the real server, a 308-keypoint pose project made by `hv annotate push`, a model's
pre-annotation from `hv annotate predict`, and the task's labeling page photographed by headless Chromium after
logging in (the session cookie from Label Studio's own login form, set through the DevTools protocol).

    HV_ANNOTATION_SCREENSHOT=docs/annotation-pose-task.png pytest -m slow tests/annotation/test_screenshot.py

writes the picture the README shows (colour-quantised to stay small).
"""

from __future__ import annotations

import base64
import io
import os
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from annotation.client import Studio
from data_engine.shards import ShardWriter

from .chromium import Chromium
from .conftest import TEST_PASSWORD
from .test_live import hv

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

MARKERS = ("Draw a person box", "left_shoulder", "right_thumb4", "center_of_glabella", "Submit", "shard-labels")
PAGE_READY = (
    "document.querySelectorAll('canvas').length > 0"
    " && Array.from(document.images).some(i => i.complete && i.naturalWidth === 384)"
    + "".join(f" && document.documentElement.outerHTML.includes({m!r})" for m in MARKERS)
)


def _picture_colours(png: bytes) -> int:
    """Distinct colours where the task's image is drawn (the labeling area, left of the side panels)."""
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    return len(np.unique(image[250:800, 280:760].reshape(-1, 3), axis=0))


def _login(url: str, username: str, password: str) -> str:
    """The `sessionid` cookie of a login through Label Studio's form (its CSRF token first)."""
    with httpx.Client(base_url=url, follow_redirects=False, timeout=30) as client:
        form = client.get("/user/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
        assert token, "no CSRF token on the login page"
        answer = client.post(
            "/user/login/",
            data={"csrfmiddlewaretoken": token.group(1), "email": username, "password": password},
            headers={"Referer": f"{url}/user/login/"},
        )
        assert answer.status_code == 302 and "sessionid" in client.cookies, answer.text[:300]
        return str(client.cookies["sessionid"])


def test_labeling_page_shows_the_preannotated_308_point_task(ls_env, tmp_path: Path, capsys) -> None:
    from PIL import Image

    from demo.screenshot import find_chromium
    from tests.finetune.ft_synthetic import person_sample

    sample = person_sample(3, height=512, width=384)  # a stick figure with its coco17 keypoints
    (tmp_path / "in").mkdir()
    with ShardWriter(str(tmp_path / "in" / "person"), max_count=10) as writer:
        writer.write(sample)
    title = "pose-308-screenshot"
    assert hv(capsys, "annotate", "push", str(tmp_path / "in"), "--project", title, "--task", "pose")[0] == 0
    code, out = hv(capsys, "annotate", "predict", str(tmp_path / "in"), "--project", title, "--task", "pose")
    assert code == 0 and "1 predictions created" in out, out
    with Studio(ls_env.url, ls_env.token) as studio:
        project_id = int(studio.require_project(title)["id"])
        task_id = int(next(studio.iter_tasks(project_id))["id"])

    session = _login(ls_env.url, "admin@localhost", TEST_PASSWORD)
    with Chromium(find_chromium(), tmp_path / "profile") as browser:
        page = browser.new_page(1400, 900)
        browser.call("Network.setCookie", {"name": "sessionid", "value": session, "url": ls_env.url}, page)
        browser.navigate(page, f"{ls_env.url}/projects/{project_id}/data?task={task_id}")
        ready = browser.wait_for(page, PAGE_READY, timeout=120)
        # The page re-renders after it first shows (the data manager mounts its tab), and the picture fades in
        # after its element has loaded: photograph until one capture has both (the noisy background of the
        # synthetic image gives thousands of colours; an empty canvas a handful).
        deadline = time.monotonic() + 60
        while True:
            png = base64.b64decode(browser.call("Page.captureScreenshot", {"format": "png"}, page)["data"])
            html = browser.evaluate(page, "document.documentElement.outerHTML")
            shown = _picture_colours(png) > 1000 and all(m in html for m in MARKERS)
            if shown or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        location = browser.evaluate(page, "location.href")
    (tmp_path / "task.png").write_bytes(png)
    assert ready, f"the labeling page did not render at {location}: {html[:500]}"
    assert "/user/login" not in location and 'id="login-form"' not in html
    # The labeling interface: our instructions, keypoint labels of every region, the prediction's model version.
    for marker in (
        "Draw a person box",
        "left_shoulder",
        "right_thumb4",
        "center_of_glabella",
        "Submit",
        "shard-labels",
    ):
        assert marker in html, marker

    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert image.shape == (900, 1400, 3)
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 200 and image.std() > 20  # a page with a picture, not a blank or one-colour one
    assert _picture_colours(png) > 1000, "the task's image is not drawn"

    docs = os.environ.get("HV_ANNOTATION_SCREENSHOT")
    if docs:
        small = Image.fromarray(image).quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        small.save(docs, optimize=True)
        assert Path(docs).stat().st_size < 300_000
