"""Checks for every value that reaches an sbatch script or a Kubernetes manifest: one ValueError naming the flag.

A newline in a job name or a time limit would end its `#SBATCH` line and run the rest as a shell command (and
sbatch stops reading directives at the first line that is not one), so control characters are refused everywhere;
values with a format (Slurm time limits, job names, Kubernetes names and quantities, environment names, ports)
are checked against it. Each message names the flag and says what to give instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_NAMES = {"\n": "a newline", "\r": "a carriage return", "\x00": "a NUL byte", "\t": "a tab"}

# Slurm --time: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS (and Slurm's words for no limit).
_SLURM_TIME = re.compile(r"(?P<a>\d+)(?::(?P<b>\d{1,2}))?(?::(?P<c>\d{1,2}))?"
                         r"|(?P<d>\d+)-(?P<h>\d{1,2})(?::(?P<m>\d{1,2}))?(?::(?P<s>\d{1,2}))?")
SLURM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")
SLURM_LIST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,@+-]{0,255}")  # partitions, accounts, QOS (comma lists)
SLURM_MEM = re.compile(r"[0-9]+[KMGTkmgt]?")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?")
MAX_PORT = 65535


def no_control(flag: str, value: str) -> str:
    """`value` unless it holds a control character (any code point below 0x20, or 0x7f)."""
    m = _CONTROL.search(value)
    if m:
        what = _CONTROL_NAMES.get(m.group(), f"the control character {m.group()!r}")
        raise ValueError(f"{flag} {value!r} contains {what}: give it on one line without control characters")
    return value


def printable(text: str) -> str:
    """`text` with every control character shown as '?' (for comment lines such as the script's header note)."""
    return _CONTROL.sub("?", text)


def no_control_all(flag: str, values: Iterable[str]) -> None:
    """no_control on each value (train args, preflight args, raw directives)."""
    for v in values:
        no_control(flag, v)


def matches(flag: str, value: str, pattern: re.Pattern, what: str) -> str:
    """`value` when it is free of control characters and fully matches `pattern` (`what` describes the format)."""
    no_control(flag, value)
    if not pattern.fullmatch(value):
        raise ValueError(f"{flag} {value!r} is not valid: {what}")
    return value


def no_space(flag: str, value: str) -> str:
    """`value` (a path in an #SBATCH line, which sbatch splits at white space) without control chars or spaces."""
    no_control(flag, value)
    if re.search(r"[\s\"'\\]", value):
        raise ValueError(f"{flag} {value!r} contains white space, a quote or a backslash, which an #SBATCH line "
                         "cannot hold: use a path without them")
    return value


def slurm_time(flag: str, value: str) -> str:
    """A Slurm time limit: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS."""
    no_control(flag, value)
    fix = "use MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS, e.g. 04:00:00 or 2-00:00:00"
    if value.upper() in ("UNLIMITED", "INFINITE"):
        return value
    m = _SLURM_TIME.fullmatch(value)
    if not m:
        raise ValueError(f"{flag} {value!r} is not a Slurm time limit: {fix}")
    g = m.groupdict()
    if g["a"] is not None:  # MM | MM:SS | HH:MM:SS: every field after the first is below 60
        later = [g["b"], g["c"]]
    else:
        later = [g["m"], g["s"]]
        if int(g["h"]) > 23:
            raise ValueError(f"{flag} {value!r}: hours after the day count must be 0-23; {fix}")
    if any(x is not None and int(x) > 59 for x in later):
        raise ValueError(f"{flag} {value!r}: minutes and seconds must be 0-59; {fix}")
    return value


def int_range(flag: str, value: int, lo: int, hi: int | None = None) -> int:
    """`value` when lo <= value (<= hi)."""
    if value < lo or (hi is not None and value > hi):
        span = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ValueError(f"{flag}={value} is out of range: give an integer {span}")
    return value


def port(flag: str, value: int, allow_zero: bool = False) -> int:
    """A TCP port, 1..65535 (0 too when it means 'off' or 'any')."""
    return int_range(flag, value, 0 if allow_zero else 1, MAX_PORT)


def env_vars(flag: str, env: Mapping[str, str]) -> None:
    """Environment names are shell identifiers; values are free of control characters."""
    for k, v in env.items():
        matches(flag, k, ENV_NAME, "a variable name is letters, digits and '_', not starting with a digit "
                                   "(give KEY=VALUE)")
        no_control(f"{flag} {k}=...", v)
