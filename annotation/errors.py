"""The one error type the `hv annotate` commands turn into a clear message and a non-zero exit."""

from __future__ import annotations


class AnnotationError(RuntimeError):
    """A user-facing failure: unreachable server, refused key, missing project, bad input. The message says
    what failed and what to do; it never contains the API key."""
