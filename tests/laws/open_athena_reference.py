"""The Open-Athena reference table, read in place from ../shared/data/open_athena_isoflops/README.md.

Each row of the README's "Reference values" table becomes a `ReferenceRow`: which experiment and rows it uses, the
approach-2 exponent a and the approach-3 (E, alpha, beta) as the README prints them (strings, so that a test can
take its tolerance from the published decimals), and whether the authors' approach-3 fit stopped at a bound.
Nothing is copied into the repository; without ../shared the list is empty and the tests skip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FOLDER = Path(__file__).resolve().parents[3] / "shared" / "data" / "open_athena_isoflops"
README, CSV = FOLDER / "README.md", FOLDER / "isoflops.csv"
_NUMBER = re.compile(r"\d+\.\d+")


@dataclass(frozen=True)
class ReferenceRow:
    label: str                        # the README's "rows used" cell, e.g. "marin_202603 comma, clean"
    experiment: str                   # the experiment name in isoflops.csv
    clean: bool                       # outlier == False rows only (else every row)
    a: str                            # approach 2's a, as printed
    e_alpha_beta: tuple[str, str, str]
    at_bound: bool                    # the authors' approach-3 fit stopped at a bound

    @property
    def id(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", self.label.lower()).strip("_")


def _experiment(label: str, experiments: list[str]) -> str:
    """The one experiment whose name holds every word of the label's first part."""
    words = label.split(",")[0].split()
    hits = [e for e in experiments if all(w in e for w in words)]
    if len(hits) != 1:
        raise ValueError(f"README row {label!r} matches experiments {hits}")
    return hits[0]


def reference_rows() -> list[ReferenceRow]:
    """The table's rows, or [] when ../shared/data is absent."""
    if not (README.is_file() and CSV.is_file()):
        return []
    with CSV.open() as fh:
        header = fh.readline().strip().split(",")
        col = header.index("experiment")
        experiments = sorted({line.split(",")[col] for line in fh if line.strip()})
    text = README.read_text().split("## Reference values", 1)[1]
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not _NUMBER.search(cells[1]):
            continue                                           # header, separator and prose lines
        a = _NUMBER.findall(cells[1])[0]
        e_alpha_beta = tuple(_NUMBER.findall(cells[2])[:3])
        rows.append(ReferenceRow(cells[0], _experiment(cells[0], experiments), "clean" in cells[0], a,
                                 e_alpha_beta, "bound" in cells[2]))
    return rows
