"""Shipped-config tests: reuse the fine-tuning tests' synthetic people (`ft_synthetic`) and the curation
tests' ONNX detector builder, importable under importlib mode."""

from __future__ import annotations

import os
import sys

_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_TESTS, "finetune"))
