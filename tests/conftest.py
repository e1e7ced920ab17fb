"""Fixtures shared by the test modules."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from PIL import Image

from stages.download import (MIRROR_ENV, download_file, extract_archive, fetch_and_extract, locate_mirror_archive,
                             resolve_mirror_root, verify_checksum)
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


# Detector and classifier small enough to build, load and run in a few seconds on a CPU.
TINY_DETECTOR = {"backbone": "mobilenet224_0.25", "image_min_side": 64, "image_max_side": 96, "feature_size": 16}
TINY_CLASSIFIER = {"backbone": "mobilenet_0.25", "input_size": 32}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Return (detector folder, classifier folder) of random-weight models saved like the pipeline's."""
    from stages import classifier, detector

    root = tmp_path_factory.mktemp("models")
    detector.save_model(detector.build_training_model(TINY_DETECTOR, pretrained=False), TINY_DETECTOR,
                        root / "detector")
    classifier.save_classifier(classifier.build_classifier(TINY_CLASSIFIER, None), TINY_CLASSIFIER,
                               root / "classifier")
    return root / "detector", root / "classifier"


@pytest.fixture(scope="module")
def loaded_predictors() -> dict:
    """Predictors loaded in this module, by load_predictor arguments."""
    return {}


@pytest.fixture
def reuse_loaded_predictors(monkeypatch: pytest.MonkeyPatch, loaded_predictors: dict) -> None:
    """Load each model pair once per module: the first command loads it for real, later ones reuse it."""
    from stages import predict

    real_load = predict.load_predictor

    def load_once(*args, **kwargs):
        key = repr((args, sorted(kwargs.items())))
        if key not in loaded_predictors:
            loaded_predictors[key] = real_load(*args, **kwargs)
        return loaded_predictors[key]

    monkeypatch.setattr(predict, "load_predictor", load_once)


# Width and height of the synthetic training pictures.
TRAINING_IMAGE_SIZE = (128, 96)


