"""data_engine: the data contract and the curation DAG.

- `schema`: the 308 Goliath keypoints and the `goliath28` / `lip20` class vocabularies.
- `sample`: the sample contract (`Sample`, `encode`, `decode`) every stage reads and writes; its types are in
  `sample_types`, its member codecs in `sample_codecs`.
- `shards`: atomic WebDataset shard writing and streaming reading with a bad-sample policy (`BadSamplePolicy`),
  over `shard_paths` (paths, URIs, expansion), `shard_writer` and `shard_reader`.
- `output_fs`: an output folder, local or any `pyarrow.fs` URI (s3://), whose every write is all-or-nothing under its
  final name (the shard writer and `hv curate` write through it).
- `config`: every stage's config loading (`load_config`, `save_config`) and its one `ConfigError`.
- `manifest`: the Parquet manifest, one row per input ever seen.
- the curation DAG behind `hv curate` (Ray Data): decode, validate, quality and person filters,
  exact and near-duplicate removal, shards and manifest; `detect` is its person detector (no Ray, also used by
  `hv predict`), `detect_stage` the detector's Ray Data stage.
"""
