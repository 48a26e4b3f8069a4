"""Foundation tests: make `hostile` (bombs, sparse tar members, the memory probe) importable under importlib mode."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
