"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stages.download import fetch_and_extract, resolve_mirror_root
from stages.params import PROJECT_ROOT, load_params


@pytest.fixture(scope="session")
def caltech_raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a folder with the real Caltech Faces 1999 archive, extracted once per session.

    The archive comes from the mirror named by EMOTIVELENS_MIRROR when it is set, and
    otherwise from download.url in params.yaml, through the download stage's own code.
    """
    out = tmp_path_factory.mktemp("caltech") / "caltech-faces-1999"
    download_params = load_params(PROJECT_ROOT / "params.yaml", "default")["download"]
    fetch_and_extract(download_params, resolve_mirror_root(None, os.environ), out)
    return out
