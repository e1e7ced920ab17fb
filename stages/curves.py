"""Loss curves of a training run: CSV rows appended as training goes, trimmed on resume."""

from __future__ import annotations

import csv
from pathlib import Path


def append_row(path: Path, columns: tuple[str, ...], row: tuple) -> None:
    """Append ``row`` to the CSV at ``path``, writing the ``columns`` header first if it is new."""
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(columns)
        writer.writerow([f"{value:.6g}" if isinstance(value, float) else value for value in row])


def truncate_curves(path: Path, last_epoch: int) -> None:
    """Drop logged rows after ``last_epoch``: they belong to an epoch that was interrupted.

    The first column of every row after the header is the 1-based epoch number.
    """
    if not path.exists():
        return
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    kept = [rows[0]] + [row for row in rows[1:] if int(row[0]) <= last_epoch]
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(kept)