def _write_training_fold(root: Path, images: int = 4) -> Path:
    """Write ``images`` dark pictures with one bright box each, as split folder fold0."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    fold_dir = root / "splits" / "fold0"
    fold_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for index in range(images):
        pixels = rng.integers(0, 60, size=(TRAINING_IMAGE_SIZE[1], TRAINING_IMAGE_SIZE[0], 3), dtype=np.uint8)
        x1, y1 = 20 + 5 * index, 15 + 3 * index
        x2, y2 = x1 + 50, y1 + 60
        pixels[y1:y2, x1:x2] = 220
        name = f"image_{index:04d}.jpg"
        Image.fromarray(pixels).save(image_dir / name)
        rows.append([f"../../images/{name}", x1, y1, x2, y2, "face"])
    with (fold_dir / "train.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    (root / "classes.csv").write_text("face,0\n")
    return root / "splits"


@pytest.fixture
def write_training_fold() -> Callable[..., Path]:
    """Provide a function that writes a one-fold split of dark pictures with one bright box each."""
    return _write_training_fold


# The official archive of the 20 fold files. The data mirror has the same files in FDDB-folds.tar.
FDDB_FOLDS_URL = "http://vis-www.cs.umass.edu/fddb/FDDB-folds.tgz"
# sha256 of each fold file, so that the mirror's copy and the official archive are checked alike.
FDDB_FOLD_SHA256 = {
    "FDDB-fold-01-ellipseList.txt": "004a3b7bbdc74f016aa1bd9986f92404a9f28a4757622b1a24ec5971311deec1",
    "FDDB-fold-01.txt": "755e046643b1f967d8ff31c2318c1ef52dcce129e001f74937623dbd5721fd88",
    "FDDB-fold-02-ellipseList.txt": "2232f8fd1f65d4c7a2a60981281eb17b28ddca3d4aebe79ae2d66b0624ee85f4",
    "FDDB-fold-02.txt": "86d70c1b8820a4e54233577ea83b1082de20809cc670c907f0759e57e69a9ab1",
    "FDDB-fold-03-ellipseList.txt": "06172e3c7b69fb9df34c16f1f1056072d8c1226fee63ccd22879ba01d870646c",
    "FDDB-fold-03.txt": "13c542d252023e21cab708b768668ea9509852e36bece758c60f76ef51a4079e",
    "FDDB-fold-04-ellipseList.txt": "b2f90f7e766cf08882c73f319140cf1b5422c7df210a1ab837b5c21d7c65f155",
    "FDDB-fold-04.txt": "48e2345f5a42ebb0cd66dee0cd1f6098305a98bb52ad998f2d3688889873da5a",
    "FDDB-fold-05-ellipseList.txt": "e88ffa5bde969b66fd83849cbd810bc0203d3cbac35bb3333476ebbff0e90312",
    "FDDB-fold-05.txt": "337b616c4036d0586530f5e427f539e460b241a785bc445ca6b09a769cb451df",
    "FDDB-fold-06-ellipseList.txt": "b4f95ee702d521a23aec283bddfe05a9379cc1353652e872c5c7b551ad14e8cf",
    "FDDB-fold-06.txt": "aeec1138186356e91f47848832416f8da57914a6337022a3f0561c78c4b15a2f",
    "FDDB-fold-07-ellipseList.txt": "5d611ce67c320a776ee64d3be4f56d5e41b0408546d8eab83fdde84a09e368eb",
    "FDDB-fold-07.txt": "12e91a9f4e910691465cd6c0b007c8fe36b1c36cc4fcf23622614d33e17eeecd",
    "FDDB-fold-08-ellipseList.txt": "5c79e5656973a4d6cd4a028b56435438a9b298814ed37c8207c0ebe8b3d12ccd",
    "FDDB-fold-08.txt": "6da3f688b600447005740f5d20bf94465fc288cbeee62379a252290c8b169a9f",
    "FDDB-fold-09-ellipseList.txt": "f04b6da77c924ebed06621550ed2f4b5c7a486035c0e5ba795f571dc39c95f4e",
    "FDDB-fold-09.txt": "8c3b328de4b51a953f55cf29ee65648643e0c3c0965ee55a19aa7fbfee58aa30",
    "FDDB-fold-10-ellipseList.txt": "9f63bf350f049100edec9f7ec3b29d00a271aa476f3bf0e53a851a7daab2555f",
    "FDDB-fold-10.txt": "936b1178949f26d8b05e18582c82e44fc1c94e040ac5c52fe81eb1492e2beaff",
}


def _fetch_fddb_folds(mirror: str | None, target: Path, url: str = FDDB_FOLDS_URL) -> Path:
    """Extract the FDDB fold files into ``target`` and return their folder, each file checked.

    The archive comes from ``<mirror>/fddb-folds/FDDB-folds.tar`` (checked against the mirror's
    SHA256SUMS) when a mirror is set, otherwise it is downloaded from ``url``.
    """
    if mirror:
        archive, expected, checksums = locate_mirror_archive(Path(mirror), "fddb-folds", "FDDB-folds.tar")
        verify_checksum(archive, "sha256", expected, str(checksums))
    else:
        archive = target / Path(url).name
        download_file(url, archive, retries=3, timeout_s=60)
    extract_archive(archive, target)
    folds_dir = target / "FDDB-folds"
    for name, expected in FDDB_FOLD_SHA256.items():
        verify_checksum(folds_dir / name, "sha256", expected, "the FDDB fold list of tests/conftest.py")
    return folds_dir


@pytest.fixture(scope="session")
def fddb_folds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return the folder of the real FDDB fold files, from the mirror or the official archive."""
    return _fetch_fddb_folds(os.environ.get(MIRROR_ENV), tmp_path_factory.mktemp("fddb"))


@pytest.fixture
def fetch_fddb_folds() -> Callable[..., Path]:
    """Return the function behind ``fddb_folds``: (mirror or None, target folder[, url]) -> folder."""
    return _fetch_fddb_folds


# What a copy of the project needs to run the pipeline: code, rules, parameters and DVC files.
PROJECT_ENTRIES = ("stages", "workflow", "params.yaml", "dvc.yaml", ".dvcignore")


def _copy_project(destination: Path, edit_params: Callable[[dict], None]) -> Path:
    """Copy the project's pipeline to ``destination``, a new folder, as a git and DVC project.

    ``edit_params`` changes the params.yaml mapping in place before the copy's params.yaml is written.
    """
    destination.mkdir()
    for entry in PROJECT_ENTRIES:
        source = PROJECT_ROOT / entry
        if source.is_dir():
            shutil.copytree(source, destination / entry, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, destination / entry)
    params = yaml.safe_load((destination / "params.yaml").read_text())
    edit_params(params)
    (destination / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                    [sys.executable, "-m", "dvc", "config", "core.analytics", "false"]):
        subprocess.run(command, cwd=destination, check=True, capture_output=True, timeout=120)
    return destination


@pytest.fixture(scope="session")
def copy_project() -> Callable[[Path, Callable[[dict], None]], Path]:
    """Return the function that copies the project's pipeline into a new git and DVC project."""
    return _copy_project
