"""Running the demo's stages: each stage is a real `hv` command in a subprocess, its output streamed to
the terminal (progress stays visible) and saved to `OUT/logs/<stage>.log`, its wall time recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

_MAX_SHOWN = 200


class StageFailed(RuntimeError):
    """A stage's command exited non-zero. The message names the stage and its log file."""


@dataclass
class StageLog:
    out: Path
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def banner(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"\n=== [{elapsed:6.1f} s] {text}", flush=True)

    def save(self) -> None:
        (self.out / "timings.json").write_text(json.dumps(self.timings, indent=2))


def hv_command(*args: str) -> list[str]:
    """`hv ARGS...` with the interpreter running the demo, so the demo works from the venv without PATH."""
    return [sys.executable, "-m", "humanvision_cli", *args]


def run_stage(log: StageLog, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    """Run one command, tee its output to `logs/<name>.log`; raise StageFailed on a non-zero exit."""
    logs = log.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    full_env = {**os.environ, **(env or {})}
    start = time.monotonic()
    with open(log_path, "w") as sink:
        sink.write("$ " + " ".join(argv) + "\n")
        sink.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            sink.write(line)
            # The terminal gets a readable digest (a metrics JSON line is thousands of characters); the log
            # file keeps everything.
            shown = line if len(line) <= _MAX_SHOWN else line[:_MAX_SHOWN] + f" ... (full line in {log_path})\n"
            sys.stdout.write("    " + shown)
            sys.stdout.flush()
        code = proc.wait()
    seconds = time.monotonic() - start
    log.timings[name] = round(seconds, 1)
    log.save()
    if code != 0:
        raise StageFailed(f"stage {name!r} failed with exit code {code}; see {log_path}")
    return seconds
