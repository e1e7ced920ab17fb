"""Loss-curve CSVs: appending rows and trimming them after a killed training run."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest

from stages.curves import append_row, truncate_curves
from stages.errors import DataError

COLUMNS = ("epoch", "step", "loss")
HEADER_LINE = "epoch,step,loss\r\n"


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def write_curve(path: Path, rows: list[tuple]) -> None:
    for row in rows:
        append_row(path, COLUMNS, row)


def test_append_row_writes_header_once(tmp_path):
    path = tmp_path / "steps.csv"
    write_curve(path, [(1, 1, 0.5), (1, 2, 0.25)])
    assert read_rows(path) == [list(COLUMNS), ["1", "1", "0.5"], ["1", "2", "0.25"]]


def test_truncate_keeps_finished_epochs(tmp_path):
    path = tmp_path / "steps.csv"
    write_curve(path, [(1, 1, 0.5), (1, 2, 0.4), (2, 1, 0.3)])
    truncate_curves(path, COLUMNS, last_epoch=1)
    assert read_rows(path) == [list(COLUMNS), ["1", "1", "0.5"], ["1", "2", "0.4"]]


def test_truncate_to_epoch_zero_keeps_header(tmp_path):
    path = tmp_path / "steps.csv"
    write_curve(path, [(1, 1, 0.5)])
    truncate_curves(path, COLUMNS, last_epoch=0)
    assert read_rows(path) == [list(COLUMNS)]


def test_truncate_missing_file_is_no_op(tmp_path):
    path = tmp_path / "steps.csv"
    truncate_curves(path, COLUMNS, last_epoch=3)
    assert not path.exists()


@pytest.mark.parametrize("content", ["", "\r\n", "\r\n\r\n"], ids=["empty", "one-blank-line", "blank-lines"])
def test_truncate_removes_file_without_rows(tmp_path, content):
    path = tmp_path / "steps.csv"
    path.write_text(content, encoding="utf-8", newline="")
    truncate_curves(path, COLUMNS, last_epoch=0)
    assert not path.exists()


def test_append_after_empty_file_writes_header(tmp_path):
    path = tmp_path / "steps.csv"
    path.write_text("", encoding="utf-8")
    truncate_curves(path, COLUMNS, last_epoch=0)
    append_row(path, COLUMNS, (1, 1, 0.5))
    assert read_rows(path) == [list(COLUMNS), ["1", "1", "0.5"]]


def test_truncate_removes_file_with_cut_header(tmp_path):
    path = tmp_path / "steps.csv"
    path.write_text("epoch,st", encoding="utf-8", newline="")
    truncate_curves(path, COLUMNS, last_epoch=0)
    assert not path.exists()


def test_truncate_drops_cut_last_row(tmp_path, caplog):
    path = tmp_path / "steps.csv"
    # Epoch 12 cut after its first digit would otherwise read as a finished epoch 1.
    path.write_text(HEADER_LINE + "1,1,0.5\r\n1", encoding="utf-8", newline="")
    with caplog.at_level(logging.WARNING):
        truncate_curves(path, COLUMNS, last_epoch=11)
    assert read_rows(path) == [list(COLUMNS), ["1", "1", "0.5"]]
    assert "line 3: dropped the last row ['1']" in caplog.text


def test_truncate_skips_blank_lines(tmp_path):
    path = tmp_path / "steps.csv"
    path.write_text(HEADER_LINE + "\r\n1,1,0.5\r\n\r\n2,1,0.4\r\n", encoding="utf-8", newline="")
    truncate_curves(path, COLUMNS, last_epoch=1)
    assert read_rows(path) == [list(COLUMNS), ["1", "1", "0.5"]]


def test_truncate_rejects_malformed_middle_row(tmp_path):
    path = tmp_path / "steps.csv"
    path.write_text(HEADER_LINE + "1,1\r\n1,2,0.5\r\n", encoding="utf-8", newline="")
    with pytest.raises(DataError, match=r"steps\.csv line 2: expected 3 fields .* found \['1', '1'\]"):
        truncate_curves(path, COLUMNS, last_epoch=1)


def test_truncate_rejects_other_header(tmp_path):
    path = tmp_path / "steps.csv"
    path.write_text("epoch,loss\r\n1,0.5\r\n", encoding="utf-8", newline="")
    with pytest.raises(DataError, match=r"steps\.csv line 1: header is 'epoch,loss', expected 'epoch,step,loss'"):
        truncate_curves(path, COLUMNS, last_epoch=1)


def test_truncate_rewrites_through_rename(tmp_path, monkeypatch):
    path = tmp_path / "steps.csv"
    write_curve(path, [(1, 1, 0.5), (2, 1, 0.4)])
    before = path.read_bytes()

    def fail_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr("stages.atomic.os.replace", fail_replace)
    with pytest.raises(OSError, match="disk full"):
        truncate_curves(path, COLUMNS, last_epoch=1)
    assert path.read_bytes() == before
    assert sorted(item.name for item in tmp_path.iterdir()) == ["steps.csv"]
