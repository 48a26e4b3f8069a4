"""eval: metrics, predictions, pictures, reports and deployable models from fine-tuned checkpoints.

Command: `hv eval pose | seg | depth | normal | report`, `hv predict` and `hv export` (see `eval.cli`).
Loop: the metrics are pure functions over arrays (`eval.metrics`) that both paths share: from files
(`hv eval TASK --gt --pred`: COCO keypoint files, PNG or .npy maps matched by name) and from a checkpoint on
held-out shards (`hv eval TASK --checkpoint --shards`, `model_eval`: the model runs on every sample carrying the
task's label, bad samples skipped and listed or raised, by policy).
Contract: reads `data_engine` shards and the sample contract's PNG encodings, and checkpoints through
`train.models` and `train.predictor` only (never the training entry points). Writes `metrics.json` (one JSON
object, also printed), `pictures/` and `config.yaml` beside it; `hv predict` writes per-input pose JSON, COCO
keypoint results and seg / depth / normal PNGs in the sample-contract encodings; `hv export` an ONNX or
TorchScript model with a `FILE.json` sidecar of its input and output contract; `hv eval report` one
self-contained HTML page.

- `metrics`: pose (COCO AP with Goliath OKS sigmas, per group), seg (mIoU), depth (scale-and-shift aligned),
  normals (angular error); `tasks`: what eval knows of each task of `train.models.tasks`.
- `model_eval` and `inference`: metrics of a checkpoint; `predict` (+ `coco_results`): `hv predict`.
- `visualize`: pictures as numpy / Pillow functions; `report` (gathering) and `report_html` (the page).
- `export` (+ `onnx_metadata`): `hv export`; `config`: the typed configs of the model-driven commands.
"""
