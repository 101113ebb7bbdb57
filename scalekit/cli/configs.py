"""Loading configs from the command line: `--config FILE[:ARG]` plus `--config.a.b=value` overrides.

FILE is a python file with `get_config(arg)` (ml_collections style, as nanodo and big_vision do) or a JSON dump of a
full config (what the sweep driver writes). Overrides are parsed to the type of the field they replace, and an
unknown field is an error that lists the fields of its group.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
from pathlib import Path
from typing import Any

import ml_collections

from scalekit.config import ConfigError, default_config


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Load `path.py[:arg]` (calling get_config) or `path.json`."""
    path_str, _, arg = spec.partition(":")
    path = Path(path_str)
    if not path.exists():
        raise ConfigError(f"--config {spec!r}: file {path} does not exist (presets live in configs/train.py, e.g. "
                          "--config configs/train.py:tiny)")
    if path.suffix == ".json":
        try:
            loaded = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"--config {spec!r}: not valid JSON ({e})") from e
        cfg = default_config()
        _merge(cfg, loaded, "")
        return cfg
    module_spec = importlib.util.spec_from_file_location(f"scalekit_config_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"--config {spec!r}: cannot import {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"--config {spec!r}: {path} has no get_config() function")
    try:
        cfg = module.get_config(arg) if arg else module.get_config()
    except ValueError as e:
        raise ConfigError(f"--config {spec!r}: {e}") from e
    return cfg


def _merge(cfg: ml_collections.ConfigDict, values: dict, prefix: str) -> None:
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in cfg:
            raise ConfigError(f"config file sets unknown field {name!r}")
        if isinstance(cfg[key], ml_collections.ConfigDict):
            _merge(cfg[key], value, name + ".")
        else:
            cfg[key] = _coerce(name, cfg[key], value)


def _coerce(name: str, current: Any, value: Any) -> Any:
    """Convert `value` (a string from the command line, or a JSON value) to the type of `current`."""
    if isinstance(value, str) and not isinstance(current, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            if isinstance(current, bool) and value.lower() in ("true", "false"):
                value = value.lower() == "true"
            else:
                raise ConfigError(f"--config.{name}={value!r}: expected a {type(current).__name__}") from None
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"--config.{name}={value!r}: expected true or false")
        return value
    if isinstance(current, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"--config.{name}={value!r}: expected an integer")
        return value
    if isinstance(current, float):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"--config.{name}={value!r}: expected a number")
        return float(value)
    if isinstance(current, str):
        return str(value)
    return value


def apply_override(cfg: ml_collections.ConfigDict, dotted: str, value: str) -> None:
    """Set `cfg.<dotted>` from a command-line string, checking the field exists and the type fits."""
    node = cfg
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            group = ".".join(parts[:i]) or "<top level>"
            choices = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            close = difflib.get_close_matches(part, choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"--config.{dotted}: unknown field {part!r} in {group}{hint}; fields: {choices}")
        if i < len(parts) - 1:
            node = node[part]
    leaf = parts[-1]
    if isinstance(node[leaf], ml_collections.ConfigDict):
        raise ConfigError(f"--config.{dotted} is a group; set one of its fields: {sorted(node[leaf].keys())}")
    node[leaf] = _coerce(dotted, node[leaf], value)


def parse_config_args(argv: list[str]) -> tuple[ml_collections.ConfigDict, list[str]]:
    """Consume `--config SPEC` and `--config.x=v` / `--config.x v` from argv; return (config, the other args)."""
    spec, overrides, rest = "", [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" or arg.startswith("--config="):
            if "=" in arg:
                spec = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                spec, i = argv[i + 1], i + 1
            else:
                raise ConfigError("--config needs a value, e.g. --config configs/train.py:tiny")
        elif arg.startswith("--config."):
            key, eq, value = arg[len("--config."):].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{arg} needs a value")
                value, i = argv[i + 1], i + 1
            overrides.append((key, value))
        else:
            rest.append(arg)
        i += 1
    if not spec:
        raise ConfigError("missing --config, e.g. --config configs/train.py:tiny")
    cfg = load_config_file(spec)
    for key, value in overrides:
        apply_override(cfg, key, value)
    return cfg, rest
