"""WebDataset shards: atomic writing, streaming reading with an explicit bad-sample policy.

A shard is `{prefix}-{000000}.tar`. The writer streams members into a hidden temporary file beside it
and renames it to the final name only once it is complete, so a killed job never leaves a half shard
under a final name; a writer restarted on the same folder deletes stale temporaries and numbers its new
shards after the existing complete ones.

Paths are local paths or any URI that `pyarrow.fs` understands (s3://, gs://, file://).

This module is the contract's one import for shards; the code lives by concern in
`shard_paths` (paths, URIs, pattern expansion), `shard_writer` (writing) and `shard_reader` (reading).
"""

from __future__ import annotations

from data_engine.shard_paths import expand, open_input
from data_engine.shard_reader import (
    MAX_MEMBER_BYTES,
    BadSample,
    BadSamplePolicy,
    ReadReport,
    ShardError,
    iter_members,
    iter_samples,
)
from data_engine.shard_writer import ShardInfo, ShardWriter

__all__ = [
    "MAX_MEMBER_BYTES",
    "BadSample",
    "BadSamplePolicy",
    "ReadReport",
    "ShardError",
    "ShardInfo",
    "ShardWriter",
    "expand",
    "iter_members",
    "iter_samples",
    "open_input",
]
