"""Tests for stages.evaluate_classifier and stages.smile_baseline.

Metric cases are small and hand-computed. The Haar baseline and the stage run on real
SMILEsmileD crops from the mirror named by EMOTIVELENS_MIRROR; the end-to-end run uses tiny
untrained classifiers built with stages.classifier.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from stages import evaluate_classifier, smile_baseline
from stages.errors import DataError
from stages.params import PROJECT_ROOT

SMILES_ARCHIVE = Path("smilesmiled") / "SMILEsmileD.tar"
CROPS_PER_CLASS = 8
FOLDS = 2


@pytest.fixture(scope="session")
def smile_crops() -> list[tuple[np.ndarray, int]]:
    """Return (grayscale 64x64 uint8 crop, label) for the first CROPS_PER_CLASS crops of each class."""
    mirror = os.environ.get("EMOTIVELENS_MIRROR", "")
    assert mirror, "set EMOTIVELENS_MIRROR to the data mirror folder"
    folders = {"SMILEs/positives/positives7/": 1, "SMILEs/negatives/negatives7/": 0}
    crops: dict[int, list[np.ndarray]] = {0: [], 1: []}
    with tarfile.open(Path(mirror) / SMILES_ARCHIVE) as archive:
        for member in archive:
            label = next((value for folder, value in folders.items() if member.name.startswith(folder)), None)
            if label is None or not member.name.endswith(".jpg") or len(crops[label]) >= CROPS_PER_CLASS:
                continue
            data = np.frombuffer(archive.extractfile(member).read(), dtype=np.uint8)
            crops[label].append(cv2.imdecode(data, cv2.IMREAD_GRAYSCALE))
            if all(len(images) >= CROPS_PER_CLASS for images in crops.values()):
                break
    return [(image, label) for label in (1, 0) for image in crops[label]]


# --- Metrics -------------------------------------------------------------------------


def test_metrics_hand_computed() -> None:
    labels = [1, 1, 0, 0, 1]
    scores = [0.9, 0.4, 0.3, 0.6, 0.8]
    predicted = [1, 0, 0, 1, 1]  # tp 2, fn 1, fp 1, tn 1

    result = evaluate_classifier.classification_metrics(labels, scores, predicted)

    assert (result["tn"], result["fp"], result["fn"], result["tp"]) == (1, 1, 1, 2)
    assert result["n"] == 5
    assert result["positives"] == 3
    assert result["prevalence"] == pytest.approx(0.6)
    assert result["accuracy"] == pytest.approx(0.6)
    assert result["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # 5 of the 6 (happy, not happy) pairs rank the happy sample higher.
    assert result["roc_auc"] == pytest.approx(5 / 6)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)


def test_metrics_one_class_gives_null_auc() -> None:
    result = evaluate_classifier.classification_metrics([1, 1, 1], [0.2, 0.7, 0.9], [0, 1, 1])

    assert result["roc_auc"] is None
    assert result["balanced_accuracy"] is None
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["precision"] == pytest.approx(1.0)


def test_metrics_without_predicted_positives() -> None:
    result = evaluate_classifier.classification_metrics([1, 0, 0], [0.1, 0.2, 0.3], [0, 0, 0])

    assert result["precision"] is None
    assert result["recall"] == 0.0
    assert result["f1"] == 0.0
    assert result["roc_auc"] == 0.0


def test_metrics_without_positives_at_all() -> None:
    result = evaluate_classifier.classification_metrics([0, 0], [0.1, 0.2], [0, 0])

    assert result["f1"] is None
    assert result["recall"] is None
    assert result["accuracy"] == 1.0


def test_metrics_of_no_samples() -> None:
    result = evaluate_classifier.classification_metrics([], [], [])

    assert result["n"] == 0
    assert result["accuracy"] is None
    assert result["roc_auc"] is None


def test_across_folds_skips_null_values() -> None:
    per_fold = [{name: 0.8 for name in evaluate_classifier.ACROSS_FOLD_METRICS},
                {**{name: 0.6 for name in evaluate_classifier.ACROSS_FOLD_METRICS}, "roc_auc": None}]

    aggregated = evaluate_classifier.across_folds(per_fold, "test")

    assert aggregated["accuracy"]["mean"] == pytest.approx(0.7)
    assert aggregated["accuracy"]["n"] == 2
    assert aggregated["roc_auc"]["mean"] == pytest.approx(0.8)
    assert aggregated["roc_auc"]["n"] == 1


# --- Haar baseline -------------------------------------------------------------------


def test_choose_min_neighbors_maximizes_balanced_accuracy() -> None:
    scores = np.array([0, 1, 5, 6, 2])
    labels = np.array([0, 0, 1, 1, 0])

    assert smile_baseline.choose_min_neighbors(scores, labels) == 2


def test_choose_min_neighbors_one_class_uses_accuracy() -> None:
    assert smile_baseline.choose_min_neighbors(np.array([1, 2]), np.array([1, 1])) == 0
    assert smile_baseline.choose_min_neighbors(np.array([1, 2]), np.array([0, 0])) == 2


def test_choose_min_neighbors_needs_samples() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        smile_baseline.choose_min_neighbors(np.array([]), np.array([]))


def test_haar_scores_real_crops(smile_crops: list[tuple[np.ndarray, int]]) -> None:
    cascade = smile_baseline.load_smile_cascade()
    images = [image for image, _ in smile_crops]

    scores = smile_baseline.smile_scores(cascade, images, scale_factor=1.1)

    assert scores.shape == (len(images),)
    assert scores.dtype == np.int64
    assert (scores >= 0).all()
    assert scores.max() > 0


def test_haar_score_accepts_bgr(smile_crops: list[tuple[np.ndarray, int]]) -> None:
    cascade = smile_baseline.load_smile_cascade()
    gray = smile_crops[0][0]
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)

    assert smile_baseline.smile_score(cascade, bgr, 1.1) == smile_baseline.smile_score(cascade, gray, 1.1)


@pytest.mark.parametrize("min_neighbors", [2, 5, 20])
def test_haar_decision_matches_opencv(smile_crops: list[tuple[np.ndarray, int]], min_neighbors: int) -> None:
    cascade = smile_baseline.load_smile_cascade()
    for image, _label in smile_crops:
        score = smile_baseline.smile_score(cascade, image, 1.1)
        found = cascade.detectMultiScale(smile_baseline.mouth_region(image), scaleFactor=1.1,
                                         minNeighbors=min_neighbors)

        assert smile_baseline.predict_smiles(np.array([score]), min_neighbors)[0] == int(len(found) > 0)


def test_mouth_region_shape() -> None:
    region = smile_baseline.mouth_region(np.zeros((64, 48, 3), dtype=np.uint8))

    assert region.shape == (smile_baseline.FACE_SIDE // 2, smile_baseline.FACE_SIDE)
    assert region.dtype == np.uint8


def test_missing_cascade_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.xml"):
        smile_baseline.load_smile_cascade(tmp_path / "absent.xml")


# --- Stage ---------------------------------------------------------------------------


class MeanBrightnessModel:
    """Stand-in classifier: P(happy) is the mean brightness of the image scaled to [0, 1]."""

    def predict_proba(self, images):
        return np.array([float(np.mean(image)) / 255.0 for image in images], dtype=np.float32)


def write_splits(root: Path, crops: list[tuple[np.ndarray, int]], one_class_fold: bool = False) -> Path:
    """Write splits/<dataset>/samples.csv and crops for both datasets; return the splits folder.

    GENKI-4K crops are BGR 128 px PNGs and SMILEsmileD crops grayscale 64 px JPEGs, as the
    pipeline writes them. With ``one_class_fold``, fold 1 of smilesmiled holds only happy samples.
    """
    splits = root / "splits"
    for name in evaluate_classifier.DATASETS:
        folder = splits / name
        (folder / "crops").mkdir(parents=True)
        rows = []
        for index, (image, label) in enumerate(crops):
            if name == "genki4k":
                path = f"crops/{index:03d}.png"
                cv2.imwrite(str(folder / path), cv2.cvtColor(cv2.resize(image, (128, 128)), cv2.COLOR_GRAY2BGR))
            else:
                path = f"crops/{index:03d}.jpg"
                cv2.imwrite(str(folder / path), image)
            fold = index % FOLDS
            if one_class_fold and name == "smilesmiled":
                fold = 1 if label == 1 and index % 2 else 0
            rows.append({"sample": f"{name}-{index}", "path": path, "label": label, "fold": fold,
                         "digest": f"{index:064x}"})
        pd.DataFrame(rows).to_csv(folder / "samples.csv", index=False)
    return splits


def write_model_folders(models: Path, files=("model.json", "weights.h5")) -> None:
    for name in evaluate_classifier.DATASETS:
        for fold in range(FOLDS):
            folder = models / name / f"fold{fold}"
            folder.mkdir(parents=True)
            for file_name in files:
                (folder / file_name).write_text("{}", encoding="utf-8")


def stage_arguments(root: Path, splits: Path, models: Path) -> list[str]:
    return ["--params", str(PROJECT_ROOT / "params.yaml"), "--profile", "default", "--splits", str(splits),
            "--models", str(models), "--metrics", str(root / "metrics/classifier.json"),
            "--predictions", str(root / "classifier/predictions.csv")]


def test_stage_with_stand_in_model(tmp_path: Path, smile_crops) -> None:
    splits = write_splits(tmp_path, smile_crops)
    models = tmp_path / "models"
    write_model_folders(models)
    loaded = []

    def load(model_dir: Path) -> MeanBrightnessModel:
        loaded.append(model_dir.relative_to(models).as_posix())
        return MeanBrightnessModel()

    assert evaluate_classifier.main(stage_arguments(tmp_path, splits, models), load_model=load) == 0

    assert loaded == ["genki4k/fold0", "genki4k/fold1", "smilesmiled/fold0", "smilesmiled/fold1"]
    report = json.loads((tmp_path / "metrics/classifier.json").read_text(encoding="utf-8"))
    for name in evaluate_classifier.DATASETS:
        block = report[name]
        for metric in ("accuracy", "balanced_accuracy", "roc_auc", "f1"):
            assert isinstance(block["heldout"][metric], float), (name, metric)
            assert isinstance(block["haar"]["heldout"][metric], float), (name, metric)
            assert set(block["folds"][metric]) == {"mean", "sd", "ci95_low", "ci95_high", "n"}
            assert block["folds"][metric]["n"] == FOLDS
        assert block["dataset"] == {"samples": 16, "positives": 8, "negatives": 8, "prevalence": 0.5, "folds": 2}
        assert [entry["fold"] for entry in block["per_fold"]] == [0, 1]
        assert all(isinstance(entry["min_neighbors"], int) for entry in block["haar"]["per_fold"])
        assert block["heldout"]["n"] == 16

    predictions = pd.read_csv(tmp_path / "classifier/predictions.csv")
    assert list(predictions.columns) == evaluate_classifier.PREDICTION_COLUMNS
    assert len(predictions) == 2 * len(smile_crops)
    assert predictions["probability"].between(0, 1).all()
    assert set(predictions["predicted"]) <= {0, 1}
    assert set(predictions["haar_predicted"]) <= {0, 1}


def test_stage_one_class_fold_gives_null_auc(tmp_path: Path, smile_crops, caplog) -> None:
    splits = write_splits(tmp_path, smile_crops, one_class_fold=True)
    models = tmp_path / "models"
    write_model_folders(models)

    assert evaluate_classifier.main(stage_arguments(tmp_path, splits, models),
                                    load_model=lambda _: MeanBrightnessModel()) == 0

    block = json.loads((tmp_path / "metrics/classifier.json").read_text(encoding="utf-8"))["smilesmiled"]
    assert block["per_fold"][1]["roc_auc"] is None
    assert block["per_fold"][1]["positives"] == block["per_fold"][1]["n"]
    assert isinstance(block["per_fold"][0]["roc_auc"], float)
    assert block["folds"]["roc_auc"]["n"] == 1
    assert isinstance(block["heldout"]["roc_auc"], float)
    assert "only one class" in caplog.text


def test_stage_missing_fold_model(tmp_path: Path, smile_crops, capsys) -> None:
    splits = write_splits(tmp_path, smile_crops)
    models = tmp_path / "models"
    write_model_folders(models)
    (models / "smilesmiled/fold1/weights.h5").unlink()

    assert evaluate_classifier.main(stage_arguments(tmp_path, splits, models),
                                    load_model=lambda _: MeanBrightnessModel()) == 1

    error = capsys.readouterr().err
    assert "smilesmiled/fold1/weights.h5" in error
    assert "not found" in error
    assert not (tmp_path / "metrics/classifier.json").exists()


def test_stage_rejects_bad_label(tmp_path: Path, smile_crops, capsys) -> None:
    splits = write_splits(tmp_path, smile_crops)
    models = tmp_path / "models"
    write_model_folders(models)
    table = pd.read_csv(splits / "genki4k/samples.csv")
    table.loc[3, "label"] = 2
    table.to_csv(splits / "genki4k/samples.csv", index=False)

    assert evaluate_classifier.main(stage_arguments(tmp_path, splits, models),
                                    load_model=lambda _: MeanBrightnessModel()) == 1

    assert "samples.csv: line 5: label is '2', expected 0 or 1" in capsys.readouterr().err


def test_stage_rejects_probability_outside_range(tmp_path: Path, smile_crops, capsys) -> None:
    class BrokenModel:
        def predict_proba(self, images):
            return np.full(len(images), 1.5, dtype=np.float32)

    splits = write_splits(tmp_path, smile_crops)
    models = tmp_path / "models"
    write_model_folders(models)

    assert evaluate_classifier.main(stage_arguments(tmp_path, splits, models), load_model=lambda _: BrokenModel()) == 1

    assert "outside [0, 1]" in capsys.readouterr().err


def test_read_samples_rejects_repeated_sample(tmp_path: Path) -> None:
    path = tmp_path / "samples.csv"
    path.write_text("sample,path,label,fold\na,a.png,1,0\nb,b.png,0,1\na,c.png,0,0\n", encoding="utf-8")

    with pytest.raises(DataError, match=r"line 4: sample 'a' is listed more than once"):
        evaluate_classifier.read_samples(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"sample,path,label,fold\na,a.png,1,inf\n", r"line 2: fold is 'inf', expected a whole number from 0"),
        (b"sample,path,label,fold\na,a.png,1,1e30\n", r"line 2: fold is '1e30', expected a whole number from 0"),
        (b"sample,path,label,fold\na,a.png,1,0\n\nb,b.png,2,0\n", r"line 4: label is '2', expected 0 or 1"),
        (b"sample,path,label,fold\n\xe9,a.png,1,0\n", r"samples\.csv: not UTF-8 text"),
    ],
)
def test_read_samples_rejects_bad_values(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "samples.csv"
    path.write_bytes(content)

    with pytest.raises(DataError, match=message):
        evaluate_classifier.read_samples(path)


def test_read_samples_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "samples.csv"
    path.write_text("sample,path,label,fold\na,a.png,1,0\n\nb,b.png,0,1\n", encoding="utf-8")

    table = evaluate_classifier.read_samples(path)

    assert table["sample"].tolist() == ["a", "b"]
    assert table["fold"].tolist() == [0, 1]


def test_stage_with_tiny_real_classifiers(tmp_path: Path, smile_crops) -> None:
    from stages import classifier

    config = {"backbone": "mobilenet_0.25", "input_size": 32}
    model = classifier.build_classifier(config, weights_path=None)
    models = tmp_path / "models"
    for name in evaluate_classifier.DATASETS:
        for fold in range(FOLDS):
            classifier.save_classifier(model, config, models / name / f"fold{fold}")
    splits = write_splits(tmp_path, smile_crops)

    assert evaluate_classifier.main(stage_arguments(tmp_path, splits, models)) == 0

    predictions = pd.read_csv(tmp_path / "classifier/predictions.csv")
    assert len(predictions) == 2 * len(smile_crops)
    assert predictions["probability"].between(0, 1).all()
    report = json.loads((tmp_path / "metrics/classifier.json").read_text(encoding="utf-8"))
    assert report["genki4k"]["heldout"]["n"] == len(smile_crops)
