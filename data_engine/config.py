"""The one config loader of every stage: a typed dataclass is the schema, YAML sets values, flags and `key=value` win.

    cfg = load_config(CurateConfig, "configs/curate/default.yaml", ["quality.min_blur=5"], flags={"out": "runs/c"})
    save_config(cfg, "runs/c/config.yaml")  # the resolved config, beside the outputs

Layers, each over the one before: the dataclass defaults, the YAML file, the command-line flags that were given
(None = not given; a dotted name such as "bodies.count" or a nested dict), the `key=value` overrides. An unknown key,
a value of the wrong type (an Enum or Literal field refuses anything outside its set) or a malformed override raises
`ConfigError` naming the key and the file or override it came from, before anything starts; then the schema's own
`validate()` runs, if it has one. Each stage (`hv curate`, `synth`, `annotate`, `pretrain`, `finetune`, `eval`)
loads through here, so `except ConfigError` catches a bad config of any of them.

omegaconf and yaml are imported inside the functions: every package imports this module.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be used: unknown key, wrong type, missing or unreadable file, malformed override, or a
    value its stage's validation refuses. The message names the key and the file or override."""


def load_config(
    schema: type[T],
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] | None = (),
    flags: Mapping[str, Any] | None = None,
    what: str = "config",
) -> T:
    """Defaults of `schema` <- the YAML file <- `flags` (those not None) <- `key=value` overrides; validated.

    Args:
        schema: a dataclass; its field types are checked (OmegaConf structured config).
        path: a YAML file; None or "" = none.
        overrides: `key=value` words, dotted keys for nested sections (`quality.min_blur=5`).
        flags: command-line flags by config key; a value of None means the flag was not given.
        what: how messages name this config ("curate config", ...).
    Returns:
        an instance of `schema`, after its `validate()` (when it has one).
    """
    from omegaconf import OmegaConf

    merged = OmegaConf.structured(schema)
    if path:
        where = f"{what} file {os.fspath(path)!r}"
        merged = _merge(merged, lambda: _load_yaml(os.fspath(path), where), where)
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    if given:
        merged = _merge(merged, lambda: OmegaConf.create(_nest(given)), f"{what} flags")
    for item in overrides or ():
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must be key=value")
        merged = _merge(merged, lambda item=item: OmegaConf.from_dotlist([item]), f"override {item!r}")
    cfg = _to_object(merged, what)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain data, Enums as their values (`bad_samples: raise`, not the member name)."""
    return _plain(dataclasses.asdict(cfg))


def to_yaml(cfg: Any) -> str:
    """The config as YAML that `load_config` reads back to an equal config."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg)))


def save_config(cfg: Any, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as YAML (atomically: a reader never sees half a file)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(to_yaml(cfg))
    os.replace(tmp, path)


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _load_yaml(path: str, where: str) -> Any:
    """OmegaConf.load, with a syntax error's line and column kept in one line (OmegaConf's message spans several)."""
    import yaml
    from omegaconf import OmegaConf

    if not os.path.isfile(path):
        raise ConfigError(f"{where} does not exist")
    try:
        return OmegaConf.load(path)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(p for p in (e.problem, e.context) if p) or type(e).__name__
        raise ConfigError(f"{where}{at}: YAML syntax error: {problem}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{where} cannot be read: {_first_line(e)}") from None


def _merge(base: Any, layer: Any, where: str) -> Any:
    """`base` with the config `layer()` builds merged over it; OmegaConf's errors become one-line ConfigErrors."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.merge(base, layer())
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        raise ConfigError(f"{where}: {_describe(e)}") from None
    except yaml.YAMLError as e:  # an override's value that is not YAML (`a=[1`)
        raise ConfigError(f"{where}: not a YAML value ({getattr(e, 'problem', None) or _first_line(e)})") from None
    except (ValueError, TypeError) as e:  # a YAML file that is not a mapping, a flag of an unsupported type
        raise ConfigError(f"{where}: {_first_line(e)}") from None


def _to_object(merged: Any, what: str) -> Any:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:  # a mandatory value left unset, a bad interpolation
        raise ConfigError(f"{what}: {_describe(e)}") from None


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"bodies.count": 3, "out": "x"} -> {"bodies": {"count": 3}, "out": "x"}."""
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return nested


def _describe(e: Exception) -> str:
    """OmegaConf's first line ("Key 'nope' not in 'QualityConfig'"), plus the full dotted key when it has one."""
    key = getattr(e, "full_key", None)
    return _first_line(e) + (f" (key {key})" if key else "")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
