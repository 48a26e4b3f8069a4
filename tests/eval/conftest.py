"""Makes tests/eval/eval_testdata.py importable under --import-mode=importlib (a unique name, so no other
package's helper module can shadow it)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
