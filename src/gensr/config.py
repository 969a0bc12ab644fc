"""Typed configuration: dataclasses updated from YAML files and ``--set key=value`` strings.

Unknown keys and values of the wrong type are errors that name the key and the valid choices
(a typo never passes silently).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from gensr.errors import DAMAGED, ConfigError, damaged

T = TypeVar("T")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        last: Exception | None = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                last = err
        raise last or ConfigError(f"{key}: cannot use {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, key) for v in value]
        return tuple(items) if origin is tuple else items
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if annotation is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return update_config(annotation(), value, prefix=f"{key}.")
    return value


def update_config(config: T, values: dict[str, Any], prefix: str = "") -> T:
    """A copy of dataclass ``config`` with ``values`` applied (type-checked, unknown keys
    rejected; keys the class lists in ``RETIRED`` are dropped). Nested dataclass fields take
    nested dicts or dotted keys."""
    hints = typing.get_type_hints(type(config))
    names = {f.name for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    retired = getattr(type(config), "RETIRED", {})
    changes: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if head in retired and head not in names:  # an earlier version's setting: dropped
            continue
        if head not in names:
            raise ConfigError(
                f"unknown setting '{prefix}{head}'; valid: {', '.join(sorted(names))}"
            )
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            changes[head] = _coerce(value, hints[head], prefix + head)
    for head, sub in nested.items():
        current = changes.get(head, getattr(config, head))
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"'{prefix}{head}' has no sub-settings")
        changes[head] = update_config(current, sub, prefix=f"{prefix}{head}.")
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]


def parse_set(pairs: list[str] | None) -> dict[str, str]:
    """``["a=1", "b.c=x"]`` -> ``{"a": "1", "b.c": "x"}``; values are YAML-parsed."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"--set {key.strip()}: cannot read the value {value!r} (YAML)"
                              ) from None
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file, and a file YAML cannot parse (cut short,
    overwritten, or mistyped) says so in one line (:func:`gensr.errors.damaged`)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise damaged(path, "YAML", f"not UTF-8 text at byte {err.start}", ConfigError
                      ) from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read it ({err.strerror or type(err).__name__})"
                          ) from None
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({problem}{where}): {DAMAGED} or mistyped"
                          ) from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return loaded


def to_dict(config: Any) -> dict[str, Any]:
    """Dataclass -> plain dict (JSON-ready)."""
    return dataclasses.asdict(config)
