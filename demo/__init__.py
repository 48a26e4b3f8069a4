"""demo: the main job, `hv demo --out runs/demo` (`make demo`): every stage of the factory end to end on
data it makes itself. See `demo.run`.

Command: `hv demo --out OUT [--profile smoke] [--no-labelstudio]` (see `demo.cli`).
Loop: `demo.run` runs synth, curate, pretrain, finetune (from the MAE weights and from random init), eval next
to trivial baselines, annotate (a local Label Studio with the model's pre-annotations) and the report, each as
the real `hv` command in a subprocess (`demo.stages`, its log in `OUT/logs/`); a re-run resumes or skips every
stage that finished.
Contract: makes its own inputs (`demo.inputs`: photos shipped in installed packages, renders, duplicates, bad
files; nothing downloaded) and leaves every stage's outputs in OUT, plus `OUT/report.html` (`demo.report`, on
`eval.report`) and `OUT/summary.json` (one headline metric per task for each run and the baseline).
"""
