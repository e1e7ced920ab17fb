"""Tests for stages.classifier_figures on a small synthetic predictions table and crops written in tmp_path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stages import classifier_figures
from stages.evaluate_classifier import DATASETS, PREDICTION_COLUMNS
from stages.params import PROJECT_ROOT

SAMPLES_PER_DATASET = 24
FOLDS = 3


def write_inputs(root: Path, one_class: bool = False) -> list[str]:
    """Write crops, predictions.csv, classifier.json and training curves; return the stage arguments."""
    rng = np.random.default_rng(1)
    rows = []
    for name in DATASETS:
        crops = root / "splits" / name / "crops"
        crops.mkdir(parents=True)
        for index in range(SAMPLES_PER_DATASET):
            label = 1 if one_class else index % 2
            probability = float(np.clip(0.8 * label + 0.1 + rng.normal(0, 0.25), 0, 1))
            shape = (128, 128, 3) if name == "genki4k" else (64, 64)
            path = f"crops/{index:03d}.png"
            cv2.imwrite(str(crops.parent / path), rng.integers(0, 255, shape, dtype=np.uint8))
            haar_score = int(rng.integers(0, 40)) + 20 * label
            rows.append({"dataset": name, "sample": f"{name}-{index}", "path": path, "fold": index % FOLDS,
                         "label": label, "probability": probability, "predicted": int(probability >= 0.5),
                         "haar_score": haar_score, "haar_predicted": int(haar_score > 30)})
        training = root / "training" / name
        training.mkdir(parents=True)
        for fold in range(FOLDS):
            epochs = np.arange(1, 5)
            pd.DataFrame({"epoch": epochs, "loss": 0.7 / epochs, "accuracy": 1 - 0.4 / epochs,
                          "learning_rate": 0.001, "seconds": 2.0}).to_csv(training / f"fold{fold}-epochs.csv",
                                                                          index=False)
    pd.DataFrame(rows, columns=PREDICTION_COLUMNS).to_csv(root / "predictions.csv", index=False)
    report = {name: {"heldout": {"roc_auc": 0.9}, "haar": {"heldout": {"roc_auc": None if one_class else 0.7}}}
              for name in DATASETS}
    (root / "classifier.json").write_text(json.dumps(report), encoding="utf-8")
    return ["--params", str(PROJECT_ROOT / "params.yaml"), "--profile", "default",
            "--metrics", str(root / "classifier.json"), "--predictions", str(root / "predictions.csv"),
            "--training", str(root / "training"), "--splits", str(root / "splits"), "--out", str(root / "figures")]


EXPECTED_FIGURES = {"roc_curves.png", "confusion_matrices.png", "classifier_training.png",
                    "examples_genki4k.png", "examples_smilesmiled.png"}


def test_main_writes_every_figure(tmp_path: Path) -> None:
    assert classifier_figures.main(write_inputs(tmp_path)) == 0

    written = {path.name for path in (tmp_path / "figures").iterdir()}
    assert written == EXPECTED_FIGURES
    for name in written:
        with Image.open(tmp_path / "figures" / name) as image:
            assert image.width > 500
            assert image.height > 300


def test_main_handles_one_class(tmp_path: Path) -> None:
    assert classifier_figures.main(write_inputs(tmp_path, one_class=True)) == 0

    assert {path.name for path in (tmp_path / "figures").iterdir()} == EXPECTED_FIGURES


def test_main_keeps_old_figures_on_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = write_inputs(tmp_path)
    assert classifier_figures.main(argv) == 0
    for path in (tmp_path / "training/smilesmiled").iterdir():
        path.unlink()

    assert classifier_figures.main(argv) == 1

    assert "no training curves found" in capsys.readouterr().err
    assert {path.name for path in (tmp_path / "figures").iterdir()} == EXPECTED_FIGURES


def test_select_examples_ranks_by_confidence() -> None:
    rows = pd.DataFrame({"sample": list("abcde"), "label": [1, 0, 1, 0, 1],
                         "probability": [0.95, 0.02, 0.3, 0.9, 0.6], "predicted": [1, 0, 0, 1, 1]})

    correct, wrong = classifier_figures.select_examples(rows, 2)

    assert correct["sample"].tolist() == ["b", "a"]
    assert wrong["sample"].tolist() == ["d", "c"]


def test_operating_point() -> None:
    rows = pd.DataFrame({"label": [1, 1, 0, 0], "decision": [1, 0, 1, 0]})

    assert classifier_figures.operating_point(rows, "decision") == (0.5, 0.5)
    assert classifier_figures.operating_point(rows[rows["label"] == 1], "decision") is None


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("label", 2, r"line 2: label is '2', expected 0 or 1"),
        ("probability", float("nan"), r"line 2: probability is empty, expected a probability from 0 to 1"),
        ("probability", "high", r"line 2: probability is 'high', expected a probability"),
        ("predicted", None, r"line 2: predicted is empty, expected 0 or 1"),
        ("fold", "x", r"line 2: fold is 'x', expected a whole number >= 0"),
    ],
)
def test_main_rejects_bad_prediction_values(tmp_path: Path, capsys: pytest.CaptureFixture, column, value,
                                            message) -> None:
    argv = write_inputs(tmp_path)
    table = pd.read_csv(tmp_path / "predictions.csv")
    table[column] = table[column].astype(object)
    table.loc[0, column] = value
    table.to_csv(tmp_path / "predictions.csv", index=False)

    assert classifier_figures.main(argv) == 1

    assert re.search(r"predictions\.csv: " + message, capsys.readouterr().err)
    assert not (tmp_path / "figures").exists()
