"""Loss curves of a training run: CSV rows appended as training goes, trimmed on resume."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from stages.atomic import write_text_atomic
from stages.errors import DataError

log = logging.getLogger(__name__)


def append_row(path: Path, columns: tuple[str, ...], row: tuple) -> None:
    """Append ``row`` to the CSV at ``path``, writing the ``columns`` header first if it is new."""
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(columns)
        writer.writerow([f"{value:.6g}" if isinstance(value, float) else value for value in row])


def _is_cut_header(rows: list[list[str]], columns: tuple[str, ...]) -> bool:
    # A process killed while writing the header leaves a prefix of it, and nothing after it.
    written = ",".join(rows[0])
    return len(rows) == 1 and ",".join(columns).startswith(written)


def _row_epoch(row: list[str], columns: tuple[str, ...]) -> int | None:
    """Return the epoch of a data row, or None when the row has the wrong field count or epoch."""
    if len(row) != len(columns):
        return None
    try:
        return int(row[0])
    except ValueError:
        return None


def truncate_curves(path: Path, columns: tuple[str, ...], last_epoch: int) -> None:
    """Drop logged rows after ``last_epoch``: they belong to an epoch that was interrupted.

    The first column of every row after the header is the 1-based epoch number. A process
    killed while it appended a row may leave an empty file, a cut header or a cut last row.
    An empty file or a file with only a cut header is removed, so the next ``append_row``
    writes a fresh header. A cut last row is dropped with a warning. The file is rewritten
    through a temporary file and a rename, so a kill during this call leaves the old file.

    Raises DataError naming the file and line when the header is not ``columns`` or when a
    row before the last one is malformed, because those are not the traces of a kill.
    """
    if not path.exists():
        return
    with path.open(newline="", encoding="utf-8") as handle:
        numbered = [(line, row) for line, row in enumerate(csv.reader(handle), start=1) if row]
    rows = [row for _, row in numbered]
    if not rows or _is_cut_header(rows, columns):
        path.unlink()
        return
    if tuple(rows[0]) != columns:
        raise DataError(f"{path} line {numbered[0][0]}: header is {','.join(rows[0])!r}, "
                        f"expected {','.join(columns)!r}; move the file away to restart this run")

    kept_rows = [rows[0]]
    for index, (line, row) in enumerate(numbered[1:], start=1):
        epoch = _row_epoch(row, columns)
        if epoch is None and index == len(numbered) - 1:
            log.warning("%s line %d: dropped the last row %r, cut short when training stopped", path, line, row)
        elif epoch is None:
            raise DataError(f"{path} line {line}: expected {len(columns)} fields starting with an integer "
                            f"epoch, found {row!r}; move the file away to restart this run")
        elif epoch <= last_epoch:
            kept_rows.append(row)

    buffer = io.StringIO()
    csv.writer(buffer).writerows(kept_rows)
    write_text_atomic(path, buffer.getvalue())
