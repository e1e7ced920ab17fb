"""Write stage outputs atomically, so an interrupted stage never leaves a half-written output.

Each output is first written to a temporary name in its destination folder, because a rename
is atomic only within one file system, and then renamed into place.
"""

from __future__ import annotations

import os
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


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` through a temporary file and ``os.replace``.

    The parent folder is created when missing. The file gets the usual permissions for the
    process umask, not the 0600 of ``tempfile.mkstemp``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
        shutil.rmtree(aside)
    else:
        aside.unlink()


@contextmanager
def atomic_directory(target: Path | str) -> Iterator[Path]:
    """Yield an empty staging folder next to ``target``; on success move it to ``target``.

    If the ``with`` block raises, the staging folder is removed and ``target`` is left as it
    was. Otherwise the staging folder replaces ``target`` through ``replace_path``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        os.chmod(staging, 0o777 & ~_current_umask())
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_path(staging, target)
