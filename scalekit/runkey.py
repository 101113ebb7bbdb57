"""A run's identity: the sha256 of its result-changing config, shared by the sweep store and the checkpoints.

The key leaves out fields that do not change a run's result (progress display, logging, observability, checkpoint
cadence and location, mesh, steps per dispatch, compilation cache, data loading workers): the same experiment
always gets the same key.
It lives here, below both `train/` (checkpoints record it) and `sweep/` (the store is keyed by it), so neither
imports the other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

# Config fields that never change a run's result: they are left out of its key.
IDENTITY_EXCLUDE = ("progress", "log_every", "steps_per_dispatch", "profile_steps", "peak_flops",
                    "compilation_cache_dir", "observe", "distributed", "checkpoint", "mesh", "data.worker_count",
                    "data.prefetch")
# Fields added after keys were first issued, left out of the key while they hold these defaults (which train exactly
# as before the field existed), so the runs of existing sweeps and checkpoints keep their keys.
IDENTITY_DEFAULTS = {"model.parametrization": "standard", "model.base_width": 0, "model.base_head_dim": 0}
# Fields a resumed run may change: extending a run (more steps) continues the same experiment.
RESUMABLE_CHANGES = ("steps",)


def identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config as plain JSON types without the IDENTITY_EXCLUDE fields (nor IDENTITY_DEFAULTS fields at their
    defaults): what the key hashes."""
    doc = json.loads(json.dumps(dict(config)))
    for dotted in IDENTITY_EXCLUDE:
        node, parts = _parent(doc, dotted)
        node.pop(parts[-1], None)
    for dotted, default in IDENTITY_DEFAULTS.items():
        node, parts = _parent(doc, dotted)
        if parts[-1] in node and node[parts[-1]] == default:
            del node[parts[-1]]
    return doc


def _parent(doc: dict[str, Any], dotted: str) -> tuple[dict[str, Any], list[str]]:
    node, parts = doc, dotted.split(".")
    for part in parts[:-1]:
        node = node.get(part, {})
    return node, parts


def run_key(config: Mapping[str, Any], allow_nan: bool = False) -> str:
    """sha256 of the canonical JSON of the config without the IDENTITY_EXCLUDE fields.

    allow_nan=False (the sweep's setting) refuses non-finite values; allow_nan=True hashes them (a trainer given
    lr=inf still gets a key); finite configs hash the same either way.
    """
    canon = json.dumps(identity(config), sort_keys=True, separators=(",", ":"), allow_nan=allow_nan)
    return hashlib.sha256(canon.encode()).hexdigest()


def flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a.b': value} for every leaf of a nested mapping."""
    out: dict[str, Any] = {}
    for k, v in doc.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def differing_fields(a: Mapping[str, Any], b: Mapping[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted names of the leaves that differ between two identity docs (missing on one side counts)."""
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in set(fa) | set(fb)
                  if k not in ignore and (k not in fa or k not in fb or _canon(fa[k]) != _canon(fb[k])))


def _canon(x: Any) -> str:
    return json.dumps(x, sort_keys=True)  # NaN compares equal to NaN here
