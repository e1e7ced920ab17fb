"""Tests of stages.crop_faces: the face box or whole-image fallback, crops.csv and the command line.

The images are real GENKI-4K images from the mirror named by EMOTIVELENS_MIRROR (or the
download in params.yaml). The detector is either a scripted stand-in with fixed boxes and
scores or a tiny RetinaNet with random weights, built and saved by the test.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from stages import crop_faces, smiles_download
from stages.detector import build_training_model, read_image_bgr, save_model
from stages.download import resolve_mirror_root
from stages.errors import DataError
from stages.facecrop import square_crop, whole_image_box
from stages.params import PROJECT_ROOT, load_params

CROP_PARAMS = {"margin": 0.2, "score_threshold": 0.5, "size": 64}
TINY_IMAGES = 6


class ScriptedDetector:
    """A stand-in for stages.detector.Predictor that returns one fixed box per call, in call order."""

    def __init__(self, scores: list[float | None], box=(20.0, 30.0, 140.0, 170.0)):
        self.scores = list(scores)
        self.box = np.array([box], dtype=np.float32)

    def __call__(self, image_bgr):
        score = self.scores.pop(0)
        if score is None:
            return np.zeros((0, 4), dtype=np.float32), np.zeros((0,), dtype=np.float32)
        return self.box, np.array([score], dtype=np.float32)


@pytest.fixture(scope="module")
def genki_raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("genki") / "genki4k"
    params = load_params(PROJECT_ROOT / "params.yaml", "default")["smiles_download"]
    smiles_download.fetch_dataset(smiles_download.DATASETS["genki4k"], params, resolve_mirror_root(None, os.environ), out)
    return out


@pytest.fixture
def tiny_raw(tmp_path, genki_raw) -> Path:
    """A raw GENKI-4K folder with the first TINY_IMAGES images and their label rows."""
    raw = tmp_path / "raw" / "genki4k"
    (raw / "files").mkdir(parents=True)
    for number in range(1, TINY_IMAGES + 1):
        shutil.copy(genki_raw / "files" / f"file{number:04d}.jpg", raw / "files")
    rows = (genki_raw / "labels.txt").read_text().splitlines()[:TINY_IMAGES]
    (raw / "labels.txt").write_text("\n".join(rows) + "\n")
    return raw


@pytest.fixture(scope="module")
def random_detector(tmp_path_factory) -> Path:
    """A RetinaNet with random weights; its classification prior keeps every score near 0.01."""
    config = {"backbone": "mobilenet224_0.25", "image_min_side": 96, "image_max_side": 160, "feature_size": 16}
    model_dir = tmp_path_factory.mktemp("detector") / "model"
    save_model(build_training_model(config, pretrained=False), config, model_dir)
    return model_dir


def read_rows(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# --- face box or fallback ------------------------------------------------------------------


def test_score_below_threshold_uses_whole_image():
    image = np.zeros((192, 180, 3), dtype=np.uint8)

    face = crop_faces.locate_face(ScriptedDetector([0.3]), image, score_threshold=0.5)

    assert not face.found
    assert face.score == pytest.approx(0.3)
    assert face.box == whole_image_box(image)


def test_score_at_threshold_uses_box():
    image = np.zeros((192, 180, 3), dtype=np.uint8)

    face = crop_faces.locate_face(ScriptedDetector([0.5]), image, score_threshold=0.5)

    assert face.found
    assert face.box == (20.0, 30.0, 140.0, 170.0)


def test_no_detection_scores_zero():
    image = np.zeros((100, 120, 3), dtype=np.uint8)

    face = crop_faces.locate_face(ScriptedDetector([None]), image, score_threshold=0.5)

    assert not face.found
    assert face.score == 0.0
    assert face.box == (10.0, 0.0, 110.0, 100.0)


def test_crop_images_rows_and_crops(tmp_path, tiny_raw):
    labels = crop_faces.read_labels(tiny_raw)
    detector = ScriptedDetector([0.9, 0.2, None, 0.95, 0.6, 0.49])
    staging = tmp_path / "staging"
    staging.mkdir()

    rows = crop_faces.crop_images(tiny_raw, labels, detector, CROP_PARAMS, staging, staging)
    table = [dict(zip(crop_faces.CROPS_HEADER, map(str, row))) for row in rows]

    assert [row["face_found"] for row in table] == ["1", "0", "0", "1", "1", "0"]
    assert [row["sample"] for row in table] == [f"file{n:04d}" for n in range(1, 7)]
    assert [int(row["label"]) for row in table] == [label.smile for label in labels]
    for row in table:
        image = read_image_bgr(staging / row["source"])
        box = (20.0, 30.0, 140.0, 170.0) if row["face_found"] == "1" else whole_image_box(image)
        expected = square_crop(image, box, CROP_PARAMS["margin"], CROP_PARAMS["size"])
        assert [float(row[key]) for key in ("x1", "y1", "x2", "y2")] == pytest.approx(box, abs=0.01)
        assert (int(row["image_width"]), int(row["image_height"])) == (image.shape[1], image.shape[0])
        assert np.array_equal(cv2.imread(str(staging / row["path"])), expected)


def test_describe_scores_counts_fallbacks():
    rows = [[0] * len(crop_faces.CROPS_HEADER) for _ in range(4)]
    found = crop_faces.CROPS_HEADER.index("face_found")
    score = crop_faces.CROPS_HEADER.index("face_score")
    for row, (is_found, value) in zip(rows, [(1, 0.9), (0, 0.1), (1, 0.8), (1, 0.99)]):
        row[found], row[score] = is_found, value

    assert crop_faces.describe_scores(rows).startswith("faces found in 3 of 4 images (75.0%)")


# --- command line ------------------------------------------------------------------------


def test_main_with_random_detector_falls_back(tmp_path, tiny_raw, random_detector, caplog):
    out = tmp_path / "smiles" / "genki4k-crops"
    caplog.set_level(logging.INFO)

    status = crop_faces.main(
        ["--params", str(PROJECT_ROOT / "params.yaml"), "--profile", "default", "--raw", str(tiny_raw),
         "--detector", str(random_detector), "--out", str(out)]
    )
    rows = read_rows(out / "crops.csv")

    assert status == 0
    assert list(rows[0]) == crop_faces.CROPS_HEADER
    assert len(rows) == TINY_IMAGES
    assert all(row["face_found"] == "0" for row in rows)
    assert all(float(row["face_score"]) < 0.5 for row in rows)
    assert f"faces found in 0 of {TINY_IMAGES} images" in caplog.text
    assert "cropping the whole image" in caplog.text
    for row in rows:
        assert (out / row["path"]).is_file()
        assert (out / row["source"]).resolve() == (tiny_raw / "files" / f"{row['sample']}.jpg").resolve()
        assert cv2.imread(str(out / row["path"])).shape == (128, 128, 3)


def test_main_reports_bad_label(tmp_path, tiny_raw, capsys):
    rows = (tiny_raw / "labels.txt").read_text().splitlines()
    rows[2] = "smile 0 0 0"
    (tiny_raw / "labels.txt").write_text("\n".join(rows) + "\n")

    status = crop_faces.main(
        ["--params", str(PROJECT_ROOT / "params.yaml"), "--raw", str(tiny_raw),
         "--detector", str(tmp_path / "no-model"), "--out", str(tmp_path / "out")]
    )

    assert status == 1
    assert "labels.txt line 3: smile label is 'smile', expected 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_read_labels_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"labels\.txt: file not found; run stage smiles_download"):
        crop_faces.read_labels(tmp_path)


def test_read_labels_empty_file(tmp_path):
    (tmp_path / "labels.txt").write_text("\n\n")

    with pytest.raises(DataError, match=r"labels\.txt: no label rows"):
        crop_faces.read_labels(tmp_path)


def test_main_empty_labels_keeps_old_output(tmp_path, capsys):
    (tmp_path / "raw" / "files").mkdir(parents=True)
    (tmp_path / "raw" / "labels.txt").write_text("")
    out = tmp_path / "out"
    out.mkdir()
    (out / "crops.csv").write_text("old\n")

    status = crop_faces.main(
        ["--params", str(PROJECT_ROOT / "params.yaml"), "--raw", str(tmp_path / "raw"),
         "--detector", str(tmp_path / "no-model"), "--out", str(out)]
    )

    assert status == 1
    assert "labels.txt: no label rows" in capsys.readouterr().err
    assert (out / "crops.csv").read_text() == "old\n"


def test_main_reports_corrupt_detector_weights(tmp_path, tiny_raw, random_detector, capsys):
    detector = tmp_path / "detector"
    detector.mkdir()
    (detector / "model.json").write_bytes((random_detector / "model.json").read_bytes())
    (detector / "weights.h5").write_bytes((random_detector / "weights.h5").read_bytes()[:1000])

    status = crop_faces.main(
        ["--params", str(PROJECT_ROOT / "params.yaml"), "--raw", str(tiny_raw),
         "--detector", str(detector), "--out", str(tmp_path / "out")]
    )

    assert status == 1
    assert f"{detector / 'weights.h5'}: cannot load the detector weights" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
