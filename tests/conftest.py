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
