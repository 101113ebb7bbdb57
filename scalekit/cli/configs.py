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
import math
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
    if path.is_dir():
        raise ConfigError(f"--config {spec!r}: {path} is a directory; give a .py file with get_config() or a .json "
                          "config")
    if path.suffix == ".json":
        try:
            loaded = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"--config {spec!r}: not valid JSON ({e})") from e
        except OSError as e:
            raise ConfigError(f"--config {spec!r}: cannot read {path} ({e.strerror or e})") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config {spec!r}: a JSON config must be an object of fields, got "
                              f"{type(loaded).__name__}")
        cfg = default_config()
        _merge(cfg, loaded, "")
        return cfg
    module_spec = importlib.util.spec_from_file_location(f"scalekit_config_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"--config {spec!r}: cannot import {path}")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"--config {spec!r}: syntax error in {e.filename or path} line {e.lineno}: {e.msg}") from e
    except Exception as e:  # noqa: BLE001 - any failure of the user's file is a config error, in one line
        raise ConfigError(f"--config {spec!r}: importing {path} failed: {_describe(e)}") from e
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"--config {spec!r}: {path} has no get_config() function")
    try:
        cfg = module.get_config(arg) if arg else module.get_config()
    except ValueError as e:  # e.g. an unknown preset: the file's own message
        raise ConfigError(f"--config {spec!r}: {_one_line(str(e))}") from e
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"--config {spec!r}: get_config({arg!r}) in {path} raised {_describe(e)}") from e
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(f"--config {spec!r}: get_config() returned {type(cfg).__name__}, not a ConfigDict; "
                          "start from scalekit.config.default_config()")
    missing = sorted(set(_leaf_names(default_config())) - set(_leaf_names(cfg)))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ConfigError(f"--config {spec!r}: get_config() returned a config without {shown}; start from "
                          "scalekit.config.default_config()")
    return cfg


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _describe(e: BaseException) -> str:
    text = _one_line(str(e))
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _leaf_names(cfg: Any, prefix: str = "") -> list[str]:
    names: list[str] = []
    for key, value in cfg.items():
        if isinstance(value, ml_collections.ConfigDict):
            names += _leaf_names(value, f"{prefix}{key}.")
        else:
            names.append(f"{prefix}{key}")
    return names


def _merge(cfg: ml_collections.ConfigDict, values: dict, prefix: str) -> None:
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in cfg:
            raise ConfigError(f"config file sets unknown field {name!r}")
        if isinstance(cfg[key], ml_collections.ConfigDict):
            if not isinstance(value, dict):
                raise ConfigError(f"config file sets group {name!r} to {value!r}; it must be an object of fields: "
                                  f"{sorted(cfg[key].keys())}")
            _merge(cfg[key], value, name + ".")
        else:
            cfg[key] = _coerce(name, cfg[key], value)


def _coerce(name: str, current: Any, value: Any) -> Any:
    """Convert `value` (a string from the command line, or a JSON value) to the type of `current`."""
    if isinstance(value, str) and not isinstance(current, str):
        if value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
            raise ConfigError(f"--config.{name}={value!r} is not a finite number; give a finite value")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            if isinstance(current, bool) and value.lower() in ("true", "false"):
                value = value.lower() == "true"
            else:
                kind = ("true or false" if isinstance(current, bool) else "an integer" if isinstance(current, int)
                        else "a number" if isinstance(current, float) else f"a {type(current).__name__}")
                raise ConfigError(f"--config.{name}={value!r}: expected {kind}") from None
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
        try:
            value = float(value)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(f"--config.{name}={value!r} is not a finite number; give a finite value")
        return value
    if isinstance(current, str):
        if isinstance(value, (dict, list)):
            raise ConfigError(f"--config.{name}={value!r}: expected a string")
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
