"""synth: synthetic ground truth rendered from lit 3D scans and parametric bodies.

Command: `hv synth SCANS... --out OUT` (scans), `hv synth --bodies N --out OUT` (anny bodies), and
`hv synth preview OUT --out sheet.png` (a contact sheet); see `synth.cli`.
Loop: `engine.run_job` plans one task per scan or body, skips the subjects the manifest says are finished, and
hands the rest to `RenderWorker`s (one Ray actor per CPU, or in process with `inline=true`); a worker loads the
subject, draws `views` random views (camera, lights, background from one seed) and renders each one.
Contract: every view is one sample of `data_engine.sample`, in one shard set per subject under `OUT/shards/`:
RGB, `json` (camera `K`, `world_to_camera`, and `scan_to_world` for scans; the person box from the mask; the
split, drawn per subject), `pose.json` (the 308 Goliath keypoints, COCO visibility from the rendered depth),
`seg.png` (goliath28), `depth.png`, `normal.png` and `mask.png`. `OUT/manifest.parquet` has one row per subject
(done / rejected / failed); a re-run resumes to the same keys.

- `config`: the typed config (`SynthConfig`); `engine`: planning, workers, Ray and resume; `manifest`: its rows.
- `scans` and `bodies` (with `poses`) make a `subject.Subject`; `geometry`: the plain data a renderer draws.
- `views`: cameras, lights, backgrounds; `camera`: pinhole cameras and projection; `annotate`: keypoint labels.
- `render` (through `gl`, the one place that imports pyrender): the RGB pass and the exact geometry pass.
- `preview`: `hv synth preview`.
"""
