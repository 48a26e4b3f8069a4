"""A free TCP port for a rendezvous, for the launcher (`train.launch`) and a world of one (`train.distributed`).

Standard library only, so that building a launch command imports no torch.
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on at the moment of asking, on 127.0.0.1 (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
