"""Atomic writes: a failed or killed writer never leaves a partial output in place of a good one."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from stages.atomic import atomic_directory, remove_leftovers, replace_path, write_text_atomic


def test_write_text_atomic_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_text_atomic(target, "old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["metrics.json"]


def test_failed_folder_write_keeps_the_old_folder(tmp_path):
    target = tmp_path / "models"
    with atomic_directory(target) as staging:
        (staging / "fold1.h5").write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as staging:
            (staging / "fold1.h5").write_text("half")
            raise RuntimeError("training failed")
    assert (target / "fold1.h5").read_text() == "good"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["models"]


def test_killed_writer_staging_folder_removed(tmp_path):
    # A SIGKILL inside the ``with`` block leaves the staging folder behind.
    target = tmp_path / "models"
    killed = tmp_path / ".models.k1ll3d_x.tmp"
    killed.mkdir()
    (killed / "fold1.h5").write_text("half")
    killed_file = tmp_path / ".models.abcd1234.tmp"
    killed_file.write_text("half")
    with atomic_directory(target) as staging:
        (staging / "fold1.h5").write_text("good")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["models"]


def test_killed_writer_aside_output_restored(tmp_path):
    # A kill between the two renames of replace_path: the old output is aside, the target gone.
    target = tmp_path / "report.pdf"
    aside = tmp_path / ".report.pdf.old-0123abcd"
    aside.write_text("last good report")
    remove_leftovers(target)
    assert target.read_text() == "last good report"
    assert not aside.exists()


def test_remove_leftovers_drops_aside_copy(tmp_path):
    target = tmp_path / "report.pdf"
    target.write_text("new report")
    (tmp_path / ".report.pdf.old-0123abcd").write_text("last good report")
    remove_leftovers(target)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.pdf"]


def test_remove_leftovers_skips_other_outputs(tmp_path):
    # "fold1.csv" must not clear the staging file of "fold1.csv.bak" or of "fold10.csv".
    others = [tmp_path / ".fold1.csv.bak.abcd1234.tmp", tmp_path / ".fold10.csv.abcd1234.tmp", tmp_path / "notes.tmp"]
    for path in others:
        path.write_text("someone else's")
    write_text_atomic(tmp_path / "fold1.csv", "image\n")
    assert all(path.exists() for path in others)


def test_replace_path_failed_move_restores_target(tmp_path, monkeypatch):
    target = tmp_path / "models"
    target.mkdir()
    (target / "fold1.h5").write_text("good")
    new = tmp_path / "staging"
    new.mkdir()
    real_rename = os.rename
    calls = []

    def rename(source, destination):
        calls.append(source)
        if len(calls) == 2:
            raise OSError("disk full")
        real_rename(source, destination)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="disk full"):
        replace_path(new, target)
    assert (target / "fold1.h5").read_text() == "good"


def test_replace_path_deletes_under_staging_name(tmp_path, monkeypatch):
    # A kill during the removal of the old folder must not leave it under the name that
    # remove_leftovers moves back.
    target = tmp_path / "splits"
    with atomic_directory(target) as staging:
        (staging / "fold0.csv").write_text("old")
    removed = []
    monkeypatch.setattr("stages.atomic.shutil.rmtree", lambda path, **_: removed.append(Path(path).name))
    with atomic_directory(target) as staging:
        (staging / "fold0.csv").write_text("new")
    assert len(removed) == 1
    assert re.fullmatch(r"\.splits\.[0-9a-f]{8}\.tmp", removed[0])
