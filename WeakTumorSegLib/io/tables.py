"""CSV tables: the per-slice outputs, the evaluation tables and the training logs."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path


def write_csv(rows: Sequence[Mapping[str, object]], columns: Sequence[str], path: str | Path) -> None:
    """Write ``rows`` (dicts) as CSV with the given column order."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row[c] for c in columns})


def read_csv(path: str | Path) -> list[dict]:
    """Rows of a CSV file as dicts of strings."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
