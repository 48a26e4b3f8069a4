"""Running the demo's stages: each stage is a real `hv` command in a subprocess, its output streamed to
the terminal (progress stays visible) and saved to `OUT/logs/<stage>.log`, its wall time recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

_MAX_SHOWN = 200
_RENDEZVOUS_VARIABLES = frozenset(
    {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
)
_PROGRESS_EVERY_S = 20.0  # side-by-side stages: how often a progress-bar state is shown as a line of its own


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


# Runs the `hv` commands given as one JSON list of argv lists, in order, and exits with the first non-zero code.
_BATCH = """\
import json, sys
import humanvision_cli
for argv in json.loads(sys.argv[1]):
    try:
        humanvision_cli.main(argv)
    except SystemExit as e:
        if e.code:
            sys.exit(e.code)
"""


def hv_commands(*commands: Sequence[str]) -> list[str]:
    """Several `hv` commands one after another in one interpreter, stopping at the first that fails: for short
    commands whose imports (torch) cost more than their work, such as the four evaluations of one model."""
    return [sys.executable, "-c", _BATCH, json.dumps([list(c) for c in commands])]


def _next_line_end(data: bytes) -> int:
    ends = [i for i in (data.find(b"\n"), data.find(b"\r")) if i >= 0]
    return min(ends) if ends else -1


_redrawing = False


def _show(text: str, redraw: bool, log_path: Path) -> None:
    """The terminal gets a readable digest (a metrics JSON line is thousands of characters); the log file
    keeps everything. A line ended by a carriage return (a progress bar) is overwritten by the next one."""
    global _redrawing
    if len(text) > _MAX_SHOWN:
        text = text[:_MAX_SHOWN] + f" ... (full line in {log_path})"
    if redraw:
        if text:
            sys.stdout.write("\r    " + text)
            _redrawing = True
    else:
        sys.stdout.write(("\r" if _redrawing else "") + "    " + text + "\n")
        _redrawing = False
    sys.stdout.flush()


def run_stage(log: StageLog, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    """Run one command, tee its output to `logs/<name>.log`; raise StageFailed on a non-zero exit."""
    return run_stages(log, {name: argv}, env)[name]


def run_stages(log: StageLog, stages: dict[str, Sequence[str]], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run several commands at once, each teeing its output to `logs/<name>.log`, and wait for all of them;
    returns each one's wall time. With more than one, each gets an equal share of the cores (OMP_NUM_THREADS,
    unless `env` sets it): small models use two threads poorly, so two one-thread runs side by side finish
    sooner than the same two runs one after another. The terminal then shows whole lines prefixed with the
    stage's name, and a progress bar's state every `_PROGRESS_EVERY_S` seconds (every redraw stays in the logs).

    When one stage fails, the others are stopped (SIGTERM) instead of finishing work nobody will use; Ctrl-C
    stops them too. Raises StageFailed naming every stage that failed and those stopped because of it."""
    logs = log.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # A stage is a job of its own: it never joins a torch.distributed world this process was part of (an
    # in-process run leaves RANK and MASTER_PORT in os.environ), and side-by-side stages sharing one rendezvous
    # port would fail with "address already in use". Each then picks its own, or its launcher does.
    inherited = {k: v for k, v in os.environ.items() if k not in _RENDEZVOUS_VARIABLES}
    full_env = {**inherited, **(env or {})}
    if len(stages) > 1 and "OMP_NUM_THREADS" not in (env or {}):
        full_env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(stages)))
    start = time.monotonic()
    seconds: dict[str, float] = {}
    codes: dict[str, int] = {}
    shown = dict.fromkeys(stages, start)
    procs: dict[str, subprocess.Popen] = {}
    stopped: set[str] = set()
    lock = threading.Lock()
    stopping = threading.Event()

    def stop_others(cause: str | None) -> None:
        with lock:
            stopping.set()
            for name, proc in procs.items():
                if name != cause and proc.poll() is None:
                    stopped.add(name)
                    proc.terminate()

    def run(name: str, argv: Sequence[str]) -> None:
        prefix = f"[{name}] " if len(stages) > 1 else ""
        log_path = logs / f"{name}.log"
        with open(log_path, "wb") as sink:
            sink.write(("$ " + " ".join(argv) + "\n").encode())
            sink.flush()
            with lock:
                if stopping.is_set():  # another stage failed before this one started
                    stopped.add(name)
                    return
                proc = procs[name] = subprocess.Popen(
                    argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env
                )
            assert proc.stdout is not None
            pending = b""
            while chunk := proc.stdout.read1(1 << 16):
                sink.write(chunk)
                pending += chunk
                # Split on both line ends: a progress bar redraws itself with carriage returns.
                while (cut := _next_line_end(pending)) >= 0:
                    redraw = pending[cut : cut + 1] == b"\r"
                    text = pending[:cut].decode(errors="replace")
                    pending = pending[cut + 1 :]
                    if not prefix:
                        _show(text, redraw, log_path)
                    elif text and (not redraw or time.monotonic() - shown[name] >= _PROGRESS_EVERY_S):
                        _show(prefix + text, False, log_path)  # progress bars: a whole line now and then
                        shown[name] = time.monotonic()
            if pending:
                _show(prefix + pending.decode(errors="replace"), False, log_path)
            codes[name] = proc.wait()
        seconds[name] = time.monotonic() - start
        if codes[name] != 0 and name not in stopped:
            stop_others(name)

    errors: list[BaseException] = []

    def run_noting_errors(name: str, argv: Sequence[str]) -> None:
        try:
            run(name, argv)
        except Exception as e:  # a command that cannot start (a bad argv): raised below, in the caller
            errors.append(e)
            stop_others(name)

    threads = [threading.Thread(target=run_noting_errors, args=item, daemon=True) for item in stages.items()]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:  # Ctrl-C: the children got it too; stop any that did not, and let the readers finish
        stop_others(None)
        for thread in threads:
            thread.join(timeout=30)
        raise
    for name, spent in seconds.items():
        log.timings[name] = round(spent, 1)
    log.save()
    if errors:
        raise errors[0]
    failed = [name for name in stages if name not in stopped and codes[name] != 0]
    if failed:
        reasons = [f"stage {n!r} failed with exit code {codes[n]}; see {logs / f'{n}.log'}" for n in failed]
        if stopped:
            reasons.append(f"stopped because of it: {', '.join(n for n in stages if n in stopped)}")
        raise StageFailed("; ".join(reasons))
    return seconds
