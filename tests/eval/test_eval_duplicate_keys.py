"""`hv eval TASK --checkpoint --shards` never scores a key twice: a copy in another shard is listed under
bad_samples and left out (the metrics equal those without it), or stops the run under bad_samples=raise."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_testdata import labelled_sample, write_finetuned_checkpoint

from data_engine.sample import encode
from data_engine.shards import ShardWriter
from humanvision_cli import main


def _hv(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def test_duplicate_key_scored_once(tmp_path, capsys) -> None:
    ckpt = write_finetuned_checkpoint(str(tmp_path / "model.safetensors"), "multi", (32, 32), "coco17")
    rng = np.random.default_rng(5)
    samples = [labelled_sample(rng, f"{i:04x}") for i in range(3)]
    with ShardWriter(str(tmp_path / "val" / "a")) as writer:
        for s in samples:
            writer.write(s)
    with ShardWriter(str(tmp_path / "copy" / "b")) as writer:
        writer.write(encode(samples[0]))  # the same sample again, as a mis-merged shard set would hold it
    base = ["eval", "depth", "--checkpoint", ckpt, "--shards", str(tmp_path / "val")]
    code, stdout, stderr = _hv(base, capsys)
    assert code == 0, stderr
    alone = json.loads(stdout)
    code, stdout, stderr = _hv([*base, "--shards", str(tmp_path / "copy")], capsys)
    assert code == 0, stderr
    with_copy = json.loads(stdout)
    assert with_copy["samples_scored"] == alone["samples_scored"] == 3
    assert with_copy["rmse"] == alone["rmse"]
    (bad,) = with_copy["bad_samples"]
    assert bad["key"] == "0000" and "duplicate key" in bad["reason"] and bad["shard"].endswith("b-000000.tar")
    code, _, stderr = _hv([*base, "--shards", str(tmp_path / "copy"), "bad_samples=raise"], capsys)
    assert code == 2 and "0000: duplicate key" in stderr
