"""Fine-tuning tests: make `ft_synthetic` (the synthetic-person fixtures) importable under importlib mode."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
