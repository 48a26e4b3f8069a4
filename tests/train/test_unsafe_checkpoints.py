"""Crafted checkpoints: a `.pt` whose unpickling would run code is refused by `hv train export-weights` and
`hv train finetune --init`, and the code never runs; plain weights-only torch files are accepted by `--init`."""

from __future__ import annotations

import os

import pytest
import torch

import humanvision_cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class RunsCodeWhenUnpickled:
    """Unpickling this calls os.mkdir(marker): the stand-in for an attacker's payload."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def hv(*argv: str) -> int:
    args = humanvision_cli.build_parser().parse_args(list(argv))
    return int(args.func(args) or 0)


def crafted_run(folder, marker: str, zero: bool) -> str:
    """A run folder whose newest checkpoint holds the payload: ZeRO-0 layout (model states only) or a ZeRO
    layout (optimizer shards, which DeepSpeed's zero_to_fp32 reads)."""
    step = folder / "checkpoints" / "step_00000001"
    step.mkdir(parents=True)
    (folder / "checkpoints" / "latest").write_text("step_00000001")
    payload = {"module": {"w": torch.zeros(2)}, "extra": RunsCodeWhenUnpickled(marker)}
    torch.save(payload, step / "mp_rank_00_model_states.pt")
    if zero:
        torch.save({"optimizer_state_dict": payload}, step / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    return str(folder)


def test_payload_runs_when_loaded_freely(tmp_path) -> None:
    """The crafted file is a real attack: a free unpickling creates the marker (so the tests below mean something)."""
    marker = str(tmp_path / "pwned")
    torch.save({"x": RunsCodeWhenUnpickled(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert os.path.isdir(marker)


@pytest.mark.parametrize("zero", [False, True], ids=["zero0", "zero123"])
def test_export_weights_refuses_a_crafted_checkpoint(tmp_path, capsys, zero: bool) -> None:
    marker = str(tmp_path / "pwned")
    run = crafted_run(tmp_path / "run", marker, zero)
    assert hv("train", "export-weights", run) == 2
    err = capsys.readouterr().err
    assert "refused to load" in err and "_states.pt" in err and "it needs posix.mkdir" in err and "trust" in err
    assert len(err.strip().splitlines()) == 1
    assert not os.path.exists(marker)
    assert not os.path.exists(os.path.join(run, "weights.safetensors"))


def test_finetune_init_refuses_a_crafted_run_and_file(tmp_path, shards, capsys) -> None:
    marker = str(tmp_path / "pwned")
    run = crafted_run(tmp_path / "run", marker, zero=True)
    evil_file = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": RunsCodeWhenUnpickled(marker)}, evil_file)
    for init in (run, str(evil_file)):
        code = hv(
            "train", "finetune", "--config", os.path.join(ROOT, "configs/finetune/pose_tiny.yaml"), "--init", init,
            "--out", str(tmp_path / "ft"), "--in-process", f"data.shards={shards}", "steps=2", "optim.warmup_steps=0",
        )  # fmt: skip
        assert code == 2
        err = capsys.readouterr().err
        assert "refused to load" in err, err
        assert not os.path.exists(marker)
    assert not os.path.exists(tmp_path / "ft" / "checkpoints")


def test_init_reads_a_plain_torch_state_dict(tmp_path) -> None:
    from train.models.weights import read_init_state

    weights = {"encoder.w": torch.arange(3.0)}
    torch.save({"state_dict": weights, "epoch": 3}, tmp_path / "foreign.pth")
    state, config, source = read_init_state(str(tmp_path / "foreign.pth"))
    assert source.endswith("foreign.pth") and config is None
    torch.testing.assert_close(state["encoder.w"], weights["encoder.w"])
    torch.save({"epoch": 3}, tmp_path / "empty.pt")
    with pytest.raises(ValueError, match="no state dict of tensors"):
        read_init_state(str(tmp_path / "empty.pt"))
