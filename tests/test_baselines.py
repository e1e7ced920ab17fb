"""Tests for stages.baselines: calibration, detector adapters on a real Caltech image, empty detections and the command line."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from stages import baselines, metrics
from stages.convert import corner_boxes, read_corners
from stages.params import PROJECT_ROOT, load_params

BASELINE_PARAMS = load_params(PROJECT_ROOT / "params.yaml", "default")["baselines"]
# A known affine map [cx', cy', w', h'] = [cx, cy, w, h, 1] @ KNOWN_MAP: the annotation is larger
# than the detection and sits higher by a tenth of the detected height.
KNOWN_MAP = np.array(
    [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.2, 0.0],
        [0.0, -0.1, 0.0, 1.3],
        [2.0, -5.0, 4.0, 6.0],
    ]
)


def random_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    corner = rng.uniform(50, 400, size=(count, 2))
    size = rng.uniform(80, 300, size=(count, 2))
    return np.column_stack([corner, corner + size])


def test_fit_calibration_recovers_known_map():
    rng = np.random.default_rng(0)
    detected = random_boxes(rng, 40)
    annotated = baselines.apply_calibration(detected, KNOWN_MAP)

    matrix = baselines.fit_calibration(detected, annotated)

    np.testing.assert_allclose(matrix, KNOWN_MAP, atol=1e-8)
    np.testing.assert_allclose(baselines.apply_calibration(detected, matrix), annotated, atol=1e-6)


def test_fit_calibration_rejects_too_few_pairs():
    boxes = random_boxes(np.random.default_rng(1), baselines.CALIBRATION_MIN_PAIRS - 1)
    with pytest.raises(ValueError, match="at least 5 box pairs"):
        baselines.fit_calibration(boxes, boxes)


def test_identity_calibration_keeps_boxes():
    boxes = random_boxes(np.random.default_rng(2), 5)
    np.testing.assert_allclose(baselines.apply_calibration(boxes, baselines.identity_calibration()), boxes)


def fold_tables(rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build one fold whose training detections follow KNOWN_MAP and whose held-out ones are shifted by 60 px."""
    rows, detections = [], []
    for index, part in enumerate(["train"] * 30 + ["heldout"] * 10):
        detected = random_boxes(rng, 1)
        if part == "train":
            annotated = baselines.apply_calibration(detected, KNOWN_MAP)[0]
        else:
            annotated = detected[0] + 60.0
        image = f"image_{index:04d}.jpg"
        rows.append({"fold": 0, "part": part, "image": image, **dict(zip(baselines.BOX_COLUMNS, annotated))})
        detections.append({"image": image, **dict(zip(baselines.BOX_COLUMNS, detected[0])), "score": 0.9})
    return pd.DataFrame(rows), pd.DataFrame(detections, columns=baselines.DETECTION_COLUMNS)


def test_fold_calibration_uses_training_images_only():
    annotations, detections = fold_tables(np.random.default_rng(3))

    matrix, pairs = baselines.fold_calibration(annotations, detections, min_score=0.5, min_iou=0.3, description="test")

    assert pairs == 30
    np.testing.assert_allclose(matrix, KNOWN_MAP, atol=1e-8)


def test_calibration_pairs_take_best_scored_overlap():
    annotations = pd.DataFrame([{"image": "a.jpg", "x1": 100.0, "y1": 100.0, "x2": 200.0, "y2": 200.0}])
    detections = pd.DataFrame(
        [
            ["a.jpg", 0.0, 0.0, 10.0, 10.0, 0.99],  # highest score, but on the background
            ["a.jpg", 105.0, 105.0, 205.0, 205.0, 0.7],
            ["a.jpg", 100.0, 100.0, 200.0, 200.0, 0.6],
            ["a.jpg", 100.0, 100.0, 200.0, 200.0, 0.4],  # below min_score
        ],
        columns=baselines.DETECTION_COLUMNS,
    )

    detected, annotated = baselines.calibration_pairs(annotations, detections, min_score=0.5, min_iou=0.3)

    np.testing.assert_allclose(detected, [[105.0, 105.0, 205.0, 205.0]])
    np.testing.assert_allclose(annotated, [[100.0, 100.0, 200.0, 200.0]])


