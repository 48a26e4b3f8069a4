"""Logging for every `hv` command and the processes it starts: one level, set by `-v` / `-q`.

    configure_logging(verbose=0, quiet=0)   # what `hv` does after parsing its arguments
    configure_from_env()                    # what a process it started does (a DeepSpeed rank, a launcher child)
    log = logging.getLogger(__name__); log.info("rendered 12/60 subjects")

Our packages log progress at INFO, problems that do not stop the job (a skipped sample) at WARNING; a
command's result goes to stdout and its fatal error to stderr as one line, whatever the level. The level
applies to our packages' loggers; other libraries (Ray, DeepSpeed, httpx) stay at WARNING unless `-vv`.

| flags | our packages        | other libraries |
|-------|---------------------|-----------------|
| -qq   | ERROR               | ERROR           |
| -q    | WARNING             | WARNING         |
| none  | INFO (progress)     | WARNING         |
| -v    | DEBUG               | WARNING         |
| -vv   | DEBUG               | DEBUG           |
"""

from __future__ import annotations

import logging
import os
import sys

PACKAGES = ("data_engine", "synth", "annotation", "train", "eval", "demo", "humanvision_cli")
ENV_LEVEL = "HV_LOG_LEVEL"  # children inherit the level through the environment
ENV_LIBRARY_LEVEL = "HV_LIBRARY_LOG_LEVEL"


class _Format(logging.Formatter):
    """Progress as the plain message; warnings and worse say so and where they come from."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            text = f"hv: {record.levelname.lower()}: {record.name}: {text}"
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        return text


def levels(verbose: int, quiet: int) -> tuple[int, int]:
    """(our packages' level, other libraries' level) for the counts of -v and -q."""
    step = int(quiet) - int(verbose)
    ours = min(max(logging.INFO + 10 * step, logging.DEBUG), logging.CRITICAL)
    library = logging.DEBUG if verbose >= 2 else max(ours, logging.WARNING)
    return ours, library


def configure(ours: int, library: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(library)
    for name in PACKAGES:
        logging.getLogger(name).setLevel(ours)
    os.environ[ENV_LEVEL] = logging.getLevelName(ours)
    os.environ[ENV_LIBRARY_LEVEL] = logging.getLevelName(library)


def configure_logging(verbose: int = 0, quiet: int = 0) -> int:
    """Set the levels from -v / -q counts (see the table); returns our packages' level."""
    ours, library = levels(verbose, quiet)
    configure(ours, library)
    return ours


def configure_from_env() -> int:
    """The level the `hv` command that started this process chose (INFO / WARNING when started otherwise)."""
    ours = logging.getLevelName(os.environ.get(ENV_LEVEL, "INFO"))
    library = logging.getLevelName(os.environ.get(ENV_LIBRARY_LEVEL, "WARNING"))
    ours = ours if isinstance(ours, int) else logging.INFO
    library = library if isinstance(library, int) else logging.WARNING
    configure(ours, library)
    return ours
