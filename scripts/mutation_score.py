"""Per-module mutation scores from mutmut 3's results in mutants/ (`make mutate` prints them).

mutmut records one exit code per mutant in mutants/<source path>.meta (JSON, key "exit_code_by_key"); this reads
those files directly and prints, for each area the issue names (scalekit/laws/ as a whole and per file, then
train/step.py, checkpoint.py, sweep/store.py, model/counting.py), how many mutants were killed out of those run.

    python scripts/mutation_score.py                    # the table
    python scripts/mutation_score.py --survivors        # and the names of the mutants that survived
    python scripts/mutation_score.py --sample 60        # print a seeded random sample of mutant names per area
    python scripts/mutation_score.py --names FILE       # score only the mutants named in FILE (one per line)

Score = killed / (killed + survived + timeout + suspicious + no tests), over the mutants that have a result;
"not checked" (never run) and "skipped" are left out of the denominator and shown. A timeout counts as killed:
mutmut allows each mutant 30x its tests' clean time (plus a constant) before it gives up, so a timeout is a mutant
that changed behaviour (a loop that no longer ends, a fit that no longer converges); so does a crash (mutmut's
"segfault": the test process killed by a signal). "no tests" (no test calls the function) counts against the score.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path

# mutmut's exit-code meanings (mutmut/stats.py, status_by_exit_code)
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 35: "suspicious",
          36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", 37: "killed",
          -11: "segfault", -9: "segfault", 2: "interrupted", None: "not checked"}
AREAS = {"scalekit/laws/": "laws/ (all)", "scalekit/train/step.py": "train/step.py",
         "scalekit/checkpoint.py": "checkpoint.py", "scalekit/sweep/store": "sweep/store*.py",
         "scalekit/model/counting.py": "model/counting.py"}


def status(code: int | None) -> str:
    return STATUS.get(code, "suspicious")


def load(root: Path) -> dict[str, dict[str, int | None]]:
    """{source path: {mutant name: exit code}} for every .meta file under root/scalekit."""
    out = {}
    for meta in sorted((root / "scalekit").rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if codes:
            out[str(meta.relative_to(root))[: -len(".meta")]] = codes
    return out


def area_of(path: str) -> str | None:
    return next((name for prefix, name in AREAS.items() if path.startswith(prefix)), None)


def row(label: str, counts: Counter) -> str:
    killed = counts["killed"] + counts["timeout"] + counts["segfault"]
    run = killed + counts["survived"] + counts["suspicious"] + counts["no tests"]
    pct = f"{100 * killed / run:5.1f}%" if run else "    -"
    return (f"{label:<28} {killed:>6} / {run:<6} {pct}  survived {counts['survived']:<5} "
            f"no-tests {counts['no tests']:<4} timeout {counts['timeout']:<4} suspicious {counts['suspicious']:<3} "
            f"not-checked {counts['not checked']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("mutants"))
    ap.add_argument("--names", type=Path, help="score only the mutants listed in this file")
    ap.add_argument("--survivors", action="store_true", help="list the surviving mutants")
    ap.add_argument("--sample", type=int, help="print N randomly chosen mutant names per area, and exit")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    data = load(args.root)
    if not data:
        print(f"no mutmut results under {args.root}/ (run `make mutate` first)", file=sys.stderr)
        return 1
    if args.sample:
        rng = random.Random(args.seed)
        for prefix in AREAS:
            names = sorted(k for p, codes in data.items() if p.startswith(prefix) for k in codes)
            print("\n".join(sorted(rng.sample(names, min(args.sample, len(names))))))
        return 0
    wanted = set(args.names.read_text().split()) if args.names else None
    per_file: dict[str, Counter] = {}
    per_area: dict[str, Counter] = {name: Counter() for name in AREAS.values()}
    survivors = []
    for path, codes in data.items():
        area = area_of(path)
        if area is None:
            continue
        c = per_file.setdefault(path, Counter())
        for name, code in codes.items():
            if wanted is not None and name not in wanted:
                continue
            s = status(code)
            c[s] += 1
            per_area[area][s] += 1
            if s in ("survived", "no tests", "suspicious"):
                survivors.append(f"{name}: {s}")
    print(f"{'area':<28} {'killed / run':>15}  (timeouts count as killed)")
    for name, counts in per_area.items():
        print(row(name, counts))
    print()
    for path, counts in per_file.items():
        if path.startswith("scalekit/laws/") and sum(counts.values()):
            print(row("  " + path.removeprefix("scalekit/"), counts))
    if args.survivors:
        print()
        print("\n".join(survivors))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:          # piped into head
        sys.exit(0)