def test_evaluate_detector_without_detections():
    annotations, _ = fold_tables(np.random.default_rng(4))
    empty = pd.DataFrame(columns=baselines.DETECTION_COLUMNS).astype({"score": float})

    blocks, per_image = baselines.evaluate_detector("mtcnn", annotations, empty, [0], BASELINE_PARAMS)

    for kind in ("raw", "calibrated"):
        assert blocks[kind]["heldout"]["mean_iou"] == 0.0
        assert blocks[kind]["heldout"]["ap50"] == 0.0
    assert blocks["calibrated"]["folds"]["fold0"]["calibration_pairs"] == 0
    assert len(per_image) == 10
    assert (per_image["raw_iou"] == 0.0).all()
    assert per_image["score"].isna().all()
    assert baselines.no_detection_share(annotations[annotations["part"] == "heldout"], empty, 0.5) == 1.0


def multi_face_fold() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build one fold: 10 training faces for the calibration, and held-out images with two faces and none.

    The held-out detections match both faces of two.jpg exactly, and the background image bg.jpg
    gets one detection with a higher score, a false positive.
    """
    annotations, detections = fold_tables(np.random.default_rng(6))
    annotations = annotations[annotations["part"] == "train"].head(10)
    detections = detections[detections["image"].isin(annotations["image"])]
    faces = [[100.0, 100.0, 200.0, 220.0], [300.0, 120.0, 380.0, 210.0]]
    heldout = [{"fold": 0, "part": "heldout", "image": "two.jpg", **dict(zip(baselines.BOX_COLUMNS, face))}
               for face in faces]
    heldout.append({"fold": 0, "part": "heldout", "image": "bg.jpg", **dict.fromkeys(baselines.BOX_COLUMNS, np.nan)})
    heldout_detections = [["two.jpg", *faces[0], 0.9], ["two.jpg", *faces[1], 0.8], ["bg.jpg", 0.0, 0.0, 50.0, 50.0, 0.95]]
    return (
        pd.concat([annotations, pd.DataFrame(heldout)], ignore_index=True),
        pd.concat([detections, pd.DataFrame(heldout_detections, columns=baselines.DETECTION_COLUMNS)], ignore_index=True),
    )


def test_scores_each_face_and_background():
    annotations, detections = multi_face_fold()

    blocks, per_image = baselines.evaluate_detector("mtcnn", annotations, detections, [0], BASELINE_PARAMS)

    raw = blocks["raw"]["heldout"]
    assert raw["images"] == 2
    assert raw["faces"] == 2
    assert raw["background_images"] == 1
    assert raw["mean_iou"] == 1.0
    assert raw["recall50"] == 1.0
    # Ranked by score: the false positive on bg.jpg, then the two faces. Precision is 1/2 at
    # recall 0.5 and 2/3 at recall 1, so the VOC envelope gives AP = 0.5 * 2/3 + 0.5 * 2/3.
    assert raw["ap50"] == pytest.approx(2 / 3)
    assert per_image["image"].tolist() == ["two.jpg", "two.jpg"]
    assert per_image["raw_iou"].tolist() == [1.0, 1.0]
    assert per_image["score"].tolist() == pytest.approx([0.9, 0.8])


def test_calibration_pairs_skip_background_rows():
    annotations, detections = multi_face_fold()
    heldout = annotations[annotations["part"] == "heldout"]

    detected, annotated = baselines.calibration_pairs(heldout, detections, min_score=0.5, min_iou=0.3)

    np.testing.assert_allclose(annotated, heldout[baselines.BOX_COLUMNS].to_numpy()[:2])
    np.testing.assert_allclose(detected, annotated)


def test_no_detection_share_ignores_background_images():
    annotations, detections = multi_face_fold()
    heldout = annotations[annotations["part"] == "heldout"]
    assert baselines.no_detection_share(heldout, detections, 0.5) == 0.0
    without_face_detections = detections[detections["image"] != "two.jpg"]
    assert baselines.no_detection_share(heldout, without_face_detections, 0.5) == 1.0


@pytest.fixture(scope="module")
def caltech_image(caltech_raw_dir):
    """Return the first Caltech image as RGB and its annotated face box [x1, y1, x2, y2]."""
    face = corner_boxes(read_corners(caltech_raw_dir / "ImageData.mat"))[0]
    return baselines.read_rgb(caltech_raw_dir / "image_0001.jpg"), face


@pytest.mark.parametrize("name", baselines.DETECTORS)
def test_detector_finds_face_as_pixel_corners(name, caltech_image):
    image, face = caltech_image
    detect = baselines.load_detectors([name], BASELINE_PARAMS)[name]

    boxes, scores = detect(image)

    assert boxes.shape == (len(scores), 4)
    assert len(boxes) >= 1
    assert (boxes[:, 2] > boxes[:, 0]).all()
    assert (boxes[:, 3] > boxes[:, 1]).all()
    assert (boxes >= 0).all()
    assert (boxes[:, [0, 2]] <= image.shape[1]).all()
    assert (boxes[:, [1, 3]] <= image.shape[0]).all()
    # A box read as (x, y, w, h) or with x and y swapped would barely overlap the face.
    assert metrics.box_iou(face[np.newaxis, :], boxes).max() > 0.4


@pytest.mark.parametrize("name", baselines.DETECTORS)
def test_detector_returns_empty_arrays_on_blank_image(name):
    detect = baselines.load_detectors([name], BASELINE_PARAMS)[name]

    boxes, scores = detect(np.full((240, 320, 3), 128, dtype=np.uint8))

    assert boxes.shape == (0, 4)
    assert scores.shape == (0,)


def write_split(root, annotations):
    """Write a two-fold split as the split stage lays it out: folds.csv and fold<k>/{train,test}.csv.

    Image i is a uniform gray image of level 10 * i, so a fake detector can look up the image it receives.
    """
    images = root / "images"
    images.mkdir(parents=True)
    for index, image in enumerate(annotations["image"]):
        cv2.imwrite(str(images / image), np.full((600, 800, 3), 10 * index, dtype=np.uint8))
    splits = root / "splits"
    for fold in (0, 1):
        (splits / f"fold{fold}").mkdir(parents=True)
        for name, rows in (("test.csv", annotations[annotations["fold"] == fold]),
                           ("train.csv", annotations[annotations["fold"] != fold])):  # fmt: skip
            lines = [f"../../images/{r.image},{r.x1},{r.y1},{r.x2},{r.y2},face" for r in rows.itertuples()]
            (splits / f"fold{fold}" / name).write_text("\n".join(lines) + "\n")
    folds = annotations[["image", "fold"]].assign(person=range(len(annotations)))
    folds["path"] = "../images/" + folds["image"]
    folds[["image", "person", "fold", "path"]].to_csv(splits / "folds.csv", index=False)
    return splits


def test_main_writes_metrics_and_per_image(tmp_path):
    rng = np.random.default_rng(5)
    annotations = pd.DataFrame(
        [
            {"fold": i % 2, "image": f"image_{i:04d}.jpg", "x1": 300 + i, "y1": 100, "x2": 500 + i, "y2": 360}
            for i in range(16)
        ]
    )
    splits = write_split(tmp_path, annotations)
    faces = annotations[baselines.BOX_COLUMNS].to_numpy(dtype=np.float64)

    def fake_loader(names, params):
        # The box is the annotation shrunk by 20 px on every side, plus noise, so calibration can undo it.
        def detect(image):
            box = faces[int(image[0, 0, 0]) // 10] + np.array([20, 20, -20, -20]) + rng.normal(0, 1, 4)
            return box[np.newaxis, :], np.array([0.9])

        return {"mtcnn": detect}

    metrics_path = tmp_path / "out" / "baselines.json"
    per_image_path = tmp_path / "out" / "per_image.csv"
    argv = ["--params", str(PROJECT_ROOT / "params.yaml"), "--profile", "default", "--splits", str(splits),
            "--metrics", str(metrics_path), "--per-image", str(per_image_path)]  # fmt: skip

    assert baselines.main(argv, detector_loader=fake_loader) == 0

    report = json.loads(metrics_path.read_text())
    assert report["mtcnn"]["images"] == 16
    assert report["mtcnn"]["no_detection_share"] == 0.0
    assert report["mtcnn"]["raw"]["heldout"]["mean_iou"] < 0.8
    assert report["mtcnn"]["calibrated"]["heldout"]["mean_iou"] > 0.95
    assert report["mtcnn"]["calibrated"]["folds"]["fold0"]["calibration_pairs"] == 8
    per_image = pd.read_csv(per_image_path)
    assert list(per_image.columns) == baselines.PER_IMAGE_COLUMNS
    assert len(per_image) == 16
    assert sorted(per_image["image"]) == sorted(annotations["image"])


def test_main_reports_missing_split(tmp_path, capsys):
    argv = ["--params", str(PROJECT_ROOT / "params.yaml"), "--splits", str(tmp_path),
            "--metrics", str(tmp_path / "m.json"), "--per-image", str(tmp_path / "p.csv")]  # fmt: skip

    assert baselines.main(argv) == 1
    assert "folds.csv: file not found" in capsys.readouterr().err
