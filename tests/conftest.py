"""Fixtures shared by the test modules."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

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
