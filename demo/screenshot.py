"""Open a page in headless Chromium, save a screenshot, and return what the page wrote to its console.

    python -m demo.screenshot runs/demo/report.html report.png

Used by the demo's test (the report must open without console errors) and for the README's picture.
Chromium comes from Debian's `chromium` package (`make setup` installs it); it is started with no network
features and a throw-away profile.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
)


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError("no Chromium on PATH: install Debian's `chromium` package (make setup does)")


def screenshot(page: Path, png: Path, width: int = 1400, height: int = 2400, timeout_s: float = 120) -> list[str]:
    """Render `page` to `png`; returns the page's console messages (errors included), empty when clean."""
    with tempfile.TemporaryDirectory(prefix="hv-chromium-") as profile:
        result = subprocess.run(
            [
                find_chromium(),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={png.resolve()}",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    if not png.exists():
        raise RuntimeError(f"Chromium wrote no screenshot of {page} (exit {result.returncode}): {result.stderr[-500:]}")
    return [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


if __name__ == "__main__":
    messages = screenshot(Path(sys.argv[1]), Path(sys.argv[2]))
    print("\n".join(messages) or "no console messages")
    sys.exit(1 if messages else 0)
