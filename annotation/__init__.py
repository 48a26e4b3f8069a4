"""annotation: Label Studio projects for the 308 keypoints and 28 body-part classes, round trip into shards.

Command: `hv annotate config | serve | push | predict | pull | qa | backend | connect | loop` (see `annotation.cli`).
Loop: shards -> `push` (one task per sample, the image copied to the media root, the key in the task data) ->
`predict` (pre-annotations from the shards' own labels or a fine-tuned checkpoint) -> annotators in Label Studio
-> `pull` (finished annotations written back as annotated shards, into a new folder) -> `qa` (agreement and
validation). Push and predict are idempotent: keys, and predictions of a model version, already in the project
are skipped. `loop` runs one active-learning cycle: pull -> `hv train finetune --init` (a child process, so the
training entry points are never imported here) -> predict the unlabelled tasks, least confident first.
Contract: reads and writes `data_engine.sample` shards; `pull` keeps each original's image, `json` and key and
writes `pose.json` (keypoint set, persons with boxes and COCO visibility), `seg.png` (goliath28 or lip20) or, for
a bbox project, the person boxes in `json.persons`. The model side uses `train.predictor` and `train.models`
only, never the training entry points. The API key comes from LABEL_STUDIO_API_KEY alone and is never logged or saved.

- `labeling`: labeling configs (XML) from `data_engine.schema`; `convert`: our labels <-> Label Studio results.
- `client` (with `auth`): the REST calls; `server`: a local Label Studio on 127.0.0.1 (`hv annotate serve`).
- `push`, `predict` (+ `model_predictor`), `pull`, `qa`: the steps above; `rle`: the brush-mask codec.
- `backend` (+ `backend_model`): an ML backend serving a checkpoint to Label Studio (`hv annotate backend`), with
  a webhook trigger that starts loop cycles and a follower that serves the newest cycle's model.
- `loop`: `hv annotate loop`, one cycle recorded in OUT/cycle-NNN/cycle.json, resumable.
- `config`: the typed settings; `errors`: the one error the commands report.
"""
