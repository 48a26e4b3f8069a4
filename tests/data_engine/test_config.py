"""One config loader and one ConfigError for every stage; one bad-sample policy type (`data_engine.config`,
`data_engine.shards.BadSamplePolicy`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from data_engine.config import ConfigError, load_config, save_config, to_dict
from data_engine.sample import Sample, encode, key_from_bytes
from data_engine.shards import BadSamplePolicy, ReadReport, ShardWriter, iter_samples


def _curate(path: str | None, overrides: list[str]) -> Any:
    from data_engine.curate_config import load_config as curate

    return curate(path, overrides, inputs=["photos/"], out="runs/c")


def _synth(path: str | None, overrides: list[str]) -> Any:
    from synth.config import load_config as synth

    return synth(path, overrides)


def _annotate(path: str | None, overrides: list[str]) -> Any:
    from annotation.config import load_config as annotate

    return annotate(path, overrides)


def _pretrain(path: str | None, overrides: list[str]) -> Any:
    from train.config import load_config as train_load_config
    from train.pretrain import PretrainConfig

    return train_load_config(PretrainConfig, path, ["data.shards=x/*.tar", *overrides])


def _eval(path: str | None, overrides: list[str]) -> Any:
    from eval.config import EvalConfig

    return load_config(EvalConfig, path, overrides, what="eval config")


def _predict(path: str | None, overrides: list[str]) -> Any:
    from eval.config import PredictConfig

    return load_config(PredictConfig, path, overrides, what="predict config")


STAGES: dict[str, Callable[[str | None, list[str]], Any]] = {
    "curate": _curate,
    "synth": _synth,
    "annotate": _annotate,
    "pretrain": _pretrain,
    "eval": _eval,
    "predict": _predict,
}
WITH_BAD_SAMPLES = ("annotate", "eval", "predict")


def test_every_stage_module_exports_the_one_config_error() -> None:
    import annotation.config
    import data_engine.curate_config
    import eval.config
    import synth.config
    import train.config

    for module in (data_engine.curate_config, synth.config, annotation.config, train.config):
        assert module.ConfigError is ConfigError, module.__name__
    assert eval.config.ConfigError is ConfigError


@pytest.mark.parametrize("stage", list(STAGES))
def test_unknown_key_raises_the_same_config_error_naming_key_and_file(stage: str, tmp_path: Path) -> None:
    load = STAGES[stage]
    with pytest.raises(ConfigError, match="typo_key") as caught:
        load(None, ["typo_key=1"])
    assert type(caught.value) is ConfigError
    yaml = tmp_path / "stage.yaml"
    yaml.write_text("typo_key: 1\n")
    with pytest.raises(ConfigError, match=r"stage\.yaml.*typo_key") as caught:
        load(str(yaml), [])
    assert type(caught.value) is ConfigError
    with pytest.raises(ConfigError, match="key=value"):
        load(None, ["typo_key"])
    with pytest.raises(ConfigError, match=r"missing\.yaml.*does not exist"):
        load(str(tmp_path / "missing.yaml"), [])


@pytest.mark.parametrize("stage", WITH_BAD_SAMPLES)
def test_old_yaml_bad_samples_values_load_into_the_enum_and_save_as_values(stage: str, tmp_path: Path) -> None:
    load = STAGES[stage]
    for value, member in (("raise", BadSamplePolicy.raise_), ("skip", BadSamplePolicy.skip)):
        yaml = tmp_path / f"{value}.yaml"
        yaml.write_text(f"bad_samples: {value}\n")
        cfg = load(str(yaml), [])
        assert cfg.bad_samples is member and cfg.bad_samples == value
    assert load(None, ["bad_samples=raise"]).bad_samples is BadSamplePolicy.raise_
    # Saved as the value a person wrote (`raise`), not the member name (`raise_`), and read back equal.
    saved = tmp_path / "saved.yaml"
    save_config(cfg := load(None, ["bad_samples=raise"]), saved)
    assert "bad_samples: raise\n" in saved.read_text()
    assert load(str(saved), []) == cfg


@pytest.mark.parametrize("stage", WITH_BAD_SAMPLES)
def test_a_bad_mode_value_is_refused_naming_the_key(stage: str, tmp_path: Path) -> None:
    load = STAGES[stage]
    with pytest.raises(ConfigError, match=r"'sometimes'.*key bad_samples"):
        load(None, ["bad_samples=sometimes"])
    yaml = tmp_path / "modes.yaml"
    yaml.write_text("bad_samples: sometimes\n")
    with pytest.raises(ConfigError, match=r"modes\.yaml.*key bad_samples"):
        load(str(yaml), [])


@pytest.mark.parametrize(
    ("stage", "override", "key"),
    [
        ("annotate", "vocabulary=coco", "vocabulary"),
        ("annotate", "seg_overlap=biggest", "seg_overlap"),
        ("synth", "lights.kinds=[laser]", "lights.kinds"),
        ("synth", "background.procedural=[plasma]", "background.procedural"),
        ("synth", "bodies.families=[flying]", "bodies.families"),
        ("synth", "image_format=gif", "image_format"),
        ("curate", "detector.name=yolo", "detector.name"),
    ],
)
def test_modes_are_typed_and_refuse_values_outside_their_set(stage: str, override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"key {key}"):
        STAGES[stage](None, [override])


@dataclass
class _Inner:
    n: int = 1


@dataclass
class _Schema:
    name: str = "default"
    policy: BadSamplePolicy = BadSamplePolicy.skip
    inner: _Inner = field(default_factory=_Inner)

    def validate(self) -> None:
        if self.inner.n < 0:
            raise ConfigError(f"inner.n must be >= 0, got {self.inner.n}")


def test_layers_defaults_yaml_flags_overrides_then_validate(tmp_path: Path) -> None:
    yaml = tmp_path / "c.yaml"
    yaml.write_text("name: from_yaml\ninner:\n  n: 2\n")
    assert load_config(_Schema, str(yaml)) == _Schema(name="from_yaml", inner=_Inner(2))
    # Flags win over the file; a flag of None was not given; dotted flag names reach nested sections.
    cfg = load_config(_Schema, str(yaml), flags={"name": "from_flag", "inner.n": None, "policy": "raise"})
    assert (cfg.name, cfg.inner.n, cfg.policy) == ("from_flag", 2, BadSamplePolicy.raise_)
    # Overrides win over flags.
    cfg = load_config(_Schema, str(yaml), ["inner.n=5", "name=from_override"], flags={"name": "from_flag"})
    assert (cfg.name, cfg.inner.n) == ("from_override", 5)
    assert to_dict(cfg) == {"name": "from_override", "policy": "skip", "inner": {"n": 5}}
    with pytest.raises(ConfigError, match=r"inner\.n must be >= 0"):
        load_config(_Schema, None, ["inner.n=-1"])
    with pytest.raises(ConfigError, match=r"my flags.*key inner\.n"):
        load_config(_Schema, None, flags={"inner.n": "many"}, what="my")
    with pytest.raises(ConfigError, match=r"override 'inner.n=\[1'.*not a YAML value"):
        load_config(_Schema, None, ["inner.n=[1"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("inner: {n: 2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml', line \d+, column \d+: YAML syntax error"):
        load_config(_Schema, str(broken))


def test_iter_samples_takes_the_enum_or_its_strings_and_refuses_other_policies(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(3):
        image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        samples.append(Sample(key=key_from_bytes(image.tobytes()), image=image, meta={"split": "train"}))
    members = [encode(s) for s in samples]
    members[1]["json"] = b"{not json"
    with ShardWriter(str(tmp_path / "p" / "bad")) as writer:
        for m in members:
            writer.write(m)
    for skip in (BadSamplePolicy.skip, "skip"):
        report = ReadReport()
        assert len(list(iter_samples(str(tmp_path / "p"), policy=skip, report=report))) == 2
        assert [b.key for b in report.bad] == [samples[1].key]
    for stop in (BadSamplePolicy.raise_, "raise"):
        with pytest.raises(ValueError, match=samples[1].key):
            list(iter_samples(str(tmp_path / "p"), policy=stop))
    with pytest.raises(ValueError, match="'Skip' is not a valid BadSamplePolicy"):
        list(iter_samples(str(tmp_path / "p"), policy="Skip"))
