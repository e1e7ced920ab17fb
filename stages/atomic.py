"""Write stage outputs atomically, so an interrupted stage never leaves a half-written output.

Each output is first written to a temporary name in its destination folder, because a rename
is atomic only within one file system, and then renamed into place.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _current_umask() -> int:
    # os.umask can only be read by setting it, so set it and put it back at once.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_leftovers(target: Path) -> None:
    """Clear what a writer of ``target`` left behind when it was killed part-way.

    Temporary files and staging folders (``.NAME.XXXXXXXX.tmp``) are removed. A kill between
    the two renames of ``replace_path`` leaves the old output renamed aside (``.NAME.old-XXXXXXXX``)
    and no ``target``: that output is moved back, so the last good one is never lost.
    Call it only while no other process writes ``target``; DVC and Snakemake lock each output.
    """
    if not target.parent.is_dir():
        return
    staging = re.compile(re.escape(f".{target.name}.") + r"[a-z0-9_]{8}\.tmp")
    aside = re.compile(re.escape(f".{target.name}.old-") + r"[0-9a-f]{8}")
    for entry in sorted(target.parent.iterdir()):
        if staging.fullmatch(entry.name) or (aside.fullmatch(entry.name) and os.path.lexists(target)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        elif aside.fullmatch(entry.name):
            os.rename(entry, target)


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` through a temporary file and ``os.replace``.

    The parent folder is created when missing, and a killed writer's leftovers are cleared first
    (``remove_leftovers``). The file gets the usual permissions for the process umask, not the
    0600 of ``tempfile.mkstemp``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def replace_path(new: Path, target: Path) -> None:
    """Move ``new`` (a file or folder) to ``target``, replacing whatever ``target`` is now.

    An existing target is first renamed aside and removed only after ``new`` is in place, so
    readers see either the old or the new complete output. Between the two renames
    ``target`` does not exist. If the second rename fails, the old target is moved back.
    """
    if not os.path.lexists(target):
        os.rename(new, target)
        return
    aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(target, aside)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(aside, target)
        raise
    if aside.is_dir() and not aside.is_symlink():
        # Rename it to a staging name first, so a kill during rmtree leaves a part-deleted folder that
        # remove_leftovers deletes instead of moving it back as the last good output.
        doomed = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        os.rename(aside, doomed)
        shutil.rmtree(doomed)
    else:
        aside.unlink()


@contextmanager
def atomic_directory(target: Path | str) -> Iterator[Path]:
    """Yield an empty staging folder next to ``target``; on success move it to ``target``.

    If the ``with`` block raises, the staging folder is removed and ``target`` is left as it
    was. Otherwise the staging folder replaces ``target`` through ``replace_path``. A killed
    writer's leftovers are cleared first (``remove_leftovers``).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        os.chmod(staging, 0o777 & ~_current_umask())
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_path(staging, target)
