"""summary.json: one headline metric per task for the MAE-initialised run, the random-init run and the baseline."""

from __future__ import annotations

import json
from typing import Any

from eval.tasks import EVAL_TASKS


def build_summary(paths: Any, baselines: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for task, row in EVAL_TASKS.items():
        metric, higher = row.headline, row.higher_is_better
        runs = {}
        for init in ("pretrained", "random"):
            metrics = json.loads((paths.eval(init, task) / "metrics.json").read_text())
            runs[init] = float(metrics[metric])
        summary[task] = {
            "metric": metric,
            "higher_is_better": higher,
            "pretrained": runs["pretrained"],
            "random_init": runs["random"],
            # demo.baselines has one trivial baseline per task it knows; a task without one shows none
            "baseline": float(baselines[task][metric]) if task in baselines else None,
        }
    return summary
